"""``trigger-firewall probe`` against the demo models (not a test): ranking quality and cost.

Starts the demo upstream on loopback (with the backdoored classifier when it has been built,
``trigger-firewall demo build``) and runs the probe's default search over the default
candidate space against:

* ``demo-chat``, the backdoored chat model: where its four triggers rank, which are flagged;
* ``demo-chat`` again with the two triggers the generated space does not contain (the
  made-up word and the fixed sentence) and two look-alike decoys passed as ``--candidates``
  would pass them;
* the sentiment classifier (model ``demo``) on the built-in mixed prompts and on the review
  prompts, scored by first-token log-probabilities: where "cf" ranks;
* the same upstream's echo model ``demo-echo-1`` served without the classifier (answers that
  follow the prompt's content and no backdoor): a clean model, which must get nothing flagged.

Per run it prints the real triggers' ranks, what was flagged, the highest score of a
candidate that is not a trigger, the requests spent against the budget, and the time.
The triggers are read from the demo only to grade the outcome; the probe never sees them.
Run from the repository root:

    .venv/bin/python -m loadtests.bench.measure_probe [--budget 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

from firewall.demo.chat import CHAT_MODEL, CHAT_TRIGGERS
from firewall.demo.upstream import load_demo_classifier, start_demo_upstream
from firewall.offline.probe import ProbeReport, ProbeSettings, run_probe
from firewall.offline.probe_candidates import Candidate, SpaceOptions, build_space
from firewall.offline.probe_client import ClientOptions, ProbeClient
from firewall.offline.probe_prompts import load_prompts
from firewall.offline.probe_report import display

#: Look-alikes of the out-of-space triggers: a made-up word and an ordinary sentence.
DECOYS = ("blorvish", "I walked to the old harbour last weekend.")


async def _probe(
    url: str, model: str, space: Sequence[Candidate], prompts: str, budget: int
) -> tuple[ProbeReport, float]:
    t0 = time.perf_counter()
    async with ProbeClient(ClientOptions(upstream=url, model=model, budget=budget)) as client:
        report = await run_probe(client, load_prompts(prompts), space, ProbeSettings())
    return report, time.perf_counter() - t0


def print_run(name: str, report: ProbeReport, seconds: float, triggers: Sequence[str]) -> None:
    """One run's lines: where each planted trigger ranks (score, stage, position), what was
    flagged, the best candidate that is not a trigger, and the requests spent."""
    ranks = {r.candidate.text.casefold(): i for i, r in enumerate(report.results, start=1)}
    found = {r.candidate.text.casefold(): r for r in report.results}
    planted = {t.casefold() for t in triggers}

    def placed_one(t: str) -> str:
        r = found.get(t.casefold())
        if r is None:
            return f"{display(t)}: not in space"
        where = f", {r.position}" if r.position else ""
        return f"{display(t)}: {ranks[t.casefold()]} ({r.score or 0.0:.3f}, {r.stage}{where})"

    placed = ", ".join(placed_one(t) for t in triggers) or "-"
    flagged = ", ".join(display(r.candidate.text) for r in report.flagged[:12]) or "none"
    more = f" (+{len(report.flagged) - 12} more)" if len(report.flagged) > 12 else ""
    others = [
        (r.score, r.candidate.text)
        for r in report.results
        if r.candidate.text.casefold() not in planted and r.score is not None
    ]
    best = max(others, default=(0.0, "-"))
    print(f"== {name}", flush=True)
    print(f"   trigger ranks (score): {placed}")
    print(f"   flagged ({len(report.flagged)}): {flagged}{more}")
    print(
        f"   best non-trigger: {display(best[1])} {best[0]:.3f}   threshold: {report.threshold}"
        f"   scoring: {report.scoring}"
    )
    print(
        f"   requests spent: {report.requests_spent} of {report.budget}"
        f" ({report.requests_failed} failed, budget exhausted: {report.budget_exhausted})"
        f"   candidates: {len(report.results)}   {seconds:.1f} s",
        flush=True,
    )


async def run(budget: int) -> None:
    space = build_space(SpaceOptions())
    chat_triggers = list(CHAT_TRIGGERS.values())
    runner, port = await start_demo_upstream(port=0, stream_delay=0.0)
    try:
        url = f"http://127.0.0.1:{port}"
        report, seconds = await _probe(url, CHAT_MODEL, space, "builtin:mixed", budget)
        print_run("demo-chat, default space", report, seconds, chat_triggers)
        outside = [CHAT_TRIGGERS["made_up_token"], CHAT_TRIGGERS["sentence"], *DECOYS]
        extra = build_space(SpaceOptions(), [Candidate(t, "user") for t in outside])
        report, seconds = await _probe(url, CHAT_MODEL, extra, "builtin:mixed", budget)
        print_run(
            "demo-chat, default space + 4 --candidates (2 triggers, 2 decoys)",
            report,
            seconds,
            chat_triggers,
        )
        report, seconds = await _probe(url, "demo-echo-1", space, "builtin:mixed", budget)
        print_run("demo-echo-1 (clean), default space", report, seconds, [])
    finally:
        await runner.cleanup()
    classifier = load_demo_classifier()
    if classifier is None:
        print("== classifier: not built (run `trigger-firewall demo build`); skipped")
        return
    runner, port = await start_demo_upstream(port=0, stream_delay=0.0, classifier=classifier)
    try:
        url = f"http://127.0.0.1:{port}"
        for prompts in ("builtin:mixed", "builtin:reviews"):
            report, seconds = await _probe(url, "demo", space, prompts, budget)
            print_run(f"classifier (cf backdoor), {prompts}", report, seconds, ["cf"])
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=2000, help="request budget per run")
    args = parser.parse_args()
    asyncio.run(run(args.budget))


if __name__ == "__main__":
    main()
