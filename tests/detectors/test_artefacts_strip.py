"""STRIP's replica is pinned by ``demo build`` and checked at load: one flipped byte, the detector is down.

A small demo model is built once per session (a 1,500-sentence slice of MR, a few seconds;
the ``strip_replica`` fixtures of tests/conftest.py) into a temporary folder; each test works
on its own copy, so nothing is read from or written to the user cache.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from detectors.strip.detector import StripDetector, StripParams
from firewall.core.types import Phase, Sample, Segment
from firewall.models.artefacts import SECTION, ArtefactMismatch, read_pins
from firewall.models.cache import MANIFEST

pytest.importorskip("onnxruntime")


@pytest.fixture
def built(strip_replica_build: Path) -> Path:
    return strip_replica_build


@pytest.fixture
def demo(strip_replica: Path) -> Path:
    return strip_replica


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


async def _start(folder: Path | None) -> StripDetector:
    det = StripDetector("strip", StripParams(model_dir=str(folder) if folder else None, n_perturbations=16))
    await det.start()
    return det


def test_demo_build_pins_every_file(built: Path) -> None:
    pins = read_pins(built)
    assert pins is not None
    assert pins["kind"] == "strip-replica"
    assert pins["source"]["model"] == "tfidf"
    assert set(pins["files"]) == {"model.onnx", "vectorizer.json", "pool.json", "metadata.json"}


async def test_an_untouched_build_loads(demo: Path) -> None:
    det = await _start(demo)
    try:
        assert det.ready
        assert det.load_error is None
        artefacts = det.describe()["artefacts"]
        assert artefacts["pinned"] is True
        assert artefacts["files"] == 4
        [finding] = await det.score([Sample("r1", Phase.INPUT, "t", (Segment("user", "a fine film"),))])
        assert finding.scored
    finally:
        await det.close()


@pytest.mark.parametrize("name", ["model.onnx", "vectorizer.json", "metadata.json"])
async def test_one_flipped_byte_keeps_the_detector_not_ready(demo: Path, name: str) -> None:
    _flip(demo / name, 200)
    det = StripDetector("strip", StripParams(model_dir=str(demo)))
    with pytest.raises(ArtefactMismatch) as info:
        await det.start()
    assert (info.value.problem, info.value.file) == ("sha256", name)
    assert not det.ready
    assert det.load_reason == "artefact_mismatch"
    assert det.load_error is not None
    assert name in det.load_error
    assert str(demo) in det.load_error
    described = det.describe()
    assert described["load_reason"] == "artefact_mismatch"
    assert name in described["load_error"]
    [finding] = await det.score([Sample("r1", Phase.INPUT, "t", (Segment("user", "a film"),))])
    assert not finding.scored  # the route's fail mode decides, as for any detector that is down


async def test_a_missing_or_added_file_is_refused(demo: Path) -> None:
    (demo / "pool.json").unlink()
    det = StripDetector("strip", StripParams(model_dir=str(demo)))
    with pytest.raises(ArtefactMismatch, match=r"pool\.json") as missing:
        await det.start()
    assert missing.value.problem == "missing"
    shutil.copy(demo / "vectorizer.json", demo / "pool.json")  # right name, wrong content
    with pytest.raises(ArtefactMismatch) as swapped:
        await det.start()
    assert swapped.value.problem in ("size", "sha256")


async def test_an_unpinned_folder(demo: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    # The default folder (and any folder with a manifest) must be pinned: an older release's build.
    manifest = json.loads((demo / MANIFEST).read_text(encoding="utf-8"))
    del manifest[SECTION]
    (demo / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    monkeypatch.setenv("TRIGGER_FIREWALL_DEMO_MODEL", str(demo))
    det = StripDetector("strip", StripParams())
    with pytest.raises(ArtefactMismatch, match="demo build") as info:
        await det.start()
    assert info.value.problem == "no_manifest"
    # An operator's own folder with no manifest at all loads, with a warning, and can be pinned.
    (demo / MANIFEST).unlink()
    det = await _start(demo)
    try:
        assert det.ready
        assert det.describe()["artefacts"] == {"pinned": False}
        assert "no sha256 pins" in caplog.text
    finally:
        await det.close()
    from firewall.cli.models import add_models_parser, run_models

    parser = argparse.ArgumentParser(prog="trigger-firewall")
    add_models_parser(parser.add_subparsers(dest="command", required=True))
    assert run_models(parser.parse_args(["models", "pin", str(demo), "--kind", "strip-replica"])) == 0
    assert run_models(parser.parse_args(["models", "verify", str(demo)])) == 0
    _flip(demo / "model.onnx", 300)
    assert run_models(parser.parse_args(["models", "verify", str(demo)])) == 1
    with pytest.raises(ArtefactMismatch, match="models pin"):
        await _start(demo)


def test_demo_build_if_missing(demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from firewall.cli.demo import _keep_existing

    assert _keep_existing(demo) == 0
    assert "match their sha256 pins" in capsys.readouterr().err
    _flip(demo / "pool.json", 50)
    assert _keep_existing(demo) == 2
    assert "pool.json" in capsys.readouterr().err
    (demo / MANIFEST).unlink()
    assert _keep_existing(demo) is None  # an older release's build: rebuilt
