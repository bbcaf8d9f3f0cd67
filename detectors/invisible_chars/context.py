"""Context rules: when an invisible character is legitimate next to its neighbours.

Why a module of its own: every candidate character is judged from the one or two
characters around it (a ZWNJ between Persian letters, a VS-16 after an emoji, a
number sign before digits, a subdivision flag's tag letters). These predicates only
read the tables of :mod:`detectors.invisible_chars.tables`; keeping them here leaves
the detector with the run, pairing and weighting logic.
"""

from __future__ import annotations

import unicodedata

from detectors.invisible_chars.tables import (
    _EMOJI,
    _FLAG_SPEC_RE,
    _HAN,
    _MONGOLIAN,
    _NUMBER_SIGNS,
    _SCRIPT_FORMAT,
    CANCEL_TAG,
    _Ranges,
)

__all__ = ["_script_format_ok", "_is_wordish", "_is_mark", "_vs_base_ok", "_script_context", "_flag_tag_spec"]


def _script_format_ok(cp: int, prev: str, nxt: str) -> bool:
    """Is a script-specific format character next to text of its own script?"""
    scripts = _SCRIPT_FORMAT.get(cp)
    if scripts is None:
        return False
    if cp in _NUMBER_SIGNS and nxt.isdigit():
        return True
    return scripts.has(prev) or scripts.has(nxt)


def _is_wordish(ch: str) -> bool:
    return bool(ch) and (ch.isalnum() or unicodedata.category(ch)[0] == "M")


def _is_mark(ch: str) -> bool:
    return bool(ch) and unicodedata.category(ch)[0] == "M"


def _vs_base_ok(vs: int, base: str) -> bool:
    """Is ``base`` a character that a single variation selector ``vs`` may follow?"""
    if not base:
        return False
    cp = ord(base)
    if 0x180B <= vs <= 0x180F:
        return cp in _MONGOLIAN
    if vs >= 0xE0100:
        return cp in _HAN  # ideographic variation sequences
    if cp in _EMOJI or base in "0123456789#*":
        return True  # emoji presentation, keycaps, slashed zero
    cat = unicodedata.category(base)
    # Standardized variants exist for symbols and for letters of CJK, Myanmar,
    # Phags-pa, Manichaean, Egyptian, ... but not for alphabets such as Latin.
    return cat[0] == "S" or (cat == "Lo" and cp >= 0x1000)


def _script_context(prev: str, nxt: str, scripts: _Ranges) -> bool:
    """A joiner is legitimate when a neighbour is in ``scripts`` and neither
    neighbour is a letter of some other script (so it is not hiding in a Latin word)."""
    prev_in = scripts.has(prev)
    next_in = scripts.has(nxt)
    if not (prev_in or next_in):
        return False
    if not prev_in and _is_wordish(prev):
        return False
    return next_in or not _is_wordish(nxt)


def _flag_tag_spec(text: str, i: int, j: int) -> str | None:
    """Decode ``text[i:j]`` (tags ending in CANCEL TAG) shaped like a subdivision flag."""
    if j - i < 2 or ord(text[j - 1]) != CANCEL_TAG:
        return None
    spec = "".join(chr(ord(text[k]) - 0xE0000) for k in range(i, j - 1))
    return spec if _FLAG_SPEC_RE.fullmatch(spec) else None
