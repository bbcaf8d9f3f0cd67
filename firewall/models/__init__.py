"""The embedded reference language model: preparation (conversion, cache) and its CLI.

Light to import: nothing here loads torch or onnxruntime. Preparation lives in
:mod:`firewall.models.prepare` (needs the ``prepare`` extra), the serving-time
runtime in :mod:`firewall.models.reference_lm`.
"""

from __future__ import annotations

from firewall.models.cache import (
    CACHE_ENV,
    DEFAULT_MODEL_ID,
    PREPARE_COMMAND,
    ModelUnavailable,
    cache_root,
    model_dir,
    read_manifest,
)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_MODEL_ID",
    "PREPARE_COMMAND",
    "ModelUnavailable",
    "cache_root",
    "model_dir",
    "read_manifest",
]
