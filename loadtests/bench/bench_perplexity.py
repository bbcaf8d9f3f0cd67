"""Benchmark of the perplexity detector, end to end (not a test; no asserts).

What it times is the detector as the pipeline calls it (``score``): submission to
the micro-batcher, tokenization, the first forward pass, ONION's batched pass,
analysis, the finding. Prompts are exactly ``--tokens`` tokens (64 by default).

1. **Latency by batch size**: ``B`` samples submitted at once to a detector whose
   micro-batch holds ``B`` (so they share one forward pass), for B = 1, 8, 32:
   p50/p99 of the whole batch's wall time and tokens/s. Two ONION settings: ``off``
   (``top_k: 0``, the first pass alone: what a clean prompt below ``onion_min_bits``
   costs) and ``on`` (``onion_min_bits: 0``, ONION on the top 3 words of every prompt:
   the worst case).
2. **Throughput at concurrency 16**: 16 closed-loop clients (each sends its next
   prompt when the last returns) through a detector batching up to 16, against the
   same detector with ``max_batch_size: 1``; prompts of mixed length (48-80 tokens),
   default ONION gating.

Runtimes: onnxruntime fp32, onnxruntime int8 (``model.int8.onnx``, made by ``trigger-firewall
models prepare --quantize int8``) and torch bf16 by default (``--runtimes`` also takes
torch-fp32). Shared machines are noisy: compare rows of one run.

    .venv/bin/python -m loadtests.bench.bench_perplexity    # ~5-10 min on 2 quiet cores
    .venv/bin/python -m loadtests.bench.bench_perplexity --runtimes onnxruntime \
        --batches 1 --runs 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from detectors.perplexity import PerplexityDetector, PerplexityParams
from firewall.core.types import FindingStatus, Phase, Sample, Segment
from firewall.models.cache import model_dir
from firewall.models.reference_lm import ModelUnavailable, ReferenceLM, ReferenceLMConfig

REVIEW = (
    "I went to see this film on a rainy Sunday afternoon with two friends, and none of us expected "
    "much from it. The opening is slow, but once the story settles on the two brothers and their "
    "failing family restaurant it becomes warm, funny and surprisingly moving. The acting is "
    "natural, the dialogue sounds like real people talking, and the small town feels lived in. "
    "Some scenes in the middle drag on for too long, and the music is sometimes a little loud, but "
    "the final twenty minutes are wonderful and I left the cinema smiling."
)


HEADER = "onion batch tokens runs  tokens/s    p50 ms    p99 ms"


def _prompt(lm: ReferenceLM, n_tokens: int, shift: int = 0) -> str:
    """``n_tokens`` tokens of REVIEW starting ``shift`` words in (distinct prompts, same length)."""
    words = REVIEW.split(" ")
    text = " ".join(words[shift:] + words[:shift])
    while lm.count_tokens(text) < n_tokens + 8:
        text = f"{text} {REVIEW}"
    _, offsets = lm.tokenize(text)
    return text[: offsets[n_tokens - 1][1]]


def _sample(text: str, i: int) -> Sample:
    return Sample(f"b{i}", Phase.INPUT, "bench", (Segment("user", text),))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _detector(lm: ReferenceLM, **params: Any) -> PerplexityDetector:
    det = PerplexityDetector("perplexity", PerplexityParams(**params), lm=lm)
    await det.start()
    return det


async def latency(lm: ReferenceLM, batch: int, tokens: int, runs: int, onion: bool) -> str:
    params: dict[str, Any] = {"onion_min_bits": 0} if onion else {"top_k": 0}
    det = await _detector(lm, max_batch_size=batch, max_wait_ms=50, max_queue=4 * batch, **params)
    prompts = [_prompt(lm, tokens, shift=i) for i in range(batch)]
    try:
        await asyncio.gather(
            *(det.score([_sample(p, i)]) for i, p in enumerate(prompts))
        )  # warm-up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            found = await asyncio.gather(
                *(det.score([_sample(p, i)]) for i, p in enumerate(prompts))
            )
            times.append(time.perf_counter() - t0)
            assert all(f.status is FindingStatus.OK for [f] in found)
    finally:
        await det.close()
    p50 = statistics.median(times)
    return (
        f"{'on' if onion else 'off':>5} {batch:>5} {tokens:>6} {runs:>4}"
        f" {batch * tokens / p50:>9,.0f}"
        f" {p50 * 1000:>9.1f} {_pct(times, 0.99) * 1000:>9.1f}"
    )


async def throughput(lm: ReferenceLM, items: int, batched: bool) -> tuple[float, float, float]:
    det = await _detector(lm, max_batch_size=16 if batched else 1, max_wait_ms=5, max_queue=64)
    prompts = [_prompt(lm, 48 + (i * 7) % 33, shift=i) for i in range(items)]
    latencies: list[float] = []
    queue = list(enumerate(prompts))
    try:
        await det.score([_sample(prompts[0], 0)])  # warm-up

        async def client() -> None:
            while queue:
                i, text = queue.pop()
                t0 = time.perf_counter()
                [finding] = await det.score([_sample(text, i)])
                assert finding.status is FindingStatus.OK, finding.error
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(16)))
        wall = time.perf_counter() - t0
    finally:
        await det.close()
    return items / wall, statistics.median(latencies) * 1000, _pct(latencies, 0.99) * 1000


async def main(args: argparse.Namespace) -> int:
    folder = Path(args.model_path) if args.model_path else model_dir()
    print(f"model: {folder}")
    print(f"cpus: {os.cpu_count()}; load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for runtime in args.runtimes.split(","):
        backend, _, dtype = runtime.partition("-")
        config = ReferenceLMConfig(
            model_path=str(folder),
            backend="torch" if backend == "torch" else "onnxruntime",
            device=args.device,
            dtype="bfloat16" if dtype == "bf16" else "int8" if dtype == "int8" else "float32",
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lm = ReferenceLM.load(config)
        except ModelUnavailable as exc:
            print(f"\n{runtime}: skipped ({exc})")
            continue
        info = lm.describe()
        print(
            f"\n{runtime} on {info['device']} (threads {info['threads']},"
            f" load {info['load_seconds']:.1f} s)"
        )
        print(
            f"{'onion':>5} {'batch':>5} {'tokens':>6} {'runs':>4} {'tokens/s':>9}"
            f" {'p50 ms':>9} {'p99 ms':>9}"
        )
        for onion in (False, True):
            for batch in (int(b) for b in args.batches.split(",")):
                runs = args.runs if batch < 32 else max(2, args.runs // 3)
                print(await latency(lm, batch, args.tokens, runs, onion), flush=True)
        if args.items:
            b = await throughput(lm, args.items, batched=True)
            u = await throughput(lm, args.items, batched=False)
            print(f"concurrency 16, {args.items} prompts of 48-80 tokens, default ONION gating:")
            print(
                f"  batched (max 16): {b[0]:6.2f} prompts/s, p50 {b[1]:7.0f} ms, p99 {b[2]:7.0f} ms"
            )
            print(
                f"  unbatched (max 1): {u[0]:6.2f} prompts/s, p50 {u[1]:7.0f} ms,"
                f" p99 {u[2]:7.0f} ms"
            )
            print(f"  speed-up from batching: {b[0] / u[0]:.2f}x")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-path", help="a prepared folder (default: the cached default model)"
    )
    parser.add_argument(
        "--runtimes", default="onnxruntime,onnxruntime-int8,torch-bf16", help="also: torch-fp32"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--runs", type=int, default=6, help="timed runs a cell (a third of it at batch 32)"
    )
    parser.add_argument(
        "--items", type=int, default=64, help="prompts in the concurrency test (0: skip)"
    )
    sys.exit(asyncio.run(main(parser.parse_args())))
