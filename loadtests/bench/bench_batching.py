"""Micro-benchmark for the micro-batcher against a SYNTHETIC model (not a test; no timing asserts).

No model runs here. The batch function sleeps ``fixed + per_item * n`` seconds
(``time.sleep`` releases the GIL, as onnxruntime and torch do), which models a
forward pass whose fixed cost a batch shares. Two profiles are measured:

* ``amortising``: 20 ms fixed + 1 ms an item, roughly a small model on a GPU,
  where a batch of 32 costs little more than a batch of 1;
* ``compute-bound``: 1.5 ms fixed + 9 ms an item, the shape of the CPU numbers in
  docs/models.md (onnxruntime fp32: ~105 ms at 1x64 tokens, ~2.9 s at 32x64)
  scaled down ten times, where batching buys little throughput.

For each, closed-loop clients (1, 8, 16, 32 at once, each submitting its next
item when the last returns) push a fixed number of items through a batched
batcher (max 32 a batch, 5 ms max wait) and an unbatched one (max 1 a batch).
It prints throughput, p50/p99 latency, the mean batch size and the speed-up.
Run from the repository root:

    .venv/bin/python -m loadtests.bench.bench_batching [--items 96]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass

from firewall.core.batching import MicroBatcher

CONCURRENCY = (1, 8, 16, 32)
PROFILES = {"amortising": (0.020, 0.001), "compute-bound": (0.0015, 0.009)}


@dataclass
class Result:
    throughput: float
    p50_ms: float
    p99_ms: float
    mean_batch: float


class SyntheticModel:
    """``run_batch`` that sleeps like a forward pass; records batch sizes."""

    def __init__(self, fixed: float, per_item: float) -> None:
        self.fixed = fixed
        self.per_item = per_item
        self.sizes: list[int] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.sizes.append(len(items))
        time.sleep(self.fixed + self.per_item * len(items))
        return items


async def measure(
    fixed: float, per_item: float, concurrency: int, items: int, batched: bool
) -> Result:
    model = SyntheticModel(fixed, per_item)
    batcher: MicroBatcher[int, int] = MicroBatcher(
        "bench", model, max_batch_size=32 if batched else 1, max_wait_ms=5 if batched else 0
    )
    await batcher.start()
    latencies: list[float] = []
    remaining = items

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await batcher.submit(remaining)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(client())
    wall = time.perf_counter() - start
    await batcher.close()
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Result(items / wall, cuts[49] * 1000, cuts[98] * 1000, statistics.fmean(model.sizes))


async def main(items: int) -> None:
    print("SYNTHETIC MODEL: run_batch sleeps fixed + per_item x n; no real inference is measured.")
    print(
        f"{items} items per cell; batched = max 32 a batch, 5 ms max wait; "
        "unbatched = max 1 a batch."
    )
    for profile, (fixed, per_item) in PROFILES.items():
        print(f"\n{profile}: run_batch(n) = {fixed * 1000:g} ms + {per_item * 1000:g} ms x n")
        print(
            f"{'conc':>4} | {'batched/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'batch':>5} |"
            f" {'unbatched/s':>11} {'p50 ms':>7} {'p99 ms':>7} | {'speed-up':>8}"
        )
        for concurrency in CONCURRENCY:
            b = await measure(fixed, per_item, concurrency, items, batched=True)
            u = await measure(fixed, per_item, concurrency, items, batched=False)
            print(
                f"{concurrency:>4} | {b.throughput:>9.1f} {b.p50_ms:>7.1f} {b.p99_ms:>7.1f}"
                f" {b.mean_batch:>5.1f} |"
                f" {u.throughput:>11.1f} {u.p50_ms:>7.1f} {u.p99_ms:>7.1f} |"
                f" {b.throughput / u.throughput:>7.2f}x"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--items", type=int, default=96, help="items pushed through each cell")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args.items))
    else:
        uvloop.run(main(args.items))
