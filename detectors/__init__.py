"""Detector registry: stable type names mapped to detector classes.

Built-ins are a static map (start-up never scans for them); third-party detectors
register under the ``trigger_firewall.detectors`` entry-point group and are looked
up only when a config names a type the built-ins do not have.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detectors.base import Detector

__all__ = [
    "ENTRY_POINT_GROUP",
    "UnknownDetectorError",
    "builtin_kinds",
    "load_detector_class",
    "register_detector",
]

ENTRY_POINT_GROUP = "trigger_firewall.detectors"

# kind -> "module:Class"; imported lazily so heavy optional dependencies load only when used.
_BUILTINS: dict[str, str] = {
    "invisible_chars": "detectors.invisible_chars.detector:InvisibleCharsDetector",
    "insecure_code": "detectors.insecure_code.detector:InsecureCodeDetector",
    "rare_tokens": "detectors.rare_tokens.detector:RareTokensDetector",
    "strip": "detectors.strip.detector:StripDetector",
    "perplexity": "detectors.perplexity:PerplexityDetector",
    "context_tags": "detectors.context_tags:ContextTagsDetector",
    "counterfactual": "detectors.counterfactual.detector:CounterfactualDetector",
    "recurring_sentences": "detectors.recurring_sentences:RecurringSentencesDetector",
}


# Detectors registered in-process (embedding applications, tests); checked after the built-ins.
_REGISTERED: dict[str, type[Detector[Any]]] = {}


class UnknownDetectorError(LookupError):
    """A config names a detector type that is neither built in nor registered."""


def builtin_kinds() -> list[str]:
    return sorted(_BUILTINS)


def register_detector(kind: str, cls: type[Detector[Any]]) -> None:
    """Register a detector class in-process, for applications that embed the firewall.

    Packaged third-party detectors should use the entry-point group instead.
    """
    if kind in _BUILTINS:
        raise ValueError(f"{kind!r} is a built-in detector type")
    _REGISTERED[kind] = cls


def _import(target: str) -> type[Detector[Any]]:
    module_name, _, attr = target.partition(":")
    cls: type[Detector[Any]] = getattr(importlib.import_module(module_name), attr)
    return cls


def load_detector_class(kind: str) -> type[Detector[Any]]:
    """Return the class registered for ``kind``; raise :class:`UnknownDetectorError`."""
    if kind in _BUILTINS:
        return _import(_BUILTINS[kind])
    if kind in _REGISTERED:
        return _REGISTERED[kind]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == kind:
            loaded: type[Detector[Any]] = ep.load()
            return loaded
    known = ", ".join(builtin_kinds())
    raise UnknownDetectorError(f"unknown detector type {kind!r} (built-in types: {known})")
