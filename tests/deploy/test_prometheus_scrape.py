"""A real Prometheus scrapes a real firewall under load, and every dashboard query returns data.

The setup is ``deploy/grafana/render_panels.py``'s (the same run renders the docs' pictures):
``trigger-firewall serve --demo`` as a subprocess (the demo upstream serves the backdoored demo
classifier), Debian's ``prometheus`` on a free loopback port scraping the admin ``/metrics``
every second, and a mixed load with three hot reloads. Every panel target and the annotation
then run through Prometheus' HTTP API (``query_range`` over the run), with Grafana's variables
substituted as "All". A target passes when it returns at least one finite sample, and, unless
listed in :data:`ZERO_IN_A_HEALTHY_RUN` with the reason, a sample above zero.

``prometheus`` comes from ``scripts/install-deploy-tools`` (Debian's package); without it the
module skips, naming the command. Nothing is installed at test time.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.deploy.test_deploy_artifacts import ROOT

pytest.importorskip("onnxruntime")
PROMETHEUS = shutil.which("prometheus") or str(ROOT / ".tools" / "bin" / "prometheus")
if not Path(PROMETHEUS).exists():
    pytest.skip("prometheus is not installed (run scripts/install-deploy-tools)", allow_module_level=True)

sys.path.insert(0, str(ROOT / "deploy" / "grafana"))
try:
    import render_panels as rp
finally:
    sys.path.pop(0)

LOAD_SECONDS = 8

#: Panels whose queries return no series at all, and why: known gaps, kept in one place with the
#: renderer (which draws them as "No data" with the reason). A strict xfail below checks they are
#: still empty, so fixing one fails the suite until its entry is removed.
NO_DATA_KNOWN_GAP = rp.KNOWN_NO_DATA

#: Targets that return data whose value is legitimately 0 in a short healthy run.
ZERO_IN_A_HEALTHY_RUN = {
    (23, "A"): "no request fails inside the firewall in a healthy run (action=error)",
    (23, "B"): "the audit writer keeps up with this load: no lines dropped",
    (61, "A"): "no pod drains during the run (draining starts on SIGTERM)",
    (14, "C"): "the micro-batcher sheds nothing: its queue never fills at this load",
    (14, "D"): "the queue is empty at nearly every scrape instant (items wait milliseconds)",
    (42, "A"): "the demo upstream never changes its model (see tests/integration/test_upstream_identity)",
}


@dataclass
class Scraped:
    stack: rp.Stack
    results: dict[tuple[int, str], list[dict[str, Any]]]
    labels: dict[str, list[str]]
    queries: list[rp.PanelQuery]
    counts: dict[int, int]


def _samples(result: list[dict[str, Any]]) -> list[float]:
    return [float(v) for series in result for _, v in series["values"] if not math.isnan(float(v))]


async def _scrape(workdir: Path) -> Scraped:
    """Run the stack and the load, evaluate every query; the processes are gone on return."""
    stack = await rp.start_stack(workdir, PROMETHEUS)
    try:
        counts = await rp.drive_load(stack, LOAD_SECONDS)
        end = await rp.settle(stack)
        dashboard = json.loads(rp.DASHBOARD.read_text())
        queries = rp.dashboard_queries(dashboard)
        range_seconds = math.ceil(end - stack.load_started) + 10
        results: dict[tuple[int, str], list[dict[str, Any]]] = {}
        labels: dict[str, list[str]] = {}
        async with aiohttp.ClientSession() as session:
            for q in queries:
                expr = rp.substitute(q.expr, range_seconds=range_seconds)
                results[(q.panel_id, q.ref)] = await stack.query_range(
                    session, expr, stack.load_started - 5, end
                )
            for name, (selector, label) in rp.variable_queries(dashboard).items():
                match = rp.substitute(selector, range_seconds=range_seconds)
                labels[name] = await stack.api(session, f"/api/v1/label/{label}/values", **{"match[]": match})
        return Scraped(stack, results, labels, queries, counts)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Scraped:
    return asyncio.run(_scrape(tmp_path_factory.mktemp("scrape")))


def _series(scraped: Scraped, panel: int, ref: str = "A") -> dict[str, float]:
    """``{label value(s): max sample}`` of one target, keyed by its non-job labels."""
    out = {}
    for series in scraped.results[(panel, ref)]:
        key = ",".join(f"{k}={v}" for k, v in sorted(series["metric"].items()))
        values = [float(v) for _, v in series["values"] if not math.isnan(float(v))]
        out[key] = max(values, default=math.nan)
    return out


def test_every_dashboard_query_returns_data(scraped: Scraped) -> None:
    empty, zero = [], []
    for q in scraped.queries:
        samples = _samples(scraped.results[(q.panel_id, q.ref)])
        if q.panel_id in NO_DATA_KNOWN_GAP:
            continue  # asserted (as still broken) by test_known_gap_panels_have_no_data
        if not samples:
            empty.append(f"{q.panel_id}/{q.ref} {q.title}: {q.expr}")
        elif max(samples) <= 0 and (q.panel_id, q.ref) not in ZERO_IN_A_HEALTHY_RUN:
            zero.append(f"{q.panel_id}/{q.ref} {q.title}")
    assert not empty, "queries without data:\n" + "\n".join(empty) + "\n" + scraped.stack.logs()
    assert not zero, f"queries whose data the load should have made non-zero: {zero}"
    assert len(scraped.queries) >= 35


def test_the_load_shows_up_as_it_was_driven(scraped: Scraped) -> None:
    # Requests by action: every kind of outcome the load produced.
    actions = {k.removeprefix("action="): v for k, v in _series(scraped, 1).items()}
    for action in ("allow", "block", "log", "rejected"):
        assert actions.get(action, 0) > 0, (action, actions)
    streams = {k.removeprefix("outcome="): v for k, v in _series(scraped, 31).items()}
    for outcome in ("completed", "terminated", "client_disconnected"):
        assert streams.get(outcome, 0) > 0, (outcome, streams)
    assert _series(scraped, 30).get("detector=invisible_output", 0) > 0  # the stream terminator
    upstream = _series(scraped, 40)
    assert upstream["code_class=2xx,upstream=default"] > 0
    assert upstream["code_class=4xx,upstream=default"] > 0  # the pass-through 404s
    # Three reloads: good, invalid (kept the old config), good.
    reloads = {k.removeprefix("result="): v for k, v in _series(scraped, 52).items()}
    assert reloads["success"] >= 1.5
    assert reloads["failure"] >= 0.5
    assert len(scraped.stack.notes) == 3, scraped.stack.notes
    assert _series(scraped, 50)  # last reload successful: 1 at the end (the stat's value)
    assert scraped.results[(50, "A")][0]["values"][-1][1] == "1"
    # Readiness: the STRIP replica whose Triton is down is the one detector at 0, and fails open.
    ready = {k.removeprefix("detector="): v for k, v in _series(scraped, 60).items()}
    assert ready == {
        "invisible_chars": 1,
        "invisible_output": 1,
        "rare_tokens": 1,
        "strip": 1,
        "strip_remote": 0,
        "recurring_sentences": 1,
        "counterfactual": 1,
    }
    # The stateful detector's table: held at its bound of 12 while new sentences evict older ones.
    entries = _series(scraped, 16)
    assert 0 < entries["detector=recurring_sentences"] <= 12, entries
    assert _series(scraped, 16, "B")["detector=recurring_sentences"] > 0  # evictions per second
    fail_open = _series(scraped, 20)
    assert fail_open["detector=strip_remote,phase=input"] > 0
    assert fail_open.get("detector=strip,phase=input", 0) == 0
    assert _series(scraped, 21)["detector=strip_remote,kind=unavailable"] > 0
    # Behaviour: each round's new odd word probed and cleared. "cf" is never probed here: STRIP
    # blocks it in the first stage, and a request already blocked costs no probe.
    judged = {k.removeprefix("detector=counterfactual,outcome="): v for k, v in _series(scraped, 17).items()}
    assert judged.get("cleared", 0) > 0, judged
    assert judged.get("confirmed", 0) == 0, judged
    assert {"confirmed", "known_trigger", "unprobeable"} <= judged.keys()  # at 0 from the start


def test_template_variables_list_the_scraped_values(scraped: Scraped) -> None:
    labels = scraped.labels
    assert labels["namespace"] == [rp.NAMESPACE]
    assert labels["job"] == ["trigger-firewall"]
    assert labels["instance"] == [scraped.stack.admin.removeprefix("http://")]
    assert {"chat_completions", "completions", "unmatched"} <= set(labels["route"])
    assert set(labels["detector"]) == {
        "invisible_chars",
        "invisible_output",
        "recurring_sentences",
        "rare_tokens",
        "strip",
        "strip_remote",
        "counterfactual",
    }


def test_micro_batcher_panels_have_data(scraped: Scraped) -> None:
    """Panels 14 and 15 (queue depth, batch size, batch run time) come from the STRIP
    replica's MicroBatcher, which gets the server's metrics from the runtime."""
    for panel in (14, 15):
        results = [r for (panel_id, _), r in scraped.results.items() if panel_id == panel]
        assert results, f"panel {panel} has no queries"
        assert all(_samples(r) for r in results), f"panel {panel} has no data"
