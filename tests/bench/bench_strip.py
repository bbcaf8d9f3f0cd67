"""STRIP latency per request on CPU at N = 16 and 32 (p50/p99), one request at a time.

Run: ``python tests/bench/bench_strip.py [MODEL_DIR]`` (default: build into a temp folder).
Measures the detector's full path: perturbation, vectorising, one onnxruntime batch in
the micro-batcher thread, entropy and attribution.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

import numpy as np

from detectors.strip import StripDetector, StripParams
from firewall.demo_model import build, load_mr, split_mr
from firewall.types import Phase, Sample, Segment


async def main(folder: str) -> None:
    texts = [t for t, _ in split_mr(load_mr(), 0).test[:300]]
    for n in (16, 32):
        det = StripDetector("strip", StripParams(model_dir=folder, n_perturbations=n))
        await det.start()
        times = []
        for t in texts:
            start = time.perf_counter()
            await det.score([Sample("b", Phase.INPUT, "bench", (Segment("user", t),))])
            times.append(time.perf_counter() - start)
        await det.close()
        ms = np.asarray(times) * 1000
        print(
            f"N={n}: p50 {np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms "
            f"({len(ms)} requests)"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build(tmp, strip_eval_limit=50)
            asyncio.run(main(tmp))
