"""Signed manifests: who pinned a model folder, not only what it held when pinned.

Why this exists
---------------
The sha256 pins (:mod:`firewall.models.artefacts`) prove that a folder still holds the bytes
its ``manifest.json`` names. They cannot prove who wrote that manifest: whoever can write the
cache volume can rebuild a model and re-pin it. A signature over the manifest closes that
gap. The model's publisher (a platform team's build job) signs the manifest with a private key
it keeps; every firewall that loads the folder holds only the public key and refuses a folder
whose manifest is unsigned or signed by anyone else. Since the manifest pins every file, the
signature covers the whole folder.

How
---
The signature is a Sigstore bundle written by OpenSSF's ``model-signing`` library (the
``signing`` extra), with an elliptic-curve key pair (no network, no identity provider), in
``manifest.sig`` beside ``manifest.json``. ``trigger-firewall models sign DIR --private-key
KEY.pem`` writes it; ``models verify DIR --public-key PUB.pem`` checks it with the pins.

At load time: with ``$TRIGGER_FIREWALL_MODEL_PUBLIC_KEY`` set to a public key file, every
pinned folder a detector loads must carry a valid ``manifest.sig`` for that key, or the load
is refused like any other artefact mismatch (the detector stays not ready; the audit and the
error metric say ``artefact_mismatch``). Without the variable, signatures are not required:
the pins alone are checked, as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

from firewall.models.cache import MANIFEST

__all__ = [
    "PUBLIC_KEY_ENV",
    "SIGNATURE",
    "SignatureError",
    "required_public_key",
    "sign_manifest",
    "verify_manifest",
]

#: The signature file, beside the manifest it signs (never itself pinned).
SIGNATURE: Final = "manifest.sig"
#: A public key file: when set, every pinned folder a detector loads must be signed for it.
PUBLIC_KEY_ENV: Final = "TRIGGER_FIREWALL_MODEL_PUBLIC_KEY"


class SignatureError(ValueError):
    """A manifest's signature is missing, unreadable or not made by the expected key."""


def required_public_key() -> Path | None:
    """The public key every load must verify against, from :data:`PUBLIC_KEY_ENV` (or None)."""
    value = os.environ.get(PUBLIC_KEY_ENV, "").strip()
    return Path(value) if value else None


def _library() -> tuple[Any, Any]:
    try:
        from model_signing import signing, verifying
    except ImportError as exc:  # the optional extra is not installed
        raise SignatureError(
            "signatures need the 'signing' extra (pip install 'trigger-firewall[signing]')"
        ) from exc
    return signing, verifying


def sign_manifest(folder: Path, private_key: Path, *, password: str | None = None) -> Path:
    """Sign ``folder``'s manifest with an elliptic-curve private key; returns the signature path."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise SignatureError(f"{manifest} does not exist: pin the folder first (models pin)")
    signing, _ = _library()
    signature = folder / SIGNATURE
    config = signing.Config().use_elliptic_key_signer(
        private_key=private_key, password=password.encode() if password else None
    )
    config.sign(manifest, signature)
    return signature


def verify_manifest(folder: Path, public_key: Path) -> None:
    """Check that ``folder``'s manifest is signed by ``public_key``'s owner; raise
    :class:`SignatureError` with a message that names the file, never its content."""
    manifest, signature = folder / MANIFEST, folder / SIGNATURE
    if not signature.is_file():
        raise SignatureError(f"{signature} is missing: the manifest is not signed")
    if not public_key.is_file():
        raise SignatureError(f"public key {public_key} does not exist")
    _, verifying = _library()
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(manifest, signature)
    except Exception as exc:  # the library raises ValueError and its own errors alike
        raise SignatureError(
            f"{signature} does not verify against {public_key} (the manifest changed after it was "
            "signed, or another key signed it)"
        ) from exc
