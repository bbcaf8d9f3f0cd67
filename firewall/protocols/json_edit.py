"""Remove characters from a JSON body without re-serialising it.

A ``sanitize`` verdict forwards the request the client sent, less the characters
it names (zero-width and format characters inside words, see
``docs/detectors/invisible_chars.md``). Re-serialising the parsed body would
change whitespace, key order, number spellings and escapes, all of which some
server or signature may depend on, so the bytes are edited in place: every
occurrence of a named character goes, whether the body spells it as UTF-8 or as a
``\\uXXXX`` escape (a surrogate pair for characters past U+FFFF), and nothing
else changes.

The characters a remedy names are never JSON syntax (they are not ASCII), so they
occur only inside strings and removing one leaves valid JSON. A removal can still
change what a key says (``"rol\\u200be"`` becomes ``"role"``): the caller parses
the edited body again and screens it as a new request.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["remove_json_chars"]


def _hex_any_case(unit: int) -> bytes:
    """Four hex digits of a UTF-16 unit, matching either letter case."""
    return b"".join(f"[{c}{c.upper()}]".encode() if c.isalpha() else c.encode() for c in f"{unit:04x}")


def _escape_pattern(cp: int) -> bytes:
    """The ``\\u`` escape of one code point (a surrogate pair past U+FFFF), as regex bytes."""
    if cp <= 0xFFFF:
        units = [cp]
    else:
        v = cp - 0x10000
        units = [0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF)]
    return b"".join(rb"\\u" + _hex_any_case(u) for u in units)


@lru_cache(maxsize=64)
def _pattern(chars: str) -> re.Pattern[bytes]:
    # An escaped backslash is matched first and kept, so ``\\u200b`` (a backslash and the
    # text "u200b") is never read as an escape.
    forms = [rb"\\\\"]
    for ch in sorted(set(chars)):
        forms.append(_escape_pattern(ord(ch)))
        forms.append(re.escape(ch.encode("utf-8")))
    return re.compile(b"|".join(forms))


def remove_json_chars(raw: bytes, chars: str) -> tuple[bytes, int]:
    """``raw`` without any occurrence of ``chars``, and how many were removed."""
    if not chars:
        return raw, 0
    removed = 0

    def drop(m: re.Match[bytes]) -> bytes:
        nonlocal removed
        if m.group() == b"\\\\":
            return m.group()
        removed += 1
        return b""

    return _pattern(chars).sub(drop, raw), removed
