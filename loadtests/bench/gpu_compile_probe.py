"""GPU probe: the reference LM's surprisal head eager against torch.compile (CUDA graphs).

Not a test. The eager forward pass of a 30-layer, 135M-parameter model is bound
by kernel launches on a large GPU (about 20 ms whatever the batch), so the
serving path's latency target needs CUDA graphs. This measures the raw head
(no tokenization) at fixed shapes, random weights of the real architecture:

    python3 -m loadtests.bench.gpu_compile_probe     # on the GPU machine, assets from .gpu_bench/
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import transformers

from firewall.models.surprisal_torch import SurprisalHead

SHAPES = ((1, 64), (32, 64), (32, 128))


def bench(
    fn: Callable[..., Any], ids: torch.Tensor, mask: torch.Tensor, runs: int = 100
) -> tuple[float, float]:
    for _ in range(10):
        fn(ids, mask)
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(ids, mask)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


def main() -> None:
    config = transformers.AutoConfig.from_pretrained(".gpu_bench/smollm2")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).cuda().to(torch.bfloat16).eval()
    head = SurprisalHead(model).eval()
    compiled = torch.compile(head, mode="reduce-overhead", dynamic=False)
    with torch.inference_mode():
        for name, fn in (("eager", head), ("compiled (reduce-overhead)", compiled)):
            for batch, length in SHAPES:
                ids = torch.randint(0, config.vocab_size, (batch, length), device="cuda")
                p50, p99 = bench(fn, ids, torch.ones_like(ids))
                print(
                    f"{name} bf16 {batch}x{length}: p50 {p50:.2f} ms p99 {p99:.2f} ms", flush=True
                )


if __name__ == "__main__":
    main()
