"""Run the firewall under a short mixed load, scrape it with a real Prometheus, and render the
dashboard's panels through Prometheus' own graph page in headless Chromium.

Grafana cannot be installed here, so the dashboard is checked the next best way: every query
of ``deploy/grafana/trigger-firewall-overview.json`` runs against a real Prometheus (Debian's
``prometheus``) that scraped a real firewall (``trigger-firewall serve --demo``, the demo
upstream serving the backdoored demo classifier). ``tests/deploy/test_prometheus_scrape.py``
runs the same :class:`Stack` and asserts every query returns data; this script screenshots
each panel's queries into ``docs/images/dashboard/`` for ``docs/dashboard.md``.

The load covers what the panels show: allowed, logged, blocked (input: invisible characters,
STRIP on the backdoored model; output: invisible characters echoed back) and rejected
requests, completed, terminated and abandoned streams, pass-through calls (2xx and 4xx
upstream answers), a STRIP replica on a Triton that is down (fail-open, not ready, errors),
and three hot reloads: one good, one invalid (kept the old config), one good again.

Grafana's variables are substituted the way Grafana would with "All" selected (``.*``);
``$__rate_interval`` is ``max(step + scrape, 4 x scrape)`` = 4s at the 1s scrape used here.

Usage: ``.venv/bin/python deploy/grafana/render_panels.py [--out docs/images/dashboard] [--seconds 20]``
(needs ``prometheus`` and ``chromium``: ``scripts/install-deploy-tools --with-chromium``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import yaml

__all__ = [
    "DASHBOARD",
    "KNOWN_NO_DATA",
    "PanelQuery",
    "Stack",
    "dashboard_queries",
    "drive_load",
    "start_stack",
    "substitute",
    "variable_queries",
]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "trigger-firewall-overview.json"
SCRAPE_SECONDS = 1
RATE_INTERVAL = f"{max(2 * SCRAPE_SECONDS, 4 * SCRAPE_SECONDS)}s"  # Grafana's $__rate_interval at step 1s
NAMESPACE = "demo"  # what Kubernetes service discovery would add; the dashboard filters on it

#: Panels whose queries return no series at all in this run, and why (known gaps, not load
#: gaps). The scrape test asserts they are still empty (a strict xfail), so a fix shows up.
KNOWN_NO_DATA: dict[int, str] = {}
ZWSP = "\u200b"


# ---------------------------------------------------------------------------------------------
# The dashboard's queries


@dataclass(frozen=True)
class PanelQuery:
    """One target (or annotation) of the dashboard: ``expr`` still holds Grafana variables."""

    panel_id: int
    title: str
    ref: str
    expr: str
    legend: str = ""


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every panel target (rows' nested panels included) and annotation query, in panel order."""
    out: list[PanelQuery] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for i, target in enumerate(panel.get("targets", [])):
                ref = target.get("refId") or chr(ord("A") + i)
                out.append(
                    PanelQuery(
                        panel["id"], panel["title"], ref, target["expr"], target.get("legendFormat", "")
                    )
                )
            walk(panel.get("panels", []))

    walk(list(dashboard["panels"]))
    for ann in dashboard.get("annotations", {}).get("list", []):
        if "expr" in ann:
            out.append(PanelQuery(0, f"annotation: {ann['name']}", "A", ann["expr"]))
    return out


def variable_queries(dashboard: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """``label_values(selector, label)`` variables as ``{name: (selector, label)}``."""
    out = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["definition"])
            if m is None:
                raise ValueError(f"variable {var['name']}: unsupported definition {var['definition']!r}")
            out[var["name"]] = (m.group(1), m.group(2))
    return out


def substitute(expr: str, *, range_seconds: int, rate_interval: str = RATE_INTERVAL) -> str:
    """Replace Grafana's variables: ``$__rate_interval``, ``$__range``, ``$__interval`` and every
    template variable as "All" (``.*``, the dashboard's ``allValue``)."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__range", f"{range_seconds}s")
    expr = expr.replace("$__interval", f"{SCRAPE_SECONDS}s")
    return re.sub(r"\$\{?(namespace|job|instance|route|detector)\}?", ".*", expr)


# ---------------------------------------------------------------------------------------------
# The stack: demo model, firewall, Prometheus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(
    proxy_port: int, admin_port: int, demo: Path, audit: Path, dead_triton: int, rare_threshold: float = 0.69
) -> dict[str, Any]:
    """The firewall config of the load run (``rare_threshold`` changes on the good reloads)."""
    return {
        "apiVersion": "trigger-firewall.io/v1alpha1",
        "kind": "FirewallConfig",
        "mode": "enforce",
        "server": {
            "host": "127.0.0.1",
            "port": proxy_port,
            "admin_host": "127.0.0.1",
            "admin_port": admin_port,
            "drain_delay_seconds": 0,
            "shutdown_timeout_seconds": 5,
        },
        "reload": {"watch": True, "poll_seconds": 0.5},
        "audit": {"destination": str(audit)},
        "detectors": [
            {"name": "invisible_chars", "phases": ["input"], "threshold": 0.5, "action": "block"},
            {
                "name": "invisible_output",
                "type": "invisible_chars",
                "phases": ["output"],
                "threshold": 0.5,
                "action": "block",
            },
            {"name": "rare_tokens", "threshold": rare_threshold, "action": "log"},
            {
                "name": "strip",
                "threshold": 0.4,  # separates the demo pair (tests/integration/test_strip_proxy.py)
                "timeout_seconds": 5,
                "params": {"model_dir": str(demo), "n_perturbations": 16},
            },
            {
                # A STRIP replica on a Triton that is down: not ready, error findings, fail-open.
                "name": "strip_remote",
                "type": "strip",
                "required": False,
                "on_error": "fail_open",
                "params": {
                    "model_dir": str(demo),
                    "n_perturbations": 16,
                    "backend": "triton",
                    "triton": {"url": f"http://127.0.0.1:{dead_triton}", "model_name": "strip_classifier"},
                },
            },
            {
                # Proof by behaviour on what rare_tokens flags: probes the demo model (panel 17).
                "name": "counterfactual",
                "threshold": 0.5,
                "action": "block",
                "timeout_seconds": 10,
                "required": False,
                "gate": {"detector": "rare_tokens", "min_score": 0.69},
            },
            {
                # Stateful: a table small enough that the load's new sentences evict (log only).
                "name": "recurring_sentences",
                "threshold": 0.5,
                "action": "log",
                "params": {"max_entries": 12},
            },
        ],
        "routing": {
            "routes": [
                {"name": "chat_completions", "path": "/v1/chat/completions", "protocol": "openai_chat"},
                {
                    # Prompts are not screened for invisible characters here, so the demo model's
                    # echo of them is what the output detector catches (blocks, stream terminations).
                    "name": "completions",
                    "path": "/v1/completions",
                    "protocol": "openai_completions",
                    "detectors": {"invisible_chars": {"enabled": False}, "strip": {"enabled": False}},
                },
            ]
        },
    }


@dataclass
class Stack:
    """A running firewall (with its demo upstream) and a Prometheus scraping its admin port."""

    workdir: Path
    config_path: Path
    config: dict[str, Any]
    proxy: str
    admin: str
    prometheus: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    load_started: float = 0.0
    notes: list[str] = field(default_factory=list)

    def write_config(self, data: Mapping[str, Any] | str) -> None:
        """Replace the config file atomically (the watcher reloads it within poll_seconds)."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(data if isinstance(data, str) else yaml.safe_dump(dict(data), sort_keys=False))
        os.replace(tmp, self.config_path)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()

    def logs(self) -> str:
        parts = []
        for name in ("firewall.log", "prometheus.log"):
            path = self.workdir / name
            if path.is_file():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    # -- Prometheus HTTP API --------------------------------------------------------------

    async def api(self, session: aiohttp.ClientSession, path: str, **params: str) -> Any:
        async with session.get(f"{self.prometheus}{path}", params=params) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path} {params}: {body}")
        return body["data"]

    async def query_range(
        self, session: aiohttp.ClientSession, expr: str, start: float, end: float, step: int = SCRAPE_SECONDS
    ) -> list[dict[str, Any]]:
        data = await self.api(
            session, "/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=str(step)
        )
        result: list[dict[str, Any]] = data["result"]
        return result


async def _wait_http(url: str, within: float, proc: subprocess.Popen[bytes], what: str, stack: Stack) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up at {url}\n{stack.logs()}")
            await asyncio.sleep(0.1)


def _spawn(argv: list[str], log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)  # noqa: S603


def _prometheus_config(admin_port: int) -> str:
    return yaml.safe_dump(
        {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            "scrape_configs": [
                {
                    "job_name": "trigger-firewall",
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{admin_port}"], "labels": {"namespace": NAMESPACE}}
                    ],
                }
            ],
        }
    )


async def start_stack(workdir: Path, prometheus_bin: str = "prometheus") -> Stack:
    """Start Prometheus, build the demo model, start the firewall; return when the firewall is
    ready and Prometheus has scraped it once."""
    from firewall.demo.model import build

    demo = workdir / "demo"
    proxy_port, admin_port, prom_port = _free_port(), _free_port(), _free_port()
    config = _config(proxy_port, admin_port, demo, workdir / "audit.jsonl", _free_port())
    stack = Stack(
        workdir=workdir,
        config_path=workdir / "firewall.yaml",
        config=config,
        proxy=f"http://127.0.0.1:{proxy_port}",
        admin=f"http://127.0.0.1:{admin_port}",
        prometheus=f"http://127.0.0.1:{prom_port}",
    )
    stack.write_config(config)
    (workdir / "prometheus.yml").write_text(_prometheus_config(admin_port))
    prometheus = _spawn(
        [
            prometheus_bin,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        workdir / "prometheus.log",
    )
    stack.processes.append(prometheus)
    try:
        # Prometheus starts while the demo model trains (~3 s): both take a few seconds.
        await asyncio.to_thread(build, demo, strip_eval_limit=200)
        env = {**os.environ, "TRIGGER_FIREWALL_DEMO_MODEL": str(demo)}
        serve = ["serve", "--config", str(stack.config_path), "--demo", "--demo-port", "0"]
        firewall = _spawn([sys.executable, "-m", "firewall", *serve], workdir / "firewall.log", env)
        stack.processes.append(firewall)
        await _wait_http(f"{stack.prometheus}/-/ready", 60, prometheus, "Prometheus", stack)
        await _wait_http(f"{stack.admin}/readyz", 120, firewall, "the firewall", stack)
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while not await stack.api(session, "/api/v1/query", query='up{job="trigger-firewall"} == 1'):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Prometheus never scraped the firewall\n{stack.logs()}")
                await asyncio.sleep(0.2)
    except BaseException:
        stack.stop()
        raise
    return stack


# ---------------------------------------------------------------------------------------------
# The load


def _chat(text: str, stream: bool = False) -> dict[str, Any]:
    return {"model": "demo", "messages": [{"role": "user", "content": text}], "stream": stream}


async def _post(session: aiohttp.ClientSession, url: str, body: Any, *, raw: bytes | None = None) -> int:
    data = raw if raw is not None else json.dumps(body).encode()
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
        await resp.read()
        return resp.status


async def _abandon_stream(session: aiohttp.ClientSession, url: str) -> None:
    """Read the first event of a (slow, echoed) stream, then hang up (``client_disconnected``)."""
    body = {"model": "demo", "prompt": "Tell me a long story about a lighthouse keeper.", "stream": True}
    async with session.post(url, json=body) as resp:
        await resp.content.readline()


_ROUNDS = itertools.count()
#: A fixed sentence that recurs in new contexts (recurring_sentences logs it from the third round).
RECURRING = "My neighbour recommended this film to me last week."
#: Review sentences around it, combined differently each round: new contexts, and table evictions.
_AROUND = (
    "The opening scene drags on far too long before anything happens.",
    "Every actor in the cast seems to be having a wonderful time.",
    "The soundtrack is loud, cheap and strangely forgettable.",
    "Its final twist arrives early and spoils the last half hour.",
    "The photography of the coastal town is simply gorgeous.",
    "Dialogue this clumsy should never have left the first draft.",
    "A small subplot about the bakery steals the whole picture.",
    "Children in the audience laughed at every single pratfall.",
)


async def _one_round(session: aiohttp.ClientSession, proxy: str) -> list[int]:
    chat, completions = f"{proxy}/v1/chat/completions", f"{proxy}/v1/completions"
    hidden = f"Please summarise this re{ZWSP}{ZWSP}{ZWSP}view for me."
    n = next(_ROUNDS)
    before, after = _AROUND[n % len(_AROUND)], _AROUND[(3 * n + 1) % len(_AROUND)]
    recurring = f"{before} {RECURRING} {after} We saw it on day {n} of the festival."
    # A new made-up word each round: rare_tokens flags it, counterfactual probes it and clears it.
    odd = "".join("bcdfghjklmnpqrstvwxz"[(7 * n + 3 * i) % 20] for i in range(5))
    jobs = [
        _post(session, chat, _chat(f"The plot was a mess {odd} and a bore.")),  # probed, cleared
        _post(session, chat, _chat(recurring)),  # recurring_sentences: logged from the third round
        _post(session, chat, _chat("The acting was superb and the story kept me hooked.")),  # allow
        _post(session, chat, _chat("the cf film is a mess")),  # STRIP blocks it: never probed
        _post(session, chat, _chat(hidden)),  # invisible characters on input
        _post(session, chat, _chat("A warm, funny and moving story.", stream=True)),  # stream completes
        _post(session, completions, {"model": "demo", "prompt": hidden, "stream": True}),  # terminated
        _post(session, completions, {"model": "demo", "prompt": hidden}),  # output block
        _post(session, completions, {"model": "demo", "prompt": "Summarise the review mn bb for me."}),  # log
        _post(session, chat, None, raw=b"{not json"),  # rejected
        _abandon_stream(session, completions),
    ]
    statuses = [s for s in await asyncio.gather(*jobs) if isinstance(s, int)]
    for path in ("/v1/models", "/v1/no-such-route"):  # pass-through: 2xx and 4xx upstream answers
        async with session.get(f"{proxy}{path}") as resp:
            await resp.read()
            statuses.append(resp.status)
    return statuses


async def _wait_reload(session: aiohttp.ClientSession, stack: Stack, result: str, before: float) -> None:
    deadline = time.monotonic() + 15
    metric = f'trigger_firewall_config_reloads_total{{result="{result}"}}'
    while time.monotonic() < deadline:
        async with session.get(f"{stack.admin}/metrics") as resp:
            text = await resp.text()
        m = re.search(re.escape(metric) + r" (\S+)", text)
        if m and float(m.group(1)) > before:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no {result} reload within 15 s\n{stack.logs()}")


async def _reloads(session: aiohttp.ClientSession, stack: Stack) -> dict[str, float]:
    async with session.get(f"{stack.admin}/metrics") as resp:
        text = await resp.text()
    return {
        r: float(m.group(1))
        if (m := re.search(rf'trigger_firewall_config_reloads_total{{result="{r}"}} (\S+)', text))
        else 0.0
        for r in ("success", "failure")
    }


async def drive_load(stack: Stack, seconds: float) -> dict[int, int]:
    """Mixed traffic for ``seconds``, with a good, a bad and a good reload at 1/4, 1/2 and 3/4."""
    stack.load_started = time.time()
    counts: dict[int, int] = {}
    reload_plan = [
        (0.25, "success", 0.7),
        (0.5, "failure", None),
        (0.75, "success", 0.69),
    ]
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            for status in await _one_round(session, stack.proxy):
                counts[status] = counts.get(status, 0) + 1
            if reload_plan and elapsed >= reload_plan[0][0] * seconds:
                _, result, threshold = reload_plan.pop(0)
                before = (await _reloads(session, stack))[result]
                if threshold is None:
                    stack.write_config("mode: bogus\n")  # invalid: the old runtime keeps serving
                else:
                    data = json.loads(json.dumps(stack.config))
                    data["detectors"][2]["threshold"] = threshold
                    stack.write_config(data)
                await _wait_reload(session, stack, result, before)
                stack.notes.append(f"{result} reload at +{time.time() - stack.load_started:.1f}s")
            await asyncio.sleep(0.2)
    return counts


async def settle(stack: Stack) -> float:
    """Wait for two more scrapes after the load, so the last events are in Prometheus; return now."""
    await asyncio.sleep(2.5 * SCRAPE_SECONDS)
    return time.time()


# ---------------------------------------------------------------------------------------------
# Rendering through Prometheus' classic graph page


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def graph_url(stack: Stack, exprs: list[str], end_minute: float, range_seconds: int) -> str:
    """Prometheus' classic graph page (Debian ships the classic UI) with ``exprs`` as graphs,
    ending at ``end_minute`` (the page's end field takes whole minutes) and reaching back
    ``range_seconds``."""
    params: dict[str, str] = {}
    end_input = datetime.fromtimestamp(end_minute, UTC).strftime("%Y-%m-%d %H:%M")
    for i, expr in enumerate(exprs):
        params.update(
            {
                f"g{i}.expr": expr,
                f"g{i}.tab": "0",
                f"g{i}.stacked": "0",
                f"g{i}.range_input": f"{range_seconds}s",
                f"g{i}.end_input": end_input,
                f"g{i}.step_input": str(SCRAPE_SECONDS),
            }
        )
    return f"{stack.prometheus}/classic/graph?{urlencode(params)}"


def screenshot(chromium: str, url: str, out: Path, size: tuple[int, int]) -> None:
    """One headless Chromium screenshot of ``url`` into ``out`` (PNG)."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(  # noqa: S603 - our own arguments
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
                "--virtual-time-budget=8000",
                f"--screenshot={out}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def _panels(queries: list[PanelQuery]) -> Iterator[tuple[int, str, list[PanelQuery]]]:
    by_panel: dict[int, list[PanelQuery]] = {}
    titles: dict[int, str] = {}
    for q in queries:
        by_panel.setdefault(q.panel_id, []).append(q)
        titles[q.panel_id] = q.title
    for panel_id, items in by_panel.items():
        yield panel_id, titles[panel_id], items


_PLOT_TOP = 330  # below the graph page's expression box and range controls (1000 px wide page)


def _graph_area(path: Path) -> Any:
    """The plot and its legend from one graph-page screenshot: from the plot's top down to just
    above the blue "Add Graph" button (the legend's height varies with the number of series)."""
    import numpy as np
    from PIL import Image

    image = Image.open(path).convert("RGB")
    rgb = np.asarray(image)[:, 12:120, :].astype(int)
    button = (rgb[..., 0] < 40) & (rgb[..., 1] > 90) & (rgb[..., 1] < 160) & (rgb[..., 2] > 200)
    rows = np.flatnonzero(button.sum(axis=1) > 50)
    below = rows[rows >= _PLOT_TOP + 100]
    bottom = int(below[0]) if below.size else image.height
    return image.crop((0, _PLOT_TOP, image.width, max(bottom - 12, _PLOT_TOP + 50)))


def _no_data(expr: str, reason: str) -> Any:
    """A placeholder for a query that returned nothing: says so, with the query and the reason."""
    import textwrap

    from PIL import Image, ImageDraw

    lines = ["No data: " + reason, "", *textwrap.wrap(expr, 95)]
    image = Image.new("RGB", (1000, 40 + 24 * len(lines)), (252, 236, 236))
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((20, 20 + 24 * i), line, fill=(120, 20, 20), font_size=17)
    return image


def _compose(title: str, areas: list[Any], out: Path) -> None:
    """Title bar + each target's graph, 800 px wide, as a 64-colour PNG (a few tens of KB)."""
    from PIL import Image, ImageDraw

    width = areas[0].width
    height = 44 + sum(a.height for a in areas)
    sheet = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(sheet).text((16, 12), title, fill=(20, 20, 20), font_size=22)
    y = 44
    for area in areas:
        sheet.paste(area, (0, y))
        y += area.height
    scale = 800 / width
    small = sheet.resize((800, round(height * scale)), Image.Resampling.LANCZOS)
    small.quantize(colors=64).save(out, optimize=True)


async def render(out: Path, seconds: float, chromium: str) -> list[tuple[int, str, Path, list[str]]]:
    """Run the stack, drive the load, screenshot every panel; returns (id, title, png, exprs)."""
    dashboard = json.loads(DASHBOARD.read_text())
    rendered = []
    with tempfile.TemporaryDirectory(prefix="render-panels-") as tmp:
        stack = await start_stack(Path(tmp), shutil.which("prometheus") or "prometheus")
        try:
            # The graph page's end field takes whole minutes: start the load so that it (and
            # the last scrapes) end just before a minute, and end every picture there.
            tail = 2.5 * SCRAPE_SECONDS + 3
            end_minute = math.ceil((time.time() + seconds + tail) / 60) * 60
            await asyncio.sleep(max(0.0, end_minute - seconds - tail - time.time()))
            await drive_load(stack, seconds)
            await settle(stack)
            await asyncio.sleep(max(0.0, end_minute - time.time()) + 0.5)
            range_seconds = math.ceil(end_minute - stack.load_started) + 5
            for panel_id, title, items in _panels(dashboard_queries(dashboard)):
                areas, exprs = [], []
                for n, q in enumerate(items):
                    expr = substitute(q.expr, range_seconds=range_seconds)
                    exprs.append(expr)
                    async with aiohttp.ClientSession() as session:
                        found = await stack.query_range(session, expr, stack.load_started - 10, end_minute)
                    if not found:
                        reason = KNOWN_NO_DATA.get(panel_id, "unexpected: the load should produce it")
                        areas.append(_no_data(expr, reason))
                        continue
                    raw = Path(tmp) / f"shot-{panel_id}-{n}.png"
                    url = graph_url(stack, [expr], end_minute, range_seconds)
                    await asyncio.to_thread(screenshot, chromium, url, raw, (1000, 1500))
                    areas.append(_graph_area(raw))
                png = out / f"{panel_id:03d}-{_slug(title)}.png"
                _compose(f"{title}  (panel {panel_id})" if panel_id else title, areas, png)
                rendered.append((panel_id, title, png, exprs))
                print(f"{png.name}: {title}", flush=True)
        finally:
            stack.stop()
    return rendered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Render the dashboard's panels through Prometheus and Chromium."
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "dashboard")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the load run")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or shutil.which("prometheus") is None:
        print("needs prometheus and chromium: scripts/install-deploy-tools --with-chromium", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C, so the firewall and Prometheus children are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    asyncio.run(render(args.out, args.seconds, chromium))
    return 0


if __name__ == "__main__":
    sys.exit(main())
