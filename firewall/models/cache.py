"""Where prepared reference models live on disk, and how to read their manifest.

This module imports nothing heavy (no torch, no onnxruntime), so the server, the
``models info`` command and the runtime can all find a prepared model cheaply.

Layout (``ROOT`` is the cache root)::

    ROOT/models/<model-id>/manifest.json      written last: its presence means "complete"
    ROOT/models/<model-id>/model.onnx         per-token surprisal graph (onnxruntime)
    ROOT/models/<model-id>/model.safetensors  fp32 weights + config.json (torch backend)
    ROOT/models/<model-id>/tokenizer.json     the fast tokenizer (``tokenizers`` at run time)

``ROOT`` is ``$TRIGGER_FIREWALL_CACHE_DIR`` when set, else
``$XDG_CACHE_HOME/trigger-firewall`` (``~/.cache/trigger-firewall`` by default), so
one machine prepares once and every later run (CI included) reuses it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final

from firewall.core.errors import DetectorUnavailable

__all__ = [
    "CACHE_ENV",
    "DEFAULT_MODEL_ID",
    "MANIFEST",
    "PREPARE_COMMAND",
    "ModelUnavailable",
    "cache_root",
    "model_dir",
    "read_manifest",
]

CACHE_ENV: Final = "TRIGGER_FIREWALL_CACHE_DIR"
DEFAULT_MODEL_ID: Final = "smollm2-135m-instruct-q4_1"
MANIFEST: Final = "manifest.json"
PREPARE_COMMAND: Final = "trigger-firewall models prepare"


class ModelUnavailable(DetectorUnavailable):
    """The reference model is not prepared, or cannot be loaded with what is installed.

    A subclass of :class:`~firewall.core.errors.DetectorUnavailable`, so a detector that
    hits it is simply not ready and the route's fail mode applies. The message always
    says what to run or install.
    """

    def __init__(self, message: str, *, detector: str = "reference_lm") -> None:
        super().__init__(detector, message)


def cache_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``explicit``, else ``$TRIGGER_FIREWALL_CACHE_DIR``, else the XDG cache."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "trigger-firewall"


def model_dir(model_id: str = DEFAULT_MODEL_ID, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder one prepared model lives in."""
    return cache_root(root) / "models" / model_id


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a prepared model folder, or None when it is absent or unreadable.

    A torn or foreign file reads as None (not prepared), never as an exception:
    the caller then prepares again or reports the model as unavailable.
    """
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != 1:
        return None
    return data
