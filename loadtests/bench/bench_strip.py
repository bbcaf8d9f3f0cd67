"""STRIP latency on CPU at N = 16 and 32 (p50/p99), one request at a time, both demo models.

Run from the repository root::

    .venv/bin/python -m loadtests.bench.bench_strip [--tfidf DIR] [--minilm DIR] [--requests 200]

* TF-IDF demo model: ``--tfidf`` or built into a temporary folder (seconds).
* MiniLM demo model: ``--minilm`` (a folder from ``trigger-firewall demo build --model minilm``)
  or, when absent, the same architecture (all-MiniLM-L6-v2, 6 layers, its tokenizer) with a
  random classifier head exported by the build's own exporter: latency does not depend on the
  weights' values, and fine-tuning takes minutes.

Measures the detector's full path: perturbation, tokenizing or vectorising, one
onnxruntime batch of N copies in the micro-batcher thread, entropy and attribution.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from detectors.strip.classifier import METADATA_FILE, POOL_FILE, TOKENIZER_FILE
from detectors.strip.detector import StripDetector, StripParams
from firewall.core.types import Phase, Sample, Segment
from firewall.demo.model import build, load_mr, split_mr


async def bench(label: str, folder: str, texts: list[str], threads: int) -> None:
    for n in (16, 32):
        det = StripDetector(
            "strip", StripParams(model_dir=folder, n_perturbations=n, threads=threads)
        )
        await det.start()
        times = []
        for t in texts:
            start = time.perf_counter()
            await det.score([Sample("b", Phase.INPUT, "bench", (Segment("user", t),))])
            times.append(time.perf_counter() - start)
        await det.close()
        ms = np.asarray(times) * 1000
        print(
            f"{label:<8} N={n}: p50 {np.percentile(ms, 50):7.2f} ms,"
            f" p99 {np.percentile(ms, 99):7.2f} ms "
            f"({len(ms)} requests, {threads} thread(s))",
            flush=True,
        )


def random_minilm(folder: Path, words: list[str]) -> None:
    """A MiniLM-L6 classifier folder with a random head (timing only; see the module docstring)."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    from firewall.demo.minilm import _export
    from firewall.models.sentence_encoder import default_encoder_dir

    encoder = default_encoder_dir()
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(encoder), num_labels=2, dtype=torch.float32
    ).eval()
    tokenizer = Tokenizer.from_file(str(encoder / TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.enable_truncation(40)
    _export(model, tokenizer, folder / "model.onnx")
    shutil.copy(encoder / TOKENIZER_FILE, folder / TOKENIZER_FILE)
    (folder / METADATA_FILE).write_bytes(orjson.dumps({"max_tokens": 40, "random_head": True}))
    (folder / POOL_FILE).write_bytes(orjson.dumps({"words": words}))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tfidf", default=None)
    parser.add_argument("--minilm", default=None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    texts = [t for t, _ in split_mr(load_mr(), 0).test[: args.requests]]
    with tempfile.TemporaryDirectory() as tmp:
        tfidf = args.tfidf
        if tfidf is None:
            tfidf = str(Path(tmp) / "tfidf")
            build(tfidf, strip_eval_limit=50, strip_ns=(32,))
        minilm = args.minilm
        label = "minilm"
        if minilm is None:
            minilm = str(Path(tmp) / "minilm")
            Path(minilm).mkdir()  # noqa: ASYNC240 (set-up before any timing)
            pool = orjson.loads((Path(tfidf) / POOL_FILE).read_bytes())["words"]
            random_minilm(Path(minilm), pool)
            label = "minilm*"
            print("minilm*: MiniLM-L6 architecture with a random head (no trained model given)")
        await bench("tfidf", tfidf, texts, args.threads)
        await bench(label, minilm, texts, args.threads)


if __name__ == "__main__":
    asyncio.run(main())
