"""Signed manifests: a folder is loaded only when its pins are signed by the expected key.

The signatures are real (OpenSSF model-signing, an elliptic-curve key pair made per test), and
so is the folder a detector loads: STRIP's demo replica (the ``strip_replica`` fixture of
tests/conftest.py, a copy per test). Nothing touches the user cache.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from detectors.strip.detector import StripDetector, StripParams
from firewall.models.artefacts import ArtefactMismatch, verify_folder, write_standalone_manifest
from firewall.models.cache import MANIFEST
from firewall.models.signing import PUBLIC_KEY_ENV, SIGNATURE, SignatureError, sign_manifest, verify_manifest

pytest.importorskip("model_signing", reason="signing needs the 'signing' extra (in the test group)")
pytest.importorskip("onnxruntime")


def _key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture
def demo(strip_replica: Path) -> Path:
    return strip_replica


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return _key_pair(tmp_path, "publisher")


async def _ready(folder: Path) -> bool:
    det = StripDetector("strip", StripParams(model_dir=str(folder), n_perturbations=16))
    try:
        await det.start()
    except ArtefactMismatch:
        return False
    try:
        return det.ready
    finally:
        await det.close()


async def test_a_signed_folder_loads_and_any_other_is_refused(
    demo: Path, keys: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private, public = keys
    monkeypatch.setenv(PUBLIC_KEY_ENV, str(public))
    # Pinned but not signed: refused, and the error names the signature file.
    det = StripDetector("strip", StripParams(model_dir=str(demo)))
    with pytest.raises(ArtefactMismatch) as unsigned:
        await det.start()
    assert (unsigned.value.problem, unsigned.value.file) == ("signature", SIGNATURE)
    assert not det.ready
    assert det.load_reason == "artefact_mismatch"

    sign_manifest(demo, private)
    assert (demo / SIGNATURE).is_file()
    assert await _ready(demo)  # the signature file itself is not an unlisted file

    # Signed by someone else: refused.
    other_private, _ = _key_pair(tmp_path, "attacker")
    sign_manifest(demo, other_private)
    assert not await _ready(demo)

    # Re-pinned by whoever can write the volume, after a change: the old signature no longer holds.
    sign_manifest(demo, private)
    (demo / "pool.json").write_text('["swapped"]', encoding="utf-8")
    write_standalone_manifest(demo, kind="strip-replica")
    with pytest.raises(ArtefactMismatch, match="does not verify") as repinned:
        verify_folder(demo, fix="rebuild")
    assert repinned.value.problem == "signature"


async def test_without_the_variable_signatures_are_not_required(demo: Path) -> None:
    assert await _ready(demo)


async def test_an_unpinned_folder_is_refused_while_signatures_are_required(
    demo: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    (demo / MANIFEST).unlink()
    assert await _ready(demo)  # an operator's own folder, loaded with a warning
    monkeypatch.setenv(PUBLIC_KEY_ENV, str(keys[1]))
    det = StripDetector("strip", StripParams(model_dir=str(demo)))
    with pytest.raises(ArtefactMismatch, match="signed pins are required") as info:
        await det.start()
    assert info.value.problem == "no_manifest"


def test_verify_manifest_says_what_is_wrong(demo: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = keys
    with pytest.raises(SignatureError, match="not signed"):
        verify_manifest(demo, public)
    sign_manifest(demo, private)
    verify_manifest(demo, public)
    with pytest.raises(SignatureError, match="does not exist"):
        verify_manifest(demo, tmp_path / "missing.pem")
    manifest = demo / MANIFEST
    manifest.write_bytes(manifest.read_bytes().replace(b'"sha256"', b'"sha256" ', 1))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(demo, public)


def test_the_cli_signs_and_verifies(
    demo: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from firewall.cli.models import add_models_parser, run_models

    private, public = keys
    parser = argparse.ArgumentParser(prog="trigger-firewall")
    add_models_parser(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        return run_models(parser.parse_args(["models", *argv]))

    assert run("verify", str(demo), "--public-key", str(public)) == 1
    assert "not signed" in capsys.readouterr().err
    assert run("sign", str(demo), "--private-key", str(private)) == 0
    assert run("verify", str(demo), "--public-key", str(public)) == 0
    assert "manifest signed for" in capsys.readouterr().out
    # A folder that no longer matches its pins is not signed: a signature vouches for the files.
    (demo / "pool.json").write_text('["swapped"]', encoding="utf-8")
    assert run("sign", str(demo), "--private-key", str(private)) == 1
    assert "pool.json" in capsys.readouterr().err


def test_a_publisher_host_that_requires_signatures_can_still_sign(
    demo: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from firewall.cli.models import add_models_parser, run_models

    private, public = keys
    monkeypatch.setenv(PUBLIC_KEY_ENV, str(public))
    parser = argparse.ArgumentParser(prog="trigger-firewall")
    add_models_parser(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        return run_models(parser.parse_args(["models", *argv]))

    assert run("verify", str(demo)) == 1  # unsigned: refused, as a load would
    assert "manifest is not signed" in capsys.readouterr().err
    assert run("sign", str(demo), "--private-key", str(private)) == 0  # signing needs no signature
    assert run("verify", str(demo)) == 0
    assert f"manifest signed for {public} (${PUBLIC_KEY_ENV})" in capsys.readouterr().out
