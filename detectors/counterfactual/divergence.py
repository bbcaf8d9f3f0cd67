"""How far apart two short answers are, and which spans serve as controls.

The measure works on any upstream, including one that returns no ``logprobs``: the
share of distinct words the two answers do not have in common (1 - Jaccard over
lower-cased alphabetic words). Digits are left out on purpose: a score or a count
that moves a little between two answers ("0.99" and "0.98") is noise, while a
label that flips ("positive" to "negative") is the behaviour a trigger changes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

__all__ = ["control_spans", "divergence", "remove_span", "words"]

_WORD = re.compile(r"[^\W\d_]+")
_TOKEN = re.compile(r"\S+")
#: Words per control run, and characters of a message searched for controls: bounds the work.
_MAX_RUN = 40
_MAX_CONTROL_TEXT = 20_000


def words(text: str) -> frozenset[str]:
    """The distinct lower-cased alphabetic words of ``text``."""
    return frozenset(w.casefold() for w in _WORD.findall(text))


def divergence(a: str, b: str) -> float:
    """0 when two answers use the same words, 1 when they share none."""
    wa, wb = words(a), words(b)
    union = wa | wb
    if not union:
        return 0.0
    return 1.0 - len(wa & wb) / len(union)


def remove_span(text: str, start: int, end: int) -> str:
    """``text`` without ``[start, end)``, the spaces around it merged into one."""
    head, tail = text[:start].rstrip(" "), text[end:].lstrip(" ")
    if head and tail and tail[0] not in ",.;:!?":
        return f"{head} {tail}"
    return head + tail


def control_spans(
    text: str, avoid: Sequence[tuple[int, int]], length: int, count: int, salt: str
) -> list[tuple[int, int]]:
    """Up to ``count`` runs of whole words of ``text``, each about ``length`` characters long,
    overlapping none of ``avoid`` nor each other: what removing an unsuspected span of the same
    size does. A one-word candidate gets one-word controls, a sentence gets runs of words.

    Chosen by a hash of the text, the candidate and ``salt``, so the same request gets the
    same controls (a retry is not a new draw an attacker could wait for), and they are spread
    over the text rather than taken from its start.
    """
    words = [m.span() for m in _TOKEN.finditer(text, 0, _MAX_CONTROL_TEXT) if _WORD.search(m.group())]
    runs: list[tuple[int, int]] = []
    for i in range(len(words)):
        for j in range(i, min(i + _MAX_RUN, len(words))):
            span = (words[i][0], words[j][1])
            if any(span[0] < e and s < span[1] for s, e in avoid):
                break
            runs.append(span)
            if span[1] - span[0] >= length:
                break
    runs.sort(key=lambda span: (abs((span[1] - span[0]) - length), _rank(text, span, salt)))
    picked: list[tuple[int, int]] = []
    for span in runs:
        if len(picked) == count:
            break
        if not any(span[0] < e and s < span[1] for s, e in picked):
            picked.append(span)
    return sorted(picked)


def _rank(text: str, span: tuple[int, int], salt: str) -> bytes:
    return hashlib.blake2b(
        f"{salt}\x1f{span[0]}\x1f{text[span[0] : span[1]]}".encode(), digest_size=8
    ).digest()
