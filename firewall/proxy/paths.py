"""Refuse request paths that servers and routers read differently.

The firewall picks a request's screening rules by its path; the model server picks
its handler by the same path after its own decoding. A path they could name
differently lets a prompt reach a model endpoint through a path the firewall did
not recognise. Measured: uvicorn decodes ``/v1/chat/completions%0A`` to a path
ending in a line feed and Starlette still routes it to the chat handler, while the
firewall saw an unknown path. Refused here, before any route is matched:

- control characters (``%00``-``%1F``, ``%7F``, raw or percent-encoded) anywhere;
- dot segments (``/./``, ``/../``, or their encodings ``%2e``): some servers
  resolve them, others do not;
- backslashes (``\\`` or ``%5C``): some servers treat them as ``/``.

Ordinary paths pass in one scan of a short string.
"""

from __future__ import annotations

import re

from firewall.core.errors import UnsafePath

__all__ = ["check_path"]

_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_ENCODED_UNSAFE = re.compile(r"%(?:[01][0-9a-fA-F]|7[fF]|5[cC])")


def check_path(raw_path: str, path: str) -> None:
    """Raise :class:`UnsafePath` for a request path that could name two routes.

    ``raw_path`` is the request target as sent (query included), ``path`` its decoded path.
    """
    raw = raw_path.partition("?")[0]
    if "%" not in raw and "\\" not in raw and "/." not in raw and raw.isprintable() and raw == path:
        return  # the usual API path: nothing encoded, nothing to resolve (about 0.3 us)
    if _UNSAFE_CHARS.search(path) or _UNSAFE_CHARS.search(raw) or _ENCODED_UNSAFE.search(raw):
        raise UnsafePath("Request path contains control characters or backslashes.")
    # Checked on the path as sent too: the HTTP layer may have resolved the dots already,
    # while the request goes upstream as sent.
    if "%2e" in raw.lower() or _has_dot_segment(raw) or _has_dot_segment(path):
        raise UnsafePath("Request path contains '.' or '..' segments.")


def _has_dot_segment(path: str) -> bool:
    return "." in path and any(segment in (".", "..") for segment in path.split("/"))
