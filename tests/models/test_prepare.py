"""Preparation: manifest, idempotence, the cheap re-check, the CLI, and source errors."""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import pytest

from firewall.models.cache import DEFAULT_MODEL_ID, ModelUnavailable, read_manifest


def _cli(argv: list[str]) -> int:
    from firewall.cli.models import add_models_parser, run_models

    parser = argparse.ArgumentParser(prog="trigger-firewall")
    add_models_parser(parser.add_subparsers(dest="command", required=True))
    return run_models(parser.parse_args(argv))


@pytest.mark.model
def test_manifest_records_the_conversion(prepared_model_dir: Path) -> None:
    manifest = read_manifest(prepared_model_dir)
    assert manifest is not None
    assert manifest["model_id"] == DEFAULT_MODEL_ID == prepared_model_dir.name
    assert set(manifest["formats"]) == {"onnx", "safetensors"}
    assert len(manifest["source"]["sha256"]) == 64
    assert manifest["source"]["size"] > 90e6
    for name, size in manifest["files"].items():
        assert (prepared_model_dir / name).stat().st_size == size
    assert {"torch", "transformers", "onnxruntime", "tokenizers"} <= set(manifest["versions"])
    verification = manifest["verification"]
    assert verification["passed"] is True
    assert set(verification["max_abs_diff_bits"]) == {"onnx", "safetensors"}
    assert max(verification["max_abs_diff_bits"].values()) <= verification["tolerance_bits"]
    assert manifest["vocab_size"] == 49152
    # No half-written folders are left behind.
    assert not list(prepared_model_dir.parent.glob(f".{DEFAULT_MODEL_ID}.partial-*"))


@pytest.mark.model
def test_second_prepare_only_rechecks(prepared_model_dir: Path) -> None:
    from firewall.models.prepare import ensure_prepared, prepare_model

    root = prepared_model_dir.parent.parent
    before = (prepared_model_dir / "manifest.json").stat().st_mtime_ns
    start = time.perf_counter()
    result = prepare_model(None, root, log_fn=lambda _: None)
    assert not result.converted
    assert time.perf_counter() - start < 20
    assert (prepared_model_dir / "manifest.json").stat().st_mtime_ns == before
    messages: list[str] = []
    assert ensure_prepared(root, messages.append) == prepared_model_dir
    assert messages == []  # already there: nothing to say, nothing to do


@pytest.mark.model
def test_recheck_notices_a_changed_file(prepared_model_dir: Path) -> None:
    from firewall.models.prepare import check_prepared

    manifest = read_manifest(prepared_model_dir)
    assert manifest is not None
    assert check_prepared(prepared_model_dir, manifest) is None
    wrong = copy.deepcopy(manifest)
    wrong["files"]["tokenizer.json"] += 1
    assert "tokenizer.json" in (check_prepared(prepared_model_dir, wrong) or "")
    wrong = copy.deepcopy(manifest)
    wrong["verification"]["reference_surprisal_bits"][1][3] += 1.0
    assert "differs" in (check_prepared(prepared_model_dir, wrong) or "")


@pytest.mark.model
def test_cli_prepare_and_info(prepared_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(prepared_model_dir.parent.parent)
    assert _cli(["models", "prepare", "--cache-dir", root]) == 0
    out = capsys.readouterr().out
    assert "already prepared" in out
    assert "model.onnx" in out
    assert "verified: yes" in out
    assert _cli(["models", "info", "--cache-dir", root, "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["default_model_prepared"] is True
    assert state["models"][DEFAULT_MODEL_ID]["verified"] is True
    assert "onnxruntime" in state["runtimes"]


def test_info_on_an_empty_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["models", "info", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out
    assert "not prepared" in out


def test_sources_that_cannot_be_prepared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from firewall.models.prepare import resolve_source

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")
    with pytest.raises(ModelUnavailable, match="needs no preparation"):
        resolve_source(onnx)
    with pytest.raises(ModelUnavailable, match="cannot use"):
        resolve_source(tmp_path)
    assert _cli(["models", "prepare", "--cache-dir", str(tmp_path), "--source", str(tmp_path)]) == 1
    assert "cannot use" in capsys.readouterr().err
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}", encoding="utf-8")
    source = resolve_source(tmp_path / "hf")
    assert source.kind == "hf"
    assert source.model_id == "hf"
