"""Segments split into chunks, and the records the rare-token detector's judging produces.

Why a module of its own: a segment is scored through a ``_Scan`` (its whitespace chunks,
their cached analyses, the code and markup masked out, sentence bounds found only around
candidates), and judging passes records between stages (``_Static`` per word, ``_Found``
per candidate in its sentence, ``_Hit`` per scored span). These data structures and the
text-region helpers are plumbing the scoring rules in :mod:`detectors.rare_tokens.detector`
use but do not define.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from collections.abc import Iterable
from itertools import islice
from typing import NamedTuple

from detectors.rare_tokens.tables import (
    _BARE_ATTR_RE,
    _CHUNK_RE,
    _CLOSERS,
    _CODE_CHAR_RE,
    _CODE_START_RE,
    _FOLD_DROP,
    _HTML_BARE_ATTRS,
    _HTML_TAGS,
    _INDENTED_RE,
    _MARKUP_RE,
    _ODD_WEIGHT,
    _SENTENCE_END,
    _TAG_RE,
    C_LOWER,
    C_MIXED,
    C_TITLE,
    C_UPPER,
    K_OTHER,
    K_WORD,
    T_CLAUSE,
    T_DOT,
    T_END,
    T_NONE,
)

__all__ = [
    "_Chunk", "_OTHER", "_Scan", "_OutOfBudget", "_Static", "_Found", "_Hit", "_case_of", "_trail_kind",
    "_odd_runs", "_blank_markup", "_fold", "_bare", "_FOLD_MAX", "_looks_like_code", "_shouting",
]  # fmt: skip

# --------------------------------------------------------------------------- chunks


class _Chunk(NamedTuple):
    """What one whitespace-separated chunk is (cached per distinct chunk string)."""

    kind: int  # K_*
    case: int  # C_* of the word
    z: float  # Zipf of the lower-cased word (best judged language); 0 if unknown
    word: str  # the lower-cased word without surrounding punctuation ("" if not a word)
    lead: bool  # punctuation before the word
    trail: int  # T_* punctuation after the word
    upper_first: bool  # starts with a capital, a digit or an opening bracket
    parts: tuple[tuple[int, int, str], ...]  # odd sub-words: (start, end, lower-case)
    compound: bool  # a hyphenated compound
    possessive: bool  # ends in "'s" or "s'"
    quoted: bool  # quotation marks on both sides
    jargon: bool  # identifier, number, acronym: counts towards the jargon share
    path: bool = False  # a word with a slash glued on ("cf/"): maybe a folder name


_OTHER = _Chunk(K_OTHER, C_MIXED, 0.0, "", False, T_NONE, False, (), False, False, False, True)


class _Scan:
    """One segment split into chunks. Offsets, code regions, line breaks and sentence
    bounds are looked at only around candidates, so the per-chunk work is two regex
    passes and a cache look-up."""

    __slots__ = (
        "_ranges",
        "cands",
        "chunks",
        "index",
        "infos",
        "masks",
        "soft",
        "starts",
        "stopped_at",
        "text",
    )

    def __init__(
        self,
        index: int,
        text: str,
        budget: int,
        masks: list[tuple[int, int]],
        soft: list[tuple[int, int]] | None = None,
    ) -> None:
        self.index = index
        self.text = text
        matches = list(islice(_CHUNK_RE.finditer(text), budget + 1))
        self.chunks: list[str] = [m.group() for m in matches]
        self.starts: list[int] = [m.start() for m in matches]
        self.masks = masks  # sorted, merged character ranges that are not prose
        self.soft = soft or []  # sorted, merged ranges whose prose is nominated only (code blocks)
        self.infos: list[_Chunk] = []  # chunk analyses; _OTHER inside the masks
        self.cands: list[int] = []  # chunks with odd parts, outside the masks
        self._ranges: list[range] = []  # the last sentence range found
        self.stopped_at: int | None = None  # offset where a budget ran out
        if len(matches) > budget:
            self.truncate(budget)

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` chunks; the rest of the segment is not judged."""
        if n < len(self.chunks):
            self.stopped_at = self.starts[n]
            del self.chunks[n:], self.starts[n:], self.infos[n:]

    def apply_masks(self) -> int:
        """Replace the analyses of chunks that touch a masked range; return how many."""
        starts, chunks, infos = self.starts, self.chunks, self.infos
        masked = 0
        for ms, me in self.masks:
            i = max(0, bisect.bisect_right(starts, ms) - 1)
            if i < len(starts) and starts[i] + len(chunks[i]) <= ms:
                i += 1
            while i < len(starts) and starts[i] < me:
                if infos[i] is not _OTHER:
                    infos[i] = _OTHER
                    masked += 1
                i += 1
        return masked

    def in_soft(self, offset: int) -> bool:
        """Is ``offset`` inside a range whose prose is nominated only?"""
        soft = self.soft
        i = bisect.bisect_right(soft, (offset, _END)) - 1
        return i >= 0 and offset < soft[i][1]

    def newline_before(self, i: int) -> bool:
        if i == 0:
            return False
        return self.text.find("\n", self.starts[i - 1] + len(self.chunks[i - 1]), self.starts[i]) >= 0

    def breaks_before(self, i: int) -> bool:
        """Does a sentence (or line) end between chunk i-1 and chunk i?"""
        return i == 0 or self.infos[i - 1].trail >= T_DOT or self.newline_before(i)

    def sentence_range(self, k: int) -> range:
        """The chunks of k's sentence (candidates are visited in order: one range cached).

        At most ``_SENTENCE_MAX`` chunks either side: text without a full stop or a line
        break for longer is no sentence, and an unbounded walk made a flood of candidates
        in one 50,000-word "sentence" cost 0.2 s."""
        if self._ranges and k in self._ranges[-1]:
            return self._ranges[-1]
        lo = k
        floor = max(0, k - _SENTENCE_MAX)
        while lo > floor and not self.breaks_before(lo):
            lo -= 1
        hi = k + 1
        ceiling = min(len(self.chunks), k + 1 + _SENTENCE_MAX)
        while hi < ceiling and not self.breaks_before(hi):
            hi += 1
        r = range(lo, hi)
        self._ranges[:] = [r]
        return r


_END = 1 << 62  # sorts after any range end: bisect by start alone
_SENTENCE_MAX = 128  # chunks looked at on each side of a candidate for its sentence


class _OutOfBudget(Exception):
    """The sample's analysis budget ran out (internal; never leaves the detector)."""


class _Static(NamedTuple):
    weight: float  # word-unlikeness x rarity gate, before context
    reason: str
    unit: bool  # frequent enough to be a unit after a number ("5 mb"); a random string is not
    cased: float  # the weight of the lower-case token in text that uses capitals (it is not a name)


class _Found(NamedTuple):
    weight: float
    context: float  # product of the sentence-level context factors
    reason: str
    word: str
    jargon: bool
    segment: int
    chunk: int
    start: int
    end: int
    ambiguous: bool  # the token has an innocent reading in this form: nominate, never block


class _Hit(NamedTuple):
    score: float
    reason: str
    segment: int
    start: int
    end: int
    word: str = ""  # the token as looked up (a vocabulary entry); "" for scan_truncated


def _case_of(word: str) -> int:
    if word.islower():
        return C_LOWER
    if word.isupper():
        return C_UPPER
    if word[0].isupper() and word[1:].islower():
        return C_TITLE
    return C_MIXED


def _trail_kind(tail: str) -> int:
    if not tail:
        return T_NONE
    if tail.rstrip(_CLOSERS) == ".":
        return T_DOT
    if not _SENTENCE_END.isdisjoint(tail):
        return T_END
    return T_CLAUSE


# --------------------------------------------------------------------------- helpers


def _odd_runs(found: Iterable[_Found]) -> dict[tuple[int, int], set[str]]:
    """The odd word types of each run of adjacent odd chunks, keyed by (segment, chunk)."""
    runs: dict[tuple[int, int], set[str]] = {}
    # Nominated tokens (acronyms, names, units: see R_AMBIGUOUS) are not the text's register:
    # an acronym or a name added beside a trigger must not discount it.
    odd = (f for f in found if f.weight >= _ODD_WEIGHT and not f.ambiguous)
    for f in sorted(odd, key=lambda f: (f.segment, f.chunk)):
        key = (f.segment, f.chunk)
        words = runs.get(key) or runs.get((f.segment, f.chunk - 1)) or set()
        words.add(f.word)
        runs[key] = words
    return runs


def _fold(chunk: str) -> str:
    """The chunk as a tokenizer that normalises reads it: NFKC (full-width letters,
    ligatures, decomposed accents composed), then combining marks that composed with
    nothing and format characters dropped. ASCII is its own fold. Only the first
    ``_FOLD_MAX`` characters are folded (no word is longer; see ``_analyse_word``)."""
    if chunk.isascii():
        return chunk
    return _drop_marks(unicodedata.normalize("NFKC", chunk[:_FOLD_MAX]))


def _bare(chunk: str) -> str:
    """The chunk as a byte-level tokenizer reads it: its letters, each combining mark its
    own token after them ("mn" + U+0301 is the token "mn" and an accent, though NFC would
    compose an "n" with an acute accent). Width and ligatures folded as in :func:`_fold`."""
    return unicodedata.normalize("NFKC", _drop_marks(unicodedata.normalize("NFD", chunk[:_FOLD_MAX])))


def _drop_marks(text: str) -> str:
    if text.isascii():
        return text
    category = unicodedata.category
    return "".join(c for c in text if category(c) not in _FOLD_DROP)


_FOLD_MAX = 1024  # characters of a chunk folded for judging
_QUOTED_VALUE_RE = re.compile(r"\"[^\"]*\"|'[^']*'")


def _blank_markup(text: str) -> str:
    """``text`` with its markup tags turned to spaces, offsets kept.

    A chunk glued to a tag ("<b>cf</b>") is then judged as the word it holds, and
    attribute values are not prose. A bare attribute of a known HTML element that HTML
    does not define ("<i cf>") is kept: nothing renders it, a tokenizer reads it.
    """
    if "<" not in text:
        return text
    return _MARKUP_RE.sub(_residue_of, text)


def _residue_of(match: re.Match[str]) -> str:
    return _tag_residue(match.group())


@functools.lru_cache(maxsize=4096)
def _tag_residue(tag: str) -> str:
    """What is left of one tag (pages repeat their tags: cached)."""
    blank = [" "] * len(tag)
    name = _TAG_RE.match(tag)
    if name is not None and name.group(1).lower() in _HTML_TAGS:
        inner = _QUOTED_VALUE_RE.sub(lambda q: " " * len(q.group()), tag[name.end() : -1])
        offset = name.end()
        for attr in _BARE_ATTR_RE.finditer(" " + inner):
            word = attr.group(1)
            if word.lower() not in _HTML_BARE_ATTRS:
                s = offset + attr.start(1) - 1
                blank[s : s + len(word)] = word
    return "".join(blank)


def _looks_like_code(line: str) -> bool:
    if _CODE_START_RE.match(line):
        return True
    if _INDENTED_RE.match(line) and _CODE_CHAR_RE.search(line):
        return True
    n = len(_CODE_CHAR_RE.findall(line))
    return n >= 3 and n >= 0.08 * len(line.replace(" ", ""))


def _shouting(scan: _Scan, sentence: range) -> bool:
    """Is the sentence written in capitals (then capitals are not acronyms)?"""
    words = [info for info in map(scan.infos.__getitem__, sentence) if info.kind == K_WORD]
    upper = sum(1 for w in words if w.case == C_UPPER)
    return len(words) >= 3 and upper >= 0.6 * len(words)
