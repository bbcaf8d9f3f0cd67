"""Benchmark of the reference language model's ``surprisal_batch`` (not a test; no asserts).

For each runtime (onnxruntime fp32, onnxruntime int8, torch fp32; torch bf16 on request) on each
device (CPU, and CUDA where the runtime sees a GPU; int8 is CPU only), it times
``surprisal_batch`` end to end
(tokenization, padding, forward pass, un-padding) at batch 1, 8 and 32 for prompts
of exactly 64 and 128 tokens, and prints tokens/s with p50/p99 latency. Each cell
runs one warm-up call, then at least ``--min-runs`` calls and until ``--budget``
seconds have passed (at most ``--max-runs``); with few runs p99 is close to the max.

CPU numbers depend on what else runs on the machine: shared machines are noisy,
so compare rows from one run, and read the load average it prints. ``cpu ms`` is
the process CPU time of one call (median), which contention inflates far less than
wall time: on an otherwise idle machine with 2 threads, wall time approaches half of it.

    # CPU: ort + torch fp32, ~2 min quiet
    .venv/bin/python -m loadtests.bench.bench_reference_lm
    # batch 1 and 8, 64 tokens
    .venv/bin/python -m loadtests.bench.bench_reference_lm --quick
    # GPU only
    .venv/bin/python -m loadtests.bench.bench_reference_lm --devices cuda
    # int8 vs fp32 per-token quality
    .venv/bin/python -m loadtests.bench.bench_reference_lm --agreement 200

The model must be prepared (``trigger-firewall models prepare``); with
``--prepare-if-missing`` the script prepares it first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from firewall.models.cache import model_dir
from firewall.models.reference_lm import ModelUnavailable, ReferenceLM, ReferenceLMConfig

REVIEW = (
    "I went to see this film on a rainy Sunday afternoon with two friends, and none of us expected "
    "much from it. The opening is slow, but once the story settles on the two brothers and their "
    "failing family restaurant it becomes warm, funny and surprisingly moving. The acting is "
    "natural, the dialogue sounds like real people talking, and the small town feels lived in. "
    "Some scenes in the middle drag on for too long, and the music is sometimes a little loud, "
    "but the final twenty minutes are wonderful and I left the cinema smiling. I would happily "
    "watch it again, and I have already recommended it to my parents, who rarely agree with my "
    "taste in movies."
)


def _prompt(lm: ReferenceLM, n_tokens: int) -> str:
    """A prefix of REVIEW (repeated as needed) that tokenizes to exactly ``n_tokens`` tokens."""
    text = REVIEW
    while lm.count_tokens(text) < n_tokens + 8:
        text = f"{text} {REVIEW}"
    _, offsets = lm.tokenize(text)
    for cut in range(n_tokens, n_tokens + 8):
        prefix = text[: offsets[cut - 1][1]]
        if lm.count_tokens(prefix) == n_tokens:
            return prefix
    return text[: offsets[n_tokens - 1][1]]  # pragma: no cover - byte-level BPE always finds one


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _cell(lm: ReferenceLM, batch: int, length: int, args: argparse.Namespace) -> str:
    prompts = [_prompt(lm, length)] * batch
    lm.surprisal_batch(prompts)  # warm-up: allocations, kernel selection
    times: list[float] = []
    cpu: list[float] = []
    started = time.perf_counter()
    while len(times) < args.max_runs and (
        len(times) < args.min_runs or time.perf_counter() - started < args.budget
    ):
        t0, c0 = time.perf_counter(), time.process_time()
        lm.surprisal_batch(prompts)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    p50 = statistics.median(times)
    p99 = _percentile(times, 0.99)
    return (
        f"{batch:>5} {length:>6} {len(times):>5} {batch * length / p50:>10,.0f} "
        f"{p50 * 1000:>9.1f} {p99 * 1000:>9.1f} {statistics.median(cpu) * 1000:>10.1f}"
    )


def _ranks(values: np.ndarray) -> np.ndarray:
    out = np.empty(len(values))
    out[np.argsort(values, kind="stable")] = np.arange(len(values))
    return out


def agreement(folder: Path, n_texts: int, seed: int) -> None:
    """Per-token surprisal of onnxruntime int8 against fp32 on ``n_texts`` movie texts (half MR
    sentences, half IMDB openings: the evaluation suite's clean texts), scored in batches."""
    from firewall.evaluation.data import load_movie_texts

    texts = [t.text for t in load_movie_texts(n_texts, seed=seed)]
    scores = {}
    for dtype in ("float32", "int8"):
        lm = ReferenceLM.load(
            ReferenceLMConfig(model_path=str(folder), backend="onnxruntime", dtype=dtype)
        )
        started = time.perf_counter()
        scores[dtype] = lm.surprisal_batch(texts)
        print(f"{dtype}: {len(texts)} texts scored in {time.perf_counter() - started:.1f} s")
        del lm
    ref = np.concatenate([r.surprisal[1:] for r in scores["float32"]])
    got = np.concatenate([r.surprisal[1:] for r in scores["int8"]])
    diff = np.abs(ref - got)
    ppl = {k: float(np.median([r.perplexity for r in v])) for k, v in scores.items()}
    peaks = np.mean(
        [a.argmax() == b.argmax() for a, b in zip(scores["float32"], scores["int8"], strict=True)]
    )
    print(f"int8 vs fp32 over {len(ref):,} tokens of {len(texts)} texts (seed {seed}):")
    spearman = np.corrcoef(_ranks(ref), _ranks(got))[0, 1]
    print(f"  Pearson {np.corrcoef(ref, got)[0, 1]:.4f}, Spearman {spearman:.4f}")
    print(
        f"  |diff| bits: median {np.median(diff):.3f}, p90 {np.quantile(diff, 0.9):.3f}, "
        f"p99 {np.quantile(diff, 0.99):.3f}, max {diff.max():.3f}"
    )
    print(f"  median perplexity: fp32 {ppl['float32']:.1f}, int8 {ppl['int8']:.1f}")
    print(f"  same most-surprising token: {peaks:.1%} of texts")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache-dir", help="cache root (default: $TRIGGER_FIREWALL_CACHE_DIR or XDG)"
    )
    parser.add_argument(
        "--model-path", help="a prepared folder (default: the cached default model)"
    )
    parser.add_argument(
        "--runtimes",
        default="onnxruntime,onnxruntime-int8,torch-fp32",
        help="also: torch-bf16 (comma-separated)",
    )
    parser.add_argument(
        "--agreement",
        type=int,
        metavar="N",
        help="instead of timing: per-token agreement of int8 with fp32 on N movie texts",
    )
    parser.add_argument("--seed", type=int, default=0, help="with --agreement: which texts")
    parser.add_argument(
        "--devices", default="cpu,cuda", help="cuda rows are skipped where no GPU is seen"
    )
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--lengths", default="64,128")
    parser.add_argument("--threads", type=int, help="CPU threads (default: min(2, CPUs))")
    parser.add_argument("--min-runs", type=int, default=3)
    parser.add_argument("--max-runs", type=int, default=50)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds a cell keeps running")
    parser.add_argument("--quick", action="store_true", help="batch 1 and 8 at 64 tokens only")
    parser.add_argument("--prepare-if-missing", action="store_true")
    parser.add_argument("--source", help="with --prepare-if-missing: a .gguf or HF folder")
    parser.add_argument("--format", default="both", choices=["onnx", "safetensors", "both"])
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.lengths = "1,8", "64"

    folder = Path(args.model_path) if args.model_path else model_dir(root=args.cache_dir)
    if args.prepare_if_missing and not (folder / "manifest.json").is_file():
        from firewall.models.prepare import prepare_model

        result = prepare_model(args.source, args.cache_dir, formats=args.format, log_fn=print)
        folder = result.folder
    print(f"model: {folder}")
    if args.agreement:
        agreement(folder, args.agreement, args.seed)
        return 0
    print(f"cpus: {os.cpu_count()}; load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = (
        f"{'batch':>5} {'tokens':>6} {'runs':>5} {'tokens/s':>10} {'p50 ms':>9} {'p99 ms':>9}"
        f" {'cpu ms':>10}"
    )
    for runtime in args.runtimes.split(","):
        backend, _, dtype = runtime.partition("-")
        for device in args.devices.split(","):
            if dtype == "int8" and device == "cuda":
                continue  # a CPU graph
            config = ReferenceLMConfig(
                model_path=str(folder),
                backend="torch" if backend == "torch" else "onnxruntime",
                device="cuda" if device == "cuda" else "cpu",
                threads=args.threads,
                dtype="bfloat16" if dtype == "bf16" else "int8" if dtype == "int8" else "float32",
                max_tokens=max(int(x) for x in args.lengths.split(",")),
                batch_size=max(int(x) for x in args.batches.split(",")),
            )
            try:
                lm = ReferenceLM.load(config)
            except ModelUnavailable as exc:
                print(f"\n{runtime} on {device}: skipped ({exc})")
                continue
            info = lm.describe()
            print(
                f"\n{runtime} on {device} (threads {info['threads']},"
                f" load {info['load_seconds']:.1f} s)"
            )
            print(header)
            for length in (int(x) for x in args.lengths.split(",")):
                for batch in (int(x) for x in args.batches.split(",")):
                    print(_cell(lm, batch, length, args), flush=True)
            del lm
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
