"""Sentences, clauses and list items of a prompt, code left out: the units ``recurring_sentences``
remembers.

Pure Python, no models: this is what runs on every request, so it must stay in
the tens of microseconds for a prompt-sized text. (It was written for the
``out_of_context`` detector, since retired: docs/detectors/counterfactual.md says why.)

Splitting rules (why each exists):

* **Code is never a unit.** Fenced blocks (```), inline code and indented code
  lines are masked first: code is not prose, and a function body is always "out
  of context" next to the question about it.
* **Lines and list items are units of their own.** A bulleted list is a set of
  separate items, not a paragraph; a line break ends a sentence even without a
  full stop (chat prompts rarely punctuate).
* **Sentence ends** are ``.``, ``!``, ``?`` (runs included) followed by optional
  closing quotes or brackets and whitespace; not after a known abbreviation
  ("e.g.", "Dr.", "vs."), an initial ("J. Smith"), or an ellipsis followed by a
  lower-case word, and never inside a quotation: a quoted sentence belongs to
  the sentence that quotes it.
* **Clauses**: a sentence with a semicolon or a spaced dash is split there when
  both sides have at least three words: an aside glued on with a semicolon is
  still an aside.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "SENTENCE_END",
    "Unit",
    "mask_code",
    "prose_lines",
    "split_units",
    "strip_span",
]


@dataclass(frozen=True, slots=True)
class Unit:
    """Characters ``[start, end)`` of one sentence, clause or list item (stripped of outer spaces)."""

    start: int
    end: int
    kind: str  # "sentence" | "clause" | "item"


_FENCE = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_INDENTED = re.compile(r"^(?: {4}|\t).*$", re.MULTILINE)
_LIST_ITEM = re.compile(r"^\s*(?:[-*+\u2022]|\d{1,3}[.)]|\(?[a-z]\))\s+")
SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)")
_CLAUSE = re.compile(r";\s+|\s+(?:--|\u2014|\u2013)\s+")
_WORD = re.compile(r"[A-Za-z\u00c0-\u024f][A-Za-z\u00c0-\u024f'\u2019-]*")
_QUOTES = re.compile(r"\"[^\"\n]*\"|\u201c[^\u201d\n]*\u201d")


def _wordset(text: str) -> frozenset[str]:
    """A set from a whitespace-separated word list (long lists read better as text)."""
    return frozenset(text.split())


ABBREVIATIONS = _wordset(
    """
    mr mrs ms dr prof sr jr st vs etc eg ie cf al fig figs no nos vol vols pp ed eds inc ltd co
    corp dept est approx min max jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu
    fri sat sun mt ft gen gov sen rep rev capt col lt sgt u.s e.g i.e a.m p.m u.k ph.d op cit ca
    viz
    """
)


def mask_code(text: str) -> str:
    """``text`` with code replaced by NUL characters (same length, so offsets stay valid)."""
    out = text
    for pattern in (_FENCE, _INDENTED, _INLINE_CODE):
        out = pattern.sub(lambda m: "\0" * len(m.group()), out)
    return out


def _protected(text: str) -> list[tuple[int, int]]:
    return [(m.start() + 1, m.end() - 1) for m in _QUOTES.finditer(text)]


_ABBREVIATION_WINDOW = 48  # characters before a full stop searched for an abbreviation


def _is_boundary(line: str, match: re.Match[str], quotes: Sequence[tuple[int, int]]) -> bool:
    end = match.end()
    if any(a <= match.start() < b for a, b in quotes):
        return False
    punct = match.group()
    nxt = line[end:].lstrip()
    if not nxt:
        return True
    if punct.startswith("."):
        # Only the word before the stop matters: look at a bounded tail, not the whole line
        # (rescanning the line before every stop made long one-line texts quadratic).
        tail = line[max(0, match.start() - _ABBREVIATION_WINDOW) : match.start() + 1].rstrip(".")
        word = re.search(r"([A-Za-z.]+)\.?$", tail)
        token = word.group(1).lower().rstrip(".") if word else ""
        if token in ABBREVIATIONS or (len(token) == 1 and token.isalpha() and nxt[:1].isupper()):
            return False
        if punct.startswith("..") and nxt[:1].islower():
            return False
    return nxt[:1] not in ",;:"


def strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """``[start, end)`` narrowed past surrounding whitespace and masked code."""
    while start < end and (text[start].isspace() or text[start] == "\0"):
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] == "\0"):
        end -= 1
    return start, end


def prose_lines(masked: str) -> Iterator[tuple[int, str, tuple[int, int] | None]]:
    """The lines of ``masked`` text that are not all code, as ``(offset, line, item)``.

    ``item`` is the ``[start, end)`` of a list item's text (a list item is one unit
    whatever its punctuation), ``None`` for a line the caller splits into sentences.
    Empty list items are skipped. Shared by :func:`split_units` and the
    recurring-sentence detector's finer splitter, so both see the same lines.
    """
    pos = 0
    for line in masked.split("\n"):
        line_start = pos
        pos += len(line) + 1
        if "\0" in line and not line.replace("\0", "").strip():
            continue
        item = _LIST_ITEM.match(line)
        if item is None:
            yield line_start, line, None
            continue
        s, e = strip_span(masked, line_start + item.end(), line_start + len(line))
        if e > s:
            yield line_start, line, (s, e)


def split_units(text: str, *, clauses: bool = True, min_clause_words: int = 3) -> list[Unit]:
    """Sentences, clauses and list items of ``text``, code skipped; see the module docstring."""
    masked = mask_code(text)
    units: list[Unit] = []
    for line_start, line, item in prose_lines(masked):
        if item is not None:
            units.append(Unit(item[0], item[1], "item"))
            continue
        quotes = _protected(line)
        cut = 0
        pieces: list[tuple[int, int]] = []
        for m in SENTENCE_END.finditer(line):
            if _is_boundary(line, m, quotes):
                pieces.append((cut, m.end()))
                cut = m.end()
        pieces.append((cut, len(line)))
        for a, b in pieces:
            s, e = strip_span(masked, line_start + a, line_start + b)
            if e <= s or not _WORD.search(masked[s:e]):
                continue
            if "\0" in masked[s:e]:
                # Prose around inline code: keep the prose, the code is masked out of the words.
                pass
            units.extend(_clauses(masked, s, e, min_clause_words) if clauses else [Unit(s, e, "sentence")])
    return units


def _clauses(text: str, start: int, end: int, min_words: int) -> list[Unit]:
    sentence = text[start:end]
    quotes = _protected(sentence)
    cuts = [m for m in _CLAUSE.finditer(sentence) if not any(a <= m.start() < b for a, b in quotes)]
    if not cuts:
        return [Unit(start, end, "sentence")]
    bounds = [0, *(x for m in cuts for x in (m.start(), m.end())), len(sentence)]
    parts = [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2)]
    if any(len(_WORD.findall(sentence[a:b])) < min_words for a, b in parts):
        return [Unit(start, end, "sentence")]
    out = []
    for a, b in parts:
        s, e = strip_span(text, start + a, start + b)
        if e > s:
            out.append(Unit(s, e, "clause"))
    return out
