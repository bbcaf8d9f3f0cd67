"""GPU benchmark of the reference LM's serving path, its surprisal reductions and host overhead.

Not a test (no asserts); run on a borrowed GPU machine. Weights cannot travel there
(see ``loadtests/bench/gpu_bench.py``), so the model is the real SmolLM2-135M
architecture and tokenizer with random weights: forward-pass timing does not depend
on weight values. One invocation prints:

1. the shipped serving path, :class:`firewall.models.reference_lm.ReferenceLM` (torch backend,
   bf16: tokenization, padding, the surprisal head, copies back) for each ``cuda_graphs``
   mode in ``--modes`` (default ``graphs``), p50/p99/max for SHAPES;
2. a breakdown at ``--focus`` (32 x 128): CUDA-event time of the graph replay alone, the
   backend call (copy in, replay, copy out, one sync), the whole ``surprisal_batch`` call,
   and the previous host path (tensor copies, fill kernels, two ``.cpu()`` syncs);
3. the surprisal head variants side by side at ``--focus``, each replayed from its own CUDA
   graph: the reference reduction (before issue 4), the fused eager one, the fused compiled
   one, and chunked variants;
4. agreement, in bits, between the reference and fused heads on the GPU (bf16 and fp32 model)
   and between the reductions on synthetic bf16 logits.

Every section catches its own errors and reports them, so one failing API cannot lose the
rest of the run. Issue 4's target: p99 < 15 ms for batch 32 x 128 tokens on an H100.

Usage (GPU machine, repository root)::

    python3 -m pip install --no-deps .gpu_bench/wheels/*.whl
    python3 -m loadtests.bench.gpu_reference_lm --assets .gpu_bench --runs 200

CPU smoke run (every code path, eagerly; minutes on 2 cores)::

    .venv/bin/python -m loadtests.bench.gpu_reference_lm --device cpu --dtype float32 --runs 2 \\
        --modes off --shapes 1x16,4x32 --focus 4x32
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests.bench.gpu_bench import REVIEW, percentile, random_weight_folder

SHAPES = ((1, 64), (8, 64), (32, 64), (1, 128), (8, 128), (32, 128))
TARGET_MS = 15.0


def _shape(text: str) -> tuple[int, int]:
    rows, length = text.lower().split("x")
    return int(rows), int(length)


def _stats(ms: list[float]) -> str:
    return f"{statistics.median(ms):>8.2f} {percentile(ms, 0.99):>8.2f} {max(ms):>8.2f}"


class Clock:
    """Wall time of ``fn`` (host perf_counter, after a device sync) and, on CUDA, the GPU time
    between events recorded around it."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.cuda = device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def run(self, fn: Callable[[], Any], runs: int) -> tuple[list[float], list[float]]:
        torch = self.torch
        for _ in range(min(10, runs)):
            fn()
        self.sync()
        wall: list[float] = []
        gpu: list[float] = []
        for _ in range(runs):
            if self.cuda:
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
            t = time.perf_counter()
            fn()
            if self.cuda:
                end.record()
                end.synchronize()
                gpu.append(start.elapsed_time(end))
            wall.append((time.perf_counter() - t) * 1000)
        return wall, gpu


def section(title: str, fn: Callable[[], Any]) -> Any:
    print(f"\n== {title}", flush=True)
    try:
        return fn()
    except Exception:  # a benchmark reports what broke and goes on with the next section
        print(f"!! section failed:\n{traceback.format_exc()}", flush=True)
        return None


def load_lm(folder: Path, mode: str, device: str, dtype: str) -> Any:
    from firewall.models.reference_lm import ReferenceLM, ReferenceLMConfig

    return ReferenceLM.load(
        ReferenceLMConfig(
            model_path=str(folder),
            backend="torch",
            device=device,  # type: ignore[arg-type]
            dtype=dtype,  # type: ignore[arg-type]
            max_tokens=128,
            overlap=32,
            batch_size=32,
            max_batch_tokens=32 * 128,
            cuda_graphs=mode,  # type: ignore[arg-type]
        )
    )


def token_rows(lm: Any, rows: int, length: int, ragged: bool = False) -> list[list[int]]:
    ids, _ = lm.tokenize(" ".join([REVIEW] * 4))
    if not ragged:
        return [list(ids[:length])] * rows
    return [list(ids[i % 7 : i % 7 + max(2, length - 3 * i)]) for i in range(rows)]


def serving_table(
    lm: Any, mode: str, shapes: list[tuple[int, int]], runs: int, clock: Clock
) -> dict[tuple[int, int], float]:
    print(f"cuda_graphs={mode}: {lm.describe()}")
    print(f"{'batch':>5} {'tokens':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'tokens/s':>11}")
    p99s = {}
    for batch, length in shapes:
        items = token_rows(lm, batch, length)
        wall, _ = clock.run(functools.partial(lm.surprisal_batch, items), runs)
        p99s[(batch, length)] = percentile(wall, 0.99)
        rate = batch * length / (statistics.median(wall) / 1000)
        print(f"{batch:>5} {length:>6} {_stats(wall)} {rate:>11,.0f}", flush=True)
    return p99s


def breakdown(lm: Any, focus: tuple[int, int], runs: int, clock: Clock) -> None:
    """Where the time of one surprisal_batch call at ``focus`` goes."""
    import numpy as np
    import torch

    from firewall.models.cuda_graphs import GraphedSurprisal

    rows, length = focus
    items = token_rows(lm, rows, length)
    backend = lm._backend
    ids = np.asarray(items, dtype=np.int64)
    mask = np.ones_like(ids)
    head = backend.head
    print(
        f"focus {rows} x {length}; backend head: {type(head).__name__}, reducer: {backend.reducer}"
    )
    print(f"{'what':<44} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  (GPU p50 ms, events)")

    def line(what: str, fn: Callable[[], Any]) -> None:
        wall, gpu = clock.run(fn, runs)
        extra = f"  ({statistics.median(gpu):.2f})" if gpu else ""
        print(f"{what:<44} {_stats(wall)}{extra}", flush=True)

    graph = head.bucket_graph(rows, length) if isinstance(head, GraphedSurprisal) else None
    if graph is not None:
        line("graph replay alone", graph.replay)
    line("backend.run (copy in, replay, copy out)", lambda: backend.run(ids, mask))
    line("ReferenceLM.surprisal_batch (whole call)", lambda: lm.surprisal_batch(items))

    def legacy() -> None:  # the host path before issue 4: two H2D, fill kernels, two D2H syncs
        with torch.inference_mode():
            t_ids = torch.from_numpy(ids).to(backend.device)
            t_mask = torch.from_numpy(mask).to(backend.device)
            s, e = head(t_ids, t_mask)
            s.float().cpu().numpy()
            e.float().cpu().numpy()

    line("previous host path (tensor call, 2 syncs)", legacy)


def head_variants(model: Any, device: str, vocab: int) -> dict[str, Any]:
    from firewall.models.surprisal_torch import SurprisalHead, compiled_reducer

    variants: dict[str, Any] = {
        "reference (before)": SurprisalHead(model, causal_only=True),
        "fused, eager reducer": SurprisalHead(model, causal_only=True, reduction="fused"),
    }
    compiled = compiled_reducer(device, vocab)
    print(f"compiled reducer: {'available' if compiled is not None else 'unavailable (see log)'}")
    if compiled is not None:
        head = SurprisalHead(model, causal_only=True, reduction="fused")
        head.reduce = compiled
        variants["fused, compiled reducer"] = head
    for chunk in (64, 256, 1024):
        variants[f"fused, eager, chunks of {chunk} rows"] = SurprisalHead(
            model, causal_only=True, reduction="fused", chunk_rows=chunk
        )
    if compiled is not None:
        head = SurprisalHead(model, causal_only=True, reduction="fused", chunk_rows=256)
        head.reduce = compiled
        variants["fused, compiled, chunks of 256 rows"] = head
    return {name: head.eval() for name, head in variants.items()}


def compare_variants(lm: Any, focus: tuple[int, int], runs: int, clock: Clock) -> dict[str, float]:
    """Each head variant replayed from its own graph at ``focus`` (eager bucket on CPU)."""
    import numpy as np
    import torch

    from firewall.models.cuda_graphs import GraphedSurprisal, GraphMode

    rows, length = focus
    device = lm._backend.device
    model = _model(lm)
    variants = head_variants(model, device, int(model.config.vocab_size))
    ids = np.asarray(token_rows(lm, rows, length), dtype=np.int64)
    mask = np.ones_like(ids)
    mode: GraphMode = "graphs" if device == "cuda" else "eager"
    print(
        f"{'head at ' + str(rows) + ' x ' + str(length):<40}"
        f" {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        "  GPU p50 ms (replay)  capture s"
    )
    p99s: dict[str, float] = {}
    for name, head in variants.items():
        try:
            runner = GraphedSurprisal(head, device, max_rows=rows, max_tokens=length, mode=mode)
            info = runner.warmup(shapes=[(rows, length)])
            if info["failed"]:
                print(f"{name:<40} capture failed (see log)")
                continue
            wall, _ = clock.run(functools.partial(runner.run_numpy, ids, mask), runs)
            graph = runner.bucket_graph(rows, length)
            gpu = clock.run(graph.replay, runs)[1] if graph is not None else []
            replay = f"{statistics.median(gpu):>10.2f}" if gpu else f"{'n/a':>10}"
            p99s[name] = percentile(wall, 0.99)
            print(
                f"{name:<40} {_stats(wall)}  {replay}           {info['seconds']:>6.1f}", flush=True
            )
        except Exception as exc:  # one variant's failure must not hide the others
            print(f"{name:<40} failed: {type(exc).__name__}: {exc}"[:400], flush=True)
        finally:
            runner = None  # type: ignore[assignment]
            if device == "cuda":
                torch.cuda.empty_cache()
    return p99s


def _model(lm: Any) -> Any:
    from firewall.models.cuda_graphs import GraphedSurprisal

    head: Any = lm._backend.head
    inner: Any = head._head if isinstance(head, GraphedSurprisal) else head
    return inner.lm


def agreement(lm: Any, focus: tuple[int, int]) -> None:
    """max |diff| (bits) between the reference head and the fused heads, eager, on ragged rows."""
    import torch

    from firewall.models.surprisal_torch import SurprisalHead, compiled_reducer, reduce_logits

    rows, length = focus
    device = lm._backend.device
    model = _model(lm)
    items = token_rows(lm, rows, length, ragged=True)
    width = max(len(r) for r in items)
    ids = torch.full((rows, width), 2, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(items):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    ids, mask = ids.to(device), mask.to(device)
    compiled = compiled_reducer(device, int(model.config.vocab_size))

    def report(label: str, m: Any) -> None:
        reference = SurprisalHead(m).eval()
        with torch.inference_mode():
            want = reference(ids, mask)
            heads = {"fused eager": SurprisalHead(m, reduction="fused").eval()}
            heads["fused eager, chunks of 256"] = SurprisalHead(
                m, reduction="fused", chunk_rows=256
            ).eval()
            if compiled is not None:
                heads["fused compiled"] = SurprisalHead(m, reduction="fused").eval()
                heads["fused compiled"].reduce = compiled
            for name, head in heads.items():
                got = head(ids, mask)
                ds, de = ((g - w).abs() for g, w in zip(got, want, strict=True))
                print(
                    f"{label} model, reference vs {name:<28} surprisal max {float(ds.max()):.2e} "
                    f"median {float(ds.median()):.2e}; entropy max {float(de.max()):.2e} bits"
                )

    report(str(next(model.parameters()).dtype).removeprefix("torch."), model)
    if next(model.parameters()).dtype != torch.float32:
        fp32 = _fp32_copy(model)
        report("float32", fp32)
        del fp32
    # Synthetic bf16 logits with a trained model's spread (the random model's are near-uniform).
    generator = torch.Generator(device=device).manual_seed(0)
    n, vocab = rows * (length - 1), int(model.config.vocab_size)
    logits = (torch.randn(n, vocab, device=device, generator=generator) * 4).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (n,), device=device, generator=generator)
    with torch.inference_mode():
        # _reference scores position t with logits t and target t + 1: one extra row of each.
        padded = torch.cat([logits, logits[:1]]).unsqueeze(0)
        want = SurprisalHead._reference(padded, torch.cat([targets[:1], targets]).unsqueeze(0))
        for name, fn in (("fused eager", reduce_logits), ("fused compiled", compiled)):
            if fn is None:
                continue
            got = fn(logits, targets)
            diff = max(float((g - w[0]).abs().max()) for g, w in zip(got, want, strict=True))
            print(
                f"synthetic bf16 logits [{n}, {vocab}], reference vs {name:<15} max {diff:.2e} bits"
            )


def _fp32_copy(model: Any) -> Any:
    import copy

    import torch

    return copy.deepcopy(model).to(torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--assets", type=Path, default=Path(".gpu_bench"))
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument(
        "--modes", default="graphs", help="cuda_graphs modes for the table: off,graphs,compile"
    )
    parser.add_argument("--shapes", default=",".join(f"{b}x{n}" for b, n in SHAPES))
    parser.add_argument(
        "--focus", default="32x128", help="shape of the breakdown and head comparison"
    )
    args = parser.parse_args()
    import torch

    started = time.perf_counter()
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(
        f"device: {name}; torch {torch.__version__};"
        " random weights, real architecture and tokenizer"
    )
    if args.device == "cuda":
        print(f"TF32 matmul allowed: {torch.backends.cuda.matmul.allow_tf32}")
    shapes = [_shape(s) for s in args.shapes.split(",")]
    focus = _shape(args.focus)
    clock = Clock(args.device)
    results: dict[str, dict[tuple[int, int], float]] = {}
    variant_p99s: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = random_weight_folder(args.assets / "smollm2", Path(tmp), dtype=args.dtype)
        shipped = None
        for mode in args.modes.split(","):

            def table(mode: str = mode) -> tuple[Any, dict[tuple[int, int], float]]:
                t0 = time.perf_counter()
                lm = load_lm(folder, mode, args.device, args.dtype)
                print(
                    f"cuda_graphs={mode}: loaded (incl. capture/compile)"
                    f" in {time.perf_counter() - t0:.1f} s"
                )
                return lm, serving_table(lm, mode, shapes, args.runs, clock)

            out = section(f"serving path, cuda_graphs={mode}", table)
            if out is not None:
                lm, results[mode] = out
                if shipped is None or mode == "graphs":
                    shipped = lm
        if shipped is not None:
            section(
                f"breakdown at {args.focus} (shipped path)",
                lambda: breakdown(shipped, focus, args.runs, clock),
            )
            variant_p99s = (
                section(
                    f"surprisal head variants at {args.focus}, each from its own graph,"
                    " through run_numpy",
                    lambda: compare_variants(shipped, focus, args.runs, clock),
                )
                or {}
            )
            section(
                "agreement, reference head vs fused heads (eager)",
                lambda: agreement(shipped, focus),
            )
    print()
    for mode, p99s in results.items():
        if focus in p99s:
            p99 = p99s[focus]
            verdict = "MET" if p99 < TARGET_MS else "MISSED"
            where = f"at {args.focus}, cuda_graphs={mode}"
            print(f"target p99 < {TARGET_MS:.0f} ms {where}: {p99:.2f} ms ({verdict})")
    for variant, p99 in variant_p99s.items():
        print(
            f"head variant {variant!r}: p99 {p99:.2f} ms at {args.focus}"
            " (run_numpy, no tokenization)"
        )
    print(f"total wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
