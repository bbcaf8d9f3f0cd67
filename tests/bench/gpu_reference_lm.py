"""GPU benchmark of the reference LM's serving path: eager against CUDA graphs.

Not a test (no asserts); run on a borrowed GPU machine. Weights cannot travel there
(see ``tests/bench/gpu_bench.py``), so the model is the real SmolLM2-135M
architecture and tokenizer with random weights: forward-pass timing does not depend
on weight values. Measured through :class:`detectors.reference_lm.ReferenceLM`
(torch backend, bf16), i.e. tokenization, padding, the surprisal head, copying
results back to the host, for each ``cuda_graphs`` mode:

* ``off``: plain eager forward passes (what the first GPU run measured: launch-bound);
* ``graphs``: one CUDA graph per (rows, length) bucket, captured at load;
* ``compile``: torch.compile reduce-overhead (slow to warm up: opt-in with --compile).

Issue 4's target: p99 < 15 ms for batch 32 x 128 tokens on an H100.

Usage (GPU machine, repository root)::

    python3 -m pip install --no-deps .gpu_bench/wheels/*.whl
    python3 tests/bench/gpu_reference_lm.py --assets .gpu_bench --runs 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpu_bench import REVIEW, percentile, random_weight_folder

SHAPES = ((1, 64), (8, 64), (32, 64), (1, 128), (8, 128), (32, 128))


def run_mode(folder: Path, mode: str, runs: int, device: str) -> dict[tuple[int, int], float]:
    from detectors.reference_lm import ReferenceLM, ReferenceLMConfig

    t0 = time.perf_counter()
    lm = ReferenceLM.load(
        ReferenceLMConfig(
            model_path=str(folder),
            backend="torch",
            device=device,  # type: ignore[arg-type]
            dtype="bfloat16",
            max_tokens=128,
            overlap=32,
            batch_size=32,
            max_batch_tokens=32 * 128,
            cuda_graphs=mode,  # type: ignore[arg-type]
        )
    )
    print(f"\ncuda_graphs={mode}: loaded (incl. capture/compile) in {time.perf_counter() - t0:.1f} s")
    print(f"{'batch':>5} {'tokens':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'tokens/s':>11}")
    ids, _ = lm.tokenize(" ".join([REVIEW] * 4))
    p99s: dict[tuple[int, int], float] = {}
    for batch, length in SHAPES:
        items = [list(ids[:length])] * batch
        for _ in range(10):
            lm.surprisal_batch(items)
        ms = []
        for _ in range(runs):
            t = time.perf_counter()
            lm.surprisal_batch(items)
            ms.append((time.perf_counter() - t) * 1000)
        p50 = statistics.median(ms)
        p99s[(batch, length)] = percentile(ms, 0.99)
        rate = batch * length / (p50 / 1000)
        p99 = p99s[(batch, length)]
        print(f"{batch:>5} {length:>6} {p50:>8.2f} {p99:>8.2f} {max(ms):>8.2f} {rate:>11,.0f}")
    return p99s


def check_equal(folder: Path, device: str) -> None:
    """Graph replay gives the eager numbers (bf16: within a small tolerance)."""
    import numpy as np

    from detectors.reference_lm import ReferenceLM, ReferenceLMConfig

    texts = [REVIEW, "A short one.", REVIEW[:150]]
    out = {}
    for mode in ("off", "graphs"):
        lm = ReferenceLM.load(
            ReferenceLMConfig(
                model_path=str(folder),
                backend="torch",
                device=device,  # type: ignore[arg-type]
                dtype="bfloat16",
                max_tokens=128,
                cuda_graphs=mode,  # type: ignore[arg-type]
            )
        )
        out[mode] = lm.surprisal_batch(texts)
    worst = max(
        float(np.nanmax(np.abs(a.surprisal - b.surprisal)))
        for a, b in zip(out["off"], out["graphs"], strict=True)
        if len(a.surprisal)
    )
    print(f"\ngraphs vs eager, max |surprisal difference| over 3 texts: {worst:.4f} bits (bf16)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--assets", type=Path, default=Path(".gpu_bench"))
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes)")
    args = parser.parse_args()
    import torch

    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; random weights, real architecture and tokenizer")
    modes = ["off", "graphs"] + (["compile"] if args.compile else [])
    if args.device != "cuda":
        modes = ["off"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = random_weight_folder(args.assets / "smollm2", Path(tmp), dtype="bfloat16")
        results = {mode: run_mode(folder, mode, args.runs, args.device) for mode in modes}
        if args.device == "cuda":
            check_equal(folder, args.device)
    for mode, p99s in results.items():
        p99 = p99s[(32, 128)]
        verdict = "MET" if p99 < 15.0 else "MISSED"
        print(f"target p99 < 15 ms at 32 x 128, cuda_graphs={mode}: {p99:.2f} ms ({verdict})")


if __name__ == "__main__":
    main()
