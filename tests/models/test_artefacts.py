"""Pinned artefacts (firewall/models/artefacts.py): every file hashed when written, checked at load.

The unit tests work on small folders in tmp_path. The reference-model tests work on a
copy of the session's prepared folder in tmp_path whose large files are symbolic links
to the shared cache and whose small files (the ones bytes are flipped in) are copies:
the shared cache is never modified.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from firewall.core.errors import DetectorUnavailable
from firewall.models.artefacts import (
    SECTION,
    ArtefactMismatch,
    listed_files,
    read_pins,
    verify_distribution,
    verify_folder,
    write_standalone_manifest,
)
from firewall.models.cache import MANIFEST, ModelUnavailable

FIX = "run the fix"


def _flip(path: Path, offset: int = 100) -> None:
    """Flip one bit of one byte in place (the size stays the same)."""
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def pinned(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(bytes(range(256)) * 40)
    (folder / "tokenizer.json").write_text('{"vocab": ["a", "b"]}', encoding="utf-8")
    (folder / "sub" / "pool.json").write_text('{"words": ["x"]}', encoding="utf-8")
    write_standalone_manifest(folder, kind="test", source={"builder": "test"})
    return folder


def test_pins_list_every_file_with_size_and_sha256(pinned: Path) -> None:
    manifest = json.loads((pinned / MANIFEST).read_text(encoding="utf-8"))
    section = manifest[SECTION]
    assert section["algorithm"] == "sha256"
    assert section["kind"] == "test"
    assert section["source"] == {"builder": "test"}
    assert section["tool"].startswith("trigger-firewall ")
    assert set(section["files"]) == {"model.onnx", "tokenizer.json", "sub/pool.json"}
    assert section["files"]["model.onnx"]["size"] == 10240
    assert all(len(entry["sha256"]) == 64 for entry in section["files"].values())
    assert oct((pinned / MANIFEST).stat().st_mode & 0o777) == "0o644"
    assert not [p for p in pinned.iterdir() if ".partial-" in p.name]
    checked = verify_folder(pinned, fix=FIX)
    assert (checked.files, checked.hashed_files, checked.hashed_bytes) == (
        3,
        3,
        sum(entry["size"] for entry in section["files"].values()),
    )


def test_one_flipped_byte_refuses_the_load_and_names_the_file(pinned: Path) -> None:
    secret = (pinned / "tokenizer.json").read_text(encoding="utf-8")
    _flip(pinned / "tokenizer.json", 3)
    with pytest.raises(ArtefactMismatch) as info:
        verify_folder(pinned, fix=FIX, detector="strip")
    exc = info.value
    assert (exc.problem, exc.file, exc.detector, exc.reason) == (
        "sha256",
        "tokenizer.json",
        "strip",
        "artefact_mismatch",
    )
    assert isinstance(exc, ModelUnavailable)
    assert isinstance(exc, DetectorUnavailable)
    assert "tokenizer.json" in str(exc)
    assert FIX in str(exc)
    assert "vocab" not in str(exc)
    assert secret not in str(exc)
    # Checked by size only, a flipped byte is not seen; hashed, it is.
    assert verify_folder(pinned, fix=FIX, hash_filter=lambda name: name != "tokenizer.json").hashed_files == 2


@pytest.mark.parametrize(
    ("change", "problem", "file"),
    [
        (lambda f: (f / "sub" / "pool.json").unlink(), "missing", "sub/pool.json"),
        (lambda f: (f / "extra.onnx.data").write_bytes(b"x"), "unlisted", "extra.onnx.data"),
        (lambda f: (f / "model.onnx").write_bytes(b"short"), "size", "model.onnx"),
    ],
)
def test_missing_added_and_resized_files_are_refused(pinned: Path, change, problem: str, file: str) -> None:
    change(pinned)
    with pytest.raises(ArtefactMismatch) as info:
        verify_folder(pinned, fix=FIX)
    assert (info.value.problem, info.value.file) == (problem, file)


def test_no_pins_is_refused_and_writers_temporaries_are_ignored(pinned: Path) -> None:
    (pinned / ".manifest.json.partial-123").write_text("{}", encoding="utf-8")
    assert "manifest.json" not in listed_files(pinned)
    assert verify_folder(pinned, fix=FIX).files == 3
    manifest = json.loads((pinned / MANIFEST).read_text(encoding="utf-8"))
    del manifest[SECTION]
    (pinned / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    assert read_pins(pinned) is None
    with pytest.raises(ArtefactMismatch) as info:
        verify_folder(pinned, fix=FIX)
    assert info.value.problem == "no_manifest"
    (pinned / MANIFEST).unlink()
    with pytest.raises(ArtefactMismatch, match="no sha256 pins"):
        verify_folder(pinned, fix=FIX)


def test_a_packaged_model_is_checked_against_pips_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake installed distribution: its RECORD lists the model's files with their sha256."""
    import base64
    import hashlib
    import importlib

    site = tmp_path / "site"
    model = site / "fakemodel" / "model"
    model.mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    (model / "config.json").write_text("{}", encoding="utf-8")
    info = site / "fakemodel-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakemodel\nVersion: 1.0\n", encoding="utf-8")
    lines = []
    for path in sorted(model.iterdir()):
        digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
        lines.append(f"fakemodel/model/{path.name},sha256={digest},{path.stat().st_size}")
    lines.append("fakemodel-1.0.dist-info/RECORD,,")
    (info / "RECORD").write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    assert verify_distribution("fakemodel", model, fix=FIX, detector="enc").files == 2
    weights = hashlib.sha256((model / "weights.bin").read_bytes()).hexdigest()
    with pytest.raises(ArtefactMismatch) as wrong:  # a digest pinned in source overrides RECORD's word
        verify_distribution("fakemodel", model, fix=FIX, detector="enc", known={"weights.bin": "0" * 64})
    assert (wrong.value.problem, wrong.value.file) == ("sha256", "weights.bin")
    assert verify_distribution("fakemodel", model, fix=FIX, detector="enc", known={"weights.bin": weights})
    _flip(model / "weights.bin")
    with pytest.raises(ArtefactMismatch) as flipped:
        verify_distribution("fakemodel", model, fix=FIX, detector="enc")
    assert (flipped.value.problem, flipped.value.file) == ("sha256", "weights.bin")
    (model / "added.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ArtefactMismatch, match="RECORD") as added:
        verify_distribution("fakemodel", model, fix=FIX, detector="enc")
    assert added.value.file == "added.json"
    with pytest.raises(ArtefactMismatch, match="not installed"):
        verify_distribution("no-such-model-package", model, fix=FIX, detector="enc")
    assert "fakemodel" not in sys.modules


def test_the_installed_sentence_encoder_matches_its_record() -> None:
    pytest.importorskip("tokenizers")
    from firewall.models.sentence_encoder import (
        EncoderUnavailable,
        default_encoder_dir,
        verify_default_encoder,
    )

    try:
        folder = default_encoder_dir()
    except EncoderUnavailable as exc:
        pytest.skip(str(exc))
    checked = verify_default_encoder(folder)
    assert checked.files >= 3
    assert checked.hashed_bytes > 90_000_000


def test_a_pinned_encoder_copy_with_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    from firewall.models.sentence_encoder import EncoderUnavailable, SentenceEncoder, default_encoder_dir

    try:
        source = default_encoder_dir()
    except EncoderUnavailable as exc:
        pytest.skip(str(exc))
    folder = tmp_path / "encoder"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        shutil.copy(source / name, folder / name)
    write_standalone_manifest(folder, kind="sentence-encoder")
    assert SentenceEncoder.load(str(folder)).encode(["fine"]).shape == (1, 384)
    _flip(folder / "config.json", 1)
    with pytest.raises(ArtefactMismatch, match=r"config\.json"):
        SentenceEncoder.load(str(folder))


# -- the prepared reference model --------------------------------------------------------


def _copy_prepared(prepared: Path, folder: Path, copied: tuple[str, ...] = ("tokenizer.json",)) -> Path:
    """``prepared`` as a folder of links, with ``copied`` (and the manifest) as real copies."""
    folder.mkdir(parents=True)
    for path in prepared.iterdir():
        if not path.is_file():
            continue
        if path.name in (*copied, MANIFEST):
            shutil.copy(path, folder / path.name)
        else:
            (folder / path.name).symlink_to(path)
    return folder


@pytest.mark.model
def test_prepared_model_is_pinned_and_loads(prepared_model_dir: Path) -> None:
    from firewall.models.reference_lm import ReferenceLM, ReferenceLMConfig

    pins = read_pins(prepared_model_dir)
    assert pins is not None
    assert pins["kind"] == "reference-lm"
    assert {"model.onnx", "model.safetensors", "tokenizer.json", "config.json"} <= set(pins["files"])
    assert (
        pins["source"]["sha256"]
        == json.loads((prepared_model_dir / MANIFEST).read_text())["source"]["sha256"]
    )
    lm = ReferenceLM.load(ReferenceLMConfig(model_path=str(prepared_model_dir), backend="onnxruntime"))
    artefacts = lm.describe()["artefacts"]
    assert artefacts["pinned"] is True
    # onnxruntime hashes the graph and the small files, not the torch weights.
    assert artefacts["hashed_files"] == artefacts["files"] - 1
    print(f"reference model pins checked: {artefacts}")


@pytest.mark.model
def test_a_flipped_byte_in_the_prepared_model_refuses_the_load(
    prepared_model_dir: Path, tmp_path: Path
) -> None:
    from firewall.models.reference_lm import ReferenceLM, ReferenceLMConfig

    folder = _copy_prepared(prepared_model_dir, tmp_path / "m")
    config = ReferenceLMConfig(model_path=str(folder), backend="onnxruntime")
    _flip(folder / "tokenizer.json", 5000)
    with pytest.raises(ArtefactMismatch) as info:
        ReferenceLM.load(config)
    assert (info.value.problem, info.value.file) == ("sha256", "tokenizer.json")
    assert "models prepare --force" in str(info.value)


@pytest.mark.model
def test_a_prepared_model_without_pins_is_refused_then_pinned_by_prepare(
    prepared_model_dir: Path, tmp_path: Path
) -> None:
    from firewall.models.cache import DEFAULT_MODEL_ID
    from firewall.models.prepare import ensure_prepared
    from firewall.models.reference_lm import ReferenceLM, ReferenceLMConfig

    folder = _copy_prepared(prepared_model_dir, tmp_path / "models" / DEFAULT_MODEL_ID)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    del manifest[SECTION]
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    config = ReferenceLMConfig(cache_dir=str(tmp_path), backend="onnxruntime")
    with pytest.raises(ArtefactMismatch, match="older release") as info:
        ReferenceLM.load(config)
    assert info.value.problem == "no_manifest"
    messages: list[str] = []
    assert ensure_prepared(tmp_path, messages.append) == folder  # re-checked and pinned, not converted
    assert any("pinned" in m for m in messages)
    assert read_pins(folder) is not None
    assert ReferenceLM.load(config).describe()["artefacts"]["pinned"] is True
    (folder / "added_file.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ArtefactMismatch, match=r"added_file\.json"):
        ReferenceLM.load(config)


@pytest.mark.model
async def test_perplexity_detector_stays_not_ready_on_a_mismatch(
    prepared_model_dir: Path, tmp_path: Path
) -> None:
    from detectors.perplexity import PerplexityDetector, PerplexityParams

    folder = _copy_prepared(prepared_model_dir, tmp_path / "m", copied=("config.json",))
    _flip(folder / "config.json", 10)
    det = PerplexityDetector(
        "perplexity", PerplexityParams(model={"model_path": str(folder)}, prepare_if_missing=False)
    )
    with pytest.raises(ArtefactMismatch):
        await det.start()
    assert not det.ready
    assert det.load_reason == "artefact_mismatch"
    assert det.error is not None
    assert "config.json" in det.error
    assert det.describe()["load_reason"] == "artefact_mismatch"
