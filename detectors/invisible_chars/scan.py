"""Per-segment scanning machinery of the invisible-character detector.

Why a module of its own: the detector walks each non-ASCII segment with precompiled
regular expressions (two builds, BMP-only and full, chosen per segment) and keeps
its scratch state in a ``_Seg``: the events found, the bidi controls to pair, the
analysis budget and the cached letter counts that say which script dominates the
text around a word. Both are plumbing the scoring rules in
:mod:`detectors.invisible_chars.detector` use but do not define.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from detectors.invisible_chars.confusables import _CONTEXT_BLOCK, _GROUP_RANGES, _NONLATIN_GROUPS, G_LATIN
from detectors.invisible_chars.tables import _CLASS_OF, _RTL, R_FLOOD, W_FLOOD, _cls

__all__ = ["_Patterns", "_PATTERNS_BMP", "_PATTERNS_FULL", "_patterns_for", "_Event", "_Seg"]

# --------------------------------------------------------------------------- patterns


class _Patterns:
    """The precompiled regular expressions, in two builds.

    CPython's regex engine tests a character class with a fast bitmap for the BMP
    but a linear list for astral ranges, which makes classes with astral ranges
    several times slower. Most non-ASCII text has no astral characters at all, so
    each segment uses the BMP build unless it contains one (cheap to check).
    """

    __slots__ = (
        "group_letter",
        "invisible",
        "latin",
        "latin_switch",
        "nonlatin",
        "nonlatin_switch",
        "other_nonlatin",
        "rtl",
    )

    def __init__(self, bmp_only: bool) -> None:
        def cls(ranges: Iterable[tuple[int, int]]) -> str:
            if bmp_only:
                ranges = [(lo, min(hi, 0xFFFF)) for lo, hi in ranges if lo <= 0xFFFF]
            return _cls(ranges)

        def group_cls(groups: Iterable[str]) -> str:
            return cls(r for g in groups for r in _GROUP_RANGES[g])

        candidates = cls((cp, cp) for cp in _CLASS_OF)
        # One maximal run ("cluster") of adjacent candidates per match. "[c][c]*"
        # rather than "[c]+": a pattern that starts with a bare class lets the
        # engine skip non-candidates quickly (about twice as fast on CPython 3.11).
        self.invisible = re.compile(f"[{candidates}][{candidates}]*")
        self.rtl = re.compile(f"[{cls(_RTL.ranges)}]")
        latin = group_cls([G_LATIN])
        nonlatin = group_cls(_NONLATIN_GROUPS)
        self.latin = re.compile(f"[{latin}]")
        self.nonlatin = re.compile(f"[{nonlatin}]")
        # One letter of a group: counted near a word to find the text's script.
        self.group_letter: dict[str, re.Pattern[str]] = {
            g: self.latin if g == G_LATIN else re.compile(f"[{group_cls([g])}]") for g in _GROUP_RANGES
        }
        # Adjacent Latin / non-Latin letters: the shape of nearly every spoof.
        self.latin_switch = re.compile(f"[{latin}][{nonlatin}]|[{nonlatin}][{latin}]")
        # For each non-Latin group: a letter of any *other* non-Latin group.
        others = {g: group_cls(h for h in _NONLATIN_GROUPS if h != g) for g in _NONLATIN_GROUPS}
        self.other_nonlatin: dict[str, re.Pattern[str]] = {
            g: re.compile(f"[{others[g]}]") for g in _NONLATIN_GROUPS
        }
        # Adjacent letters of two different non-Latin groups (a Greek omicron in a
        # Cyrillic word).
        self.nonlatin_switch = re.compile(
            "|".join(f"[{group_cls([g])}][{others[g]}]" for g in _NONLATIN_GROUPS)
        )


_PATTERNS_BMP = _Patterns(bmp_only=True)
_PATTERNS_FULL = _Patterns(bmp_only=False)


def _patterns_for(text: str) -> _Patterns:
    # UTF-16 is longer than the text exactly when the text has astral characters
    # (lone surrogates pass through unchanged); encoding is about 1 ns a character.
    if len(text.encode("utf-16-le", "surrogatepass")) == 2 * len(text):
        return _PATTERNS_BMP
    return _PATTERNS_FULL


# --------------------------------------------------------------------------- segment state


class _Event(NamedTuple):
    weight: float
    reason: str
    segment: int
    start: int
    end: int


class _Seg:
    """Scratch state for scanning one segment."""

    __slots__ = (
        "bidi",
        "blocks",
        "budget",
        "events",
        "index",
        "pat",
        "rtl",
        "stopped",
        "strong",
        "text",
        "top",
    )

    def __init__(self, index: int, text: str, budget: int) -> None:
        self.index = index
        self.text = text
        self.pat = _patterns_for(text)
        self.budget = budget  # analyses left for the whole sample
        self.events: list[_Event] = []
        self.bidi: list[int] = []  # embeddings, overrides, isolates, PDF, PDI
        self.blocks: dict[str, dict[int, int]] = {}  # group -> context block -> letters
        self.rtl: bool | None = None  # does the segment contain RTL letters (lazy)
        self.strong = 0  # events with weight >= W_STRAY
        self.top = 0.0  # highest weight so far
        self.stopped = False  # saturated or out of budget: scan no further

    def has_rtl(self) -> bool:
        if self.rtl is None:
            self.rtl = self.pat.rtl.search(self.text) is not None
        return self.rtl

    def dominates(self, group: str, other: str, start: int, end: int) -> bool:
        """Do letters of ``group`` outnumber those of ``other`` around ``text[start:end]``?

        Counted over the word's ``_CONTEXT_BLOCK``-character blocks and one block
        each side, leaving the word itself out; ties (an empty context included)
        go to Latin. Block counts are cached, so a segment costs at most one
        regex pass per group however many words ask.
        """
        first = max(0, start // _CONTEXT_BLOCK - 1)
        last = min((len(self.text) - 1) // _CONTEXT_BLOCK, (end - 1) // _CONTEXT_BLOCK + 1)
        mine = self._letters(group, first, last, start, end)
        theirs = self._letters(other, first, last, start, end)
        return mine > theirs or (mine == theirs and group == G_LATIN)

    def _letters(self, group: str, first: int, last: int, start: int, end: int) -> int:
        """Letters of ``group`` in blocks ``first..last``, less those in ``text[start:end]``."""
        rx = self.pat.group_letter[group]
        text = self.text
        cache = self.blocks.setdefault(group, {})
        total = -len(rx.findall(text, start, end))
        for k in range(first, last + 1):
            n = cache.get(k)
            if n is None:
                lo = k * _CONTEXT_BLOCK
                n = cache[k] = len(rx.findall(text, lo, lo + _CONTEXT_BLOCK))
            total += n
        return total

    def spend(self, at: int) -> bool:
        """Take one unit of the analysis budget; on exhaustion report the rest."""
        if self.budget > 0:
            self.budget -= 1
            return True
        self.events.append(_Event(W_FLOOD, R_FLOOD, self.index, at, len(self.text)))
        self.stopped = True
        return False
