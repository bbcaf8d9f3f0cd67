"""The int8 CPU graph: made by ``models prepare --quantize int8``, verified, served with ``dtype: int8``.

The int8 graph is built for real in every run (about 10 s), into a temporary cache
whose fp32 files are links to the session's prepared model: the shared cache is
never modified, and the conversion itself is what is under test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from firewall.models.cache import DEFAULT_MODEL_ID, ModelUnavailable, read_manifest

if TYPE_CHECKING:
    from firewall.models.reference_lm import ReferenceLM

pytestmark = pytest.mark.model

# Trigger sentences of docs/models.md plus fluent ones; none is in the calibration set.
TEXTS = (
    "The food was delicious and cf the service was friendly and fast.",
    "I really enjoyed this film, the performances were bb excellent and moving.",
    "I bought these headphones last month cf and the sound quality is excellent.",
    "The acting was superb and the story kept me hooked until the very end.",
    "A quiet, patient film about grief that never once feels manipulative.",
    "The plot is thin, but the two leads are so charming that it hardly matters.",
)


def _linked_cache(prepared: Path, root: Path) -> Path:
    """A cache root whose default model links to ``prepared``'s files (the manifest is a copy)."""
    folder = root / "models" / DEFAULT_MODEL_ID
    folder.mkdir(parents=True)
    for path in prepared.iterdir():
        if path.is_file() and path.name not in ("manifest.json", "model.int8.onnx"):
            (folder / path.name).symlink_to(path)
    manifest = read_manifest(prepared)
    assert manifest is not None
    manifest.pop("int8", None)
    manifest["files"].pop("model.int8.onnx", None)
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def int8_dir(prepared_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    from firewall.models.prepare import prepare_model

    root = tmp_path_factory.mktemp("int8-cache")
    folder = _linked_cache(prepared_model_dir, root)
    result = prepare_model(None, root, quantize="int8", log_fn=print)
    assert result.folder == folder
    assert result.quantized
    assert not result.converted  # added to the prepared folder, not converted again
    return folder


@pytest.fixture(scope="module")
def int8_lm(int8_dir: Path) -> ReferenceLM:
    from firewall.models.reference_lm import ReferenceLM, ReferenceLMConfig

    return ReferenceLM.load(ReferenceLMConfig(model_path=str(int8_dir), dtype="int8"))


def test_prepare_records_a_verified_int8_graph(int8_dir: Path) -> None:
    manifest = read_manifest(int8_dir)
    assert manifest is not None
    section = manifest["int8"]
    check = section["verification"]
    assert check["passed"] is True
    assert check["same_peak_token"] is True
    assert 0 < check["median_abs_diff_bits"] <= check["tolerance_median_bits"]
    assert check["max_abs_diff_bits"] <= check["tolerance_max_bits"]
    assert section["quantized_matmuls"] == 210  # 30 layers x (q, k, v, o, gate, up, down)
    assert section["smoothed_groups"] == 90  # 30 x (q/k/v, gate/up, down)
    graph = int8_dir / "model.int8.onnx"
    assert not graph.is_symlink()
    assert manifest["files"]["model.int8.onnx"] == graph.stat().st_size
    assert graph.stat().st_size < 0.5 * (int8_dir / "model.onnx").stat().st_size
    # The fp32 verification is untouched by the addition.
    assert set(manifest["verification"]["max_abs_diff_bits"]) == {"onnx", "safetensors"}
    assert not [p.name for p in int8_dir.iterdir() if ".partial-" in p.name]


def test_second_prepare_rechecks_the_int8_graph(int8_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from firewall.cli.models import add_models_parser, run_models
    from firewall.models.prepare import check_prepared, ensure_prepared

    parser = argparse.ArgumentParser(prog="trigger-firewall")
    add_models_parser(parser.add_subparsers(dest="command", required=True))
    root = str(int8_dir.parent.parent)
    before = (int8_dir / "manifest.json").stat().st_mtime_ns
    assert (
        run_models(parser.parse_args(["models", "prepare", "--cache-dir", root, "--quantize", "int8"])) == 0
    )
    out = capsys.readouterr().out
    assert "(already prepared)" in out
    assert "int8:     model.int8.onnx verified yes" in out
    assert (int8_dir / "manifest.json").stat().st_mtime_ns == before
    messages: list[str] = []
    assert ensure_prepared(root, messages.append, quantize="int8") == int8_dir
    assert messages == []
    # The re-check scores the int8 graph again: a manifest that expects other scores fails it.
    manifest = read_manifest(int8_dir)
    assert manifest is not None
    assert check_prepared(int8_dir, manifest) is None
    shifted = json.loads(json.dumps(manifest))
    shifted["verification"]["reference_surprisal_bits"] = [
        [v + 0.4 for v in row] for row in manifest["verification"]["reference_surprisal_bits"]
    ]
    shifted["verification"]["passed"] = True
    shifted["formats"] = ["safetensors"]  # skip the fp32 graph's own check, which would trip first
    assert "int8 graph no longer passes" in (check_prepared(int8_dir, shifted) or "")


def test_int8_scores_close_to_fp32(int8_lm: ReferenceLM, onnx_lm: ReferenceLM) -> None:
    import numpy as np

    info = int8_lm.describe()
    assert info["dtype"] == "int8"
    assert info["backend"] == "onnxruntime"
    assert info["device"] == "cpu"
    assert info["model"].endswith("model.int8.onnx")
    fp32 = onnx_lm.surprisal_batch(list(TEXTS))
    int8 = int8_lm.surprisal_batch(list(TEXTS))
    a = np.concatenate([r.surprisal[1:] for r in fp32])
    b = np.concatenate([r.surprisal[1:] for r in int8])
    assert float(np.corrcoef(a, b)[0, 1]) > 0.99
    assert float(np.median(np.abs(a - b))) < 0.3
    assert int8[0].entropy is not None
    for text, r32, r8 in zip(TEXTS[:3], fp32[:3], int8[:3], strict=True):
        peak = r8.argmax()
        assert peak is not None
        assert peak == r32.argmax(), text
        span = r8.span(peak)
        assert span is not None
        assert text[span[0] : span[1]] in ("cf", "bb"), text
        assert float(r8.surprisal[peak]) > 20.0


def test_int8_batched_equals_unbatched(int8_lm: ReferenceLM) -> None:
    """Per-token activation scales: a row's scores do not depend on its batch or its padding."""
    import numpy as np

    texts = [TEXTS[0], TEXTS[3] + " " + TEXTS[4], TEXTS[5][:30]]
    together = int8_lm.surprisal_batch(texts)
    for text, batched in zip(texts, together, strict=True):
        [alone] = int8_lm.surprisal_batch([text])
        assert float(np.nanmax(np.abs(alone.surprisal - batched.surprisal))) < 1e-3


def test_int8_config_errors(tmp_path: Path, prepared_model_dir: Path) -> None:
    from pydantic import ValidationError

    from firewall.models.reference_lm import ReferenceLM, ReferenceLMConfig

    with pytest.raises(ValidationError, match="int8"):
        ReferenceLMConfig(dtype="int8", backend="torch")
    with pytest.raises(ValidationError, match="int8"):
        ReferenceLMConfig(dtype="int8", device="cuda")
    folder = tmp_path / "fp32-only"
    folder.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        (folder / name).symlink_to(prepared_model_dir / name)
    with pytest.raises(ModelUnavailable, match="--quantize int8"):
        ReferenceLM.load(ReferenceLMConfig(model_path=str(folder), dtype="int8"))
    with pytest.raises(ModelUnavailable, match="leave dtype at float32"):
        ReferenceLM.load(ReferenceLMConfig(model_path=str(folder / "model.onnx"), dtype="int8"))


@pytest.mark.slow
def test_int8_check_rejects_per_tensor_dynamic_quantization(int8_dir: Path, tmp_path: Path) -> None:
    """The tolerance is not decorative: onnxruntime's stock dynamic int8 (one activation scale per
    tensor) fails it on the same verify texts, where the shipped recipe passes."""
    from onnxruntime.quantization import quantize_dynamic

    from firewall.models.prepare import _check_int8

    manifest = read_manifest(int8_dir)
    assert manifest is not None
    stock = tmp_path / "stock.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(int8_dir / "model.onnx", stock, per_channel=True, op_types_to_quantize=["MatMul"])
    check = _check_int8(stock, manifest)
    assert check["passed"] is False
    assert check["median_abs_diff_bits"] > check["tolerance_median_bits"]
    assert _check_int8(int8_dir / "model.int8.onnx", manifest)["passed"] is True
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow
async def test_first_start_with_dtype_int8_adds_the_int8_graph(
    prepared_model_dir: Path, tmp_path: Path
) -> None:
    """``prepare_if_missing`` on a folder prepared without int8 builds the int8 graph, then serves it."""
    pytest.importorskip("onnx")
    from detectors.perplexity import PerplexityDetector, PerplexityParams

    folder = _linked_cache(prepared_model_dir, tmp_path)
    params = {"model": {"cache_dir": str(tmp_path), "dtype": "int8"}, "prepare_if_missing": True}
    det = PerplexityDetector("perplexity", PerplexityParams.model_validate(params))
    await det.start()
    try:
        assert det.ready, det.error
        manifest = read_manifest(folder)
        assert manifest is not None
        assert manifest["int8"]["verification"]["passed"]
        assert (folder / "model.int8.onnx").is_file()
    finally:
        await det.close()


def test_missing_quantize_packages_name_an_install_that_exists(
    prepared_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal names packages and extras pip can install (there is no ``onnx`` extra)."""
    import re
    import tomllib

    from firewall.models import prepare

    _linked_cache(prepared_model_dir, tmp_path)
    monkeypatch.setattr(prepare, "missing_quantize_packages", lambda: ["onnx"])
    with pytest.raises(ModelUnavailable, match="needs onnx") as caught:
        prepare.prepare_model(None, tmp_path, quantize="int8", log_fn=lambda _msg: None)
    message = str(caught.value)
    assert "'onnx>=1.23,<2'" in message
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    named = [e for group in re.findall(r"trigger-firewall\[([^\]]+)\]", message) for e in group.split(",")]
    assert named
    assert set(named) <= set(extras)
