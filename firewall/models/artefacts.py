"""Pinned artefacts: a sha256 manifest for every model folder the firewall loads.

Why this exists
---------------
A model is code the firewall executes on every request: an ONNX graph, a weights
file, a tokenizer. A swapped file (a compromised cache volume, a botched copy, a
"fixed" model dropped in by hand) changes what the detectors see without any
config change, and a detector scoring with a model other than the one that was
verified is worse than a detector that is down, because it looks healthy. So every
folder the firewall prepares or builds records the size and sha256 of each of its
files when it is written, and every load checks them first. A mismatch refuses the
load (:class:`ArtefactMismatch`, a :class:`~firewall.core.errors.DetectorUnavailable`):
the detector stays not ready and says which file, never what the file holds.

Format
------
The pins live in the folder's ``manifest.json``, under ``"artefacts"`` (the
reference model's manifest already carries its conversion record there; the demo
folders get a manifest holding only this section)::

    "artefacts": {
      "algorithm": "sha256",
      "kind": "reference-lm" | "strip-replica" | ...,
      "created": "2025-01-01T00:00:00Z",
      "tool": "trigger-firewall 0.9.0",
      "source": {...},                       # optional: where the bytes came from
      "files": {"model.onnx": {"size": 542661271, "sha256": "<64 hex>"}, ...}
    }

Every regular file under the folder is listed (relative POSIX paths), except
``manifest.json`` itself and the ``.<name>.partial-<pid>`` temporaries a writer
renames into place. The manifest is the root of trust: whoever can rewrite it can
re-pin anything, so it is replaced atomically and is what a signature would sign.

Checking
--------
:func:`verify_folder` refuses a folder when a pinned file is missing, a file is there
that the manifest does not list (loaders read files by name: an added
``tokenizer_config.json`` or ``model.onnx.data`` changes behaviour), a size differs,
or a sha256 differs. Sizes are always checked; hashes are checked for the files the
loader is about to read (``hash_filter``): the reference model's torch weights need
not be hashed when onnxruntime serves the graph. Hashing runs at about 1.2 GB/s
with OpenSSL's SHA-256 (the 543 MB graph plus tokenizer: ~0.45 s), once a load, in
the detector's loading thread, never on the event loop.

Packages' own weights (the MiniLM encoder) are checked against the ``RECORD`` file
that the installer wrote into the distribution's metadata (:func:`verify_distribution`):
pip already lists every installed file with its sha256, so a second manifest would
add nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path
from typing import Any, Final, Literal

from firewall.models.cache import MANIFEST, ModelUnavailable
from firewall.models.signing import SIGNATURE, SignatureError, required_public_key, verify_manifest

__all__ = [
    "ALGORITHM",
    "SECTION",
    "ArtefactMismatch",
    "Problem",
    "Verified",
    "filter_out",
    "listed_files",
    "pin_folder",
    "read_pins",
    "sha256_file",
    "unpinned",
    "verify_distribution",
    "verify_folder",
    "write_manifest",
    "write_standalone_manifest",
]

log = logging.getLogger("trigger_firewall.models.artefacts")

ALGORITHM: Final = "sha256"
SECTION: Final = "artefacts"
_BLOCK: Final = 1 << 20

#: What was wrong, as a bounded code (safe for a metric label or an audit field).
Problem = Literal["no_manifest", "missing", "unlisted", "size", "sha256", "unreadable", "signature"]


class ArtefactMismatch(ModelUnavailable):
    """A model folder does not match its pinned manifest: the load is refused.

    ``problem`` is one of :data:`Problem`, ``file`` the relative name of the file at
    fault (None for ``no_manifest``). The message names the folder, the file and what
    to run; never any of the file's content. ``reason`` (``artefact_mismatch``) is
    the bounded label the failure is counted under.
    """

    reason = "artefact_mismatch"

    def __init__(
        self,
        folder: Path,
        problem: Problem,
        detail: str,
        *,
        file: str | None = None,
        fix: str,
        detector: str = "reference_lm",
    ) -> None:
        where = f"{folder}/{file}" if file else str(folder)
        super().__init__(f"artefact check failed: {where}: {detail}; {fix}", detector=detector)
        self.folder = folder
        self.problem = problem
        self.file = file


@dataclass(frozen=True, slots=True)
class Verified:
    """What :func:`verify_folder` checked: file count, bytes hashed and the time it took."""

    files: int
    hashed_files: int
    hashed_bytes: int
    seconds: float
    kind: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "pinned": True,
            "kind": self.kind,
            "files": self.files,
            "hashed_files": self.hashed_files,
            "hashed_mb": round(self.hashed_bytes / 1e6, 1),
            "seconds": round(self.seconds, 3),
        }


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (constant memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _skipped(relative: Path) -> bool:
    """Writers' temporaries (``.x.partial-<pid>``): not part of the model, renamed or removed."""
    return any(part.startswith(".") and ".partial-" in part for part in relative.parts)


def listed_files(folder: Path) -> list[str]:
    """Every regular file under ``folder`` that a manifest must list, as sorted POSIX paths.

    Symbolic links are followed (the bytes are what matters, not where they live);
    ``manifest.json`` at the top and writers' temporaries are left out.
    """
    out: list[str] = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if relative.as_posix() in (MANIFEST, SIGNATURE) or _skipped(relative) or not path.is_file():
            continue
        out.append(relative.as_posix())
    return sorted(out)


def _tool() -> str:
    try:
        return f"trigger-firewall {version('trigger-firewall')}"
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "trigger-firewall (unknown version)"


def pin_folder(folder: Path, *, kind: str, source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file of ``folder`` and return the manifest's ``artefacts`` section (not written)."""
    files = {}
    for name in listed_files(folder):
        path = folder / name
        files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    section: dict[str, Any] = {
        "algorithm": ALGORITHM,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tool": _tool(),
        "files": files,
    }
    if source:
        section["source"] = dict(source)
    return section


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Replace ``folder/manifest.json`` atomically: a reader sees the old one or the new one.

    Written to a temporary name in the same folder, flushed, made world-readable (a
    server running as another user must read it) and renamed over the old file.
    """
    partial = folder / f".{MANIFEST}.partial-{os.getpid()}"
    try:
        with partial.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps(manifest, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        partial.chmod(0o644)
        os.replace(partial, folder / MANIFEST)
    finally:
        partial.unlink(missing_ok=True)


def write_standalone_manifest(
    folder: Path, *, kind: str, source: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Pin a folder that has no manifest of its own (a demo classifier, a user's replica).

    Writes ``{"schema": 1, "kind": kind, "artefacts": {...}}`` and returns it. Call it
    last, once every file of the folder is written: anything written later is unlisted
    and refuses the load.
    """
    manifest = {"schema": 1, "kind": kind, SECTION: pin_folder(folder, kind=kind, source=source)}
    write_manifest(folder, manifest)
    return manifest


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_pins(folder: Path) -> dict[str, Any] | None:
    """The ``artefacts`` section of ``folder/manifest.json``, or None when there is none.

    A section that is not well formed (another algorithm, files without a size or a
    64-digit hash) reads as None too: the caller refuses it as unpinned.
    """
    manifest = _read_json(folder / MANIFEST)
    section = manifest.get(SECTION) if manifest else None
    if not isinstance(section, dict) or section.get("algorithm") != ALGORITHM:
        return None
    files = section.get("files")
    if not isinstance(files, dict) or not files:
        return None
    for entry in files.values():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
            and len(entry["sha256"]) == 64
        ):
            return None
    return section


def verify_folder(
    folder: Path,
    *,
    fix: str,
    detector: str = "reference_lm",
    hash_filter: Callable[[str], bool] | None = None,
    pins: Mapping[str, Any] | None = None,
    signed: bool = True,
) -> Verified:
    """Check ``folder`` against its pinned manifest; raise :class:`ArtefactMismatch` if it differs.

    ``fix`` is the command the message tells the operator to run (re-prepare, rebuild).
    ``hash_filter(name)`` says which files are hashed (default: all); the others are
    checked by size only. ``pins`` overrides the manifest read from the folder.
    Missing, unlisted and wrong-sized files are looked for before any hashing, so the
    cheap refusals come first. With ``$TRIGGER_FIREWALL_MODEL_PUBLIC_KEY`` set, the
    folder's manifest must also be signed for that key (:mod:`firewall.models.signing`);
    ``signed=False`` checks the pins only (``models sign`` checks a folder before it signs it).
    """
    started = time.perf_counter()
    public_key = required_public_key() if signed else None
    if public_key is not None and pins is None:
        try:
            verify_manifest(folder, public_key)
        except SignatureError as exc:
            raise ArtefactMismatch(
                folder,
                "signature",
                str(exc),
                file=SIGNATURE,
                fix="the publisher signs the pinned manifest: trigger-firewall models sign",
                detector=detector,
            ) from exc
    section = pins if pins is not None else read_pins(folder)
    if section is None:
        raise ArtefactMismatch(
            folder,
            "no_manifest",
            "no sha256 pins in manifest.json (written by an older release, or not prepared by the firewall)",
            fix=fix,
            detector=detector,
        )
    files: Mapping[str, Any] = section["files"]
    present = set(listed_files(folder))
    for name in sorted(files):
        if name not in present:
            raise ArtefactMismatch(
                folder, "missing", "pinned file is missing", file=name, fix=fix, detector=detector
            )
    extra = sorted(present - set(files))
    if extra:
        raise ArtefactMismatch(
            folder,
            "unlisted",
            "file is not in the pinned manifest",
            file=extra[0],
            fix=fix,
            detector=detector,
        )
    for name in sorted(files):
        size = (folder / name).stat().st_size
        if size != files[name]["size"]:
            raise ArtefactMismatch(
                folder,
                "size",
                f"{size} bytes, pinned {files[name]['size']}",
                file=name,
                fix=fix,
                detector=detector,
            )
    hashed = hashed_bytes = 0
    for name in sorted(files):
        if hash_filter is not None and not hash_filter(name):
            continue
        try:
            digest = sha256_file(folder / name)
        except OSError as exc:
            raise ArtefactMismatch(
                folder, "unreadable", f"cannot read: {exc.strerror}", file=name, fix=fix, detector=detector
            ) from exc
        if digest != files[name]["sha256"]:
            raise ArtefactMismatch(
                folder,
                "sha256",
                "sha256 differs from the pinned manifest (the file changed after it was pinned)",
                file=name,
                fix=fix,
                detector=detector,
            )
        hashed += 1
        hashed_bytes += files[name]["size"]
    kind = section.get("kind")
    return Verified(
        len(files),
        hashed,
        hashed_bytes,
        time.perf_counter() - started,
        kind if isinstance(kind, str) else None,
    )


def _record_digest(value: str) -> str:
    """RECORD's ``sha256=<urlsafe base64, unpadded>`` value as hex."""
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def verify_distribution(
    package: str,
    folder: Path,
    *,
    fix: str,
    detector: str,
    known: Mapping[str, str] | None = None,
) -> Verified:
    """Check a model folder shipped inside an installed distribution against its ``RECORD``.

    Every file under ``folder`` must be listed in the installer's RECORD with a
    sha256 and size, and match both; ``known`` (relative name -> hex sha256) adds
    digests pinned in the firewall's own source for the pinned package version, so
    an installed wheel that differs from the one the firewall was tested with is
    refused even when its RECORD is consistent with it.
    """
    started = time.perf_counter()
    try:
        dist = distribution(package)
    except PackageNotFoundError as exc:
        raise ArtefactMismatch(
            folder, "no_manifest", f"package {package} is not installed", fix=fix, detector=detector
        ) from exc
    entries: dict[Path, tuple[str, int]] = {}
    for entry in dist.files or ():
        if entry.hash is None or entry.hash.mode != ALGORITHM or entry.size is None:
            continue
        entries[Path(str(entry.locate())).resolve()] = (_record_digest(entry.hash.value), entry.size)
    if not entries:
        raise ArtefactMismatch(
            folder, "no_manifest", f"{package} has no RECORD with sha256 hashes", fix=fix, detector=detector
        )
    names = listed_files(folder)
    hashed_bytes = 0
    for name in names:
        path = folder / name
        pinned = entries.get(path.resolve())
        if pinned is None:
            raise ArtefactMismatch(
                folder,
                "unlisted",
                f"file is not in {package}'s RECORD",
                file=name,
                fix=fix,
                detector=detector,
            )
        digest, size = pinned
        if path.stat().st_size != size:
            raise ArtefactMismatch(
                folder,
                "size",
                f"{path.stat().st_size} bytes, RECORD says {size}",
                file=name,
                fix=fix,
                detector=detector,
            )
        actual = sha256_file(path)
        if actual != digest or (known is not None and name in known and actual != known[name]):
            raise ArtefactMismatch(
                folder,
                "sha256",
                f"sha256 differs from {package}'s RECORD or the digest pinned for it",
                file=name,
                fix=fix,
                detector=detector,
            )
        hashed_bytes += size
    for name in sorted(known or {}):
        if name not in names:
            raise ArtefactMismatch(
                folder, "missing", "pinned file is missing", file=name, fix=fix, detector=detector
            )
    return Verified(len(names), len(names), hashed_bytes, time.perf_counter() - started, f"package:{package}")


def unpinned(folder: Path, what: str, *, detector: str = "reference_lm") -> dict[str, Any]:
    """Log that ``folder`` is loaded without pins (an operator's own model) and say so in describe().

    While signatures are required (``$TRIGGER_FIREWALL_MODEL_PUBLIC_KEY``), an unpinned folder
    cannot be signed and is refused instead.
    """
    if required_public_key() is not None:
        raise ArtefactMismatch(
            folder,
            "no_manifest",
            "no sha256 pins, and signed pins are required ($TRIGGER_FIREWALL_MODEL_PUBLIC_KEY)",
            fix="pin it (models pin) and have the publisher sign it (models sign)",
            detector=detector,
        )
    log.warning(
        "%s: %s has no sha256 pins; loading it unchecked (pin it with `trigger-firewall models pin %s`)",
        what,
        folder,
        folder,
    )
    return {"pinned": False}


def filter_out(suffixes: Iterable[str], keep: Iterable[str] = ()) -> Callable[[str], bool]:
    """A ``hash_filter`` hashing every file except those ending in ``suffixes`` (but ``keep``)."""
    endings, kept = tuple(suffixes), frozenset(keep)
    return lambda name: name in kept or not name.endswith(endings)
