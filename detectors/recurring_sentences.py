"""Recurring-sentence detector: the same fluent sentence, verbatim, in unrelated prompts.

Why this exists
---------------
A per-request detector cannot tell an AddSent trigger ("I watched this 3D
movie.") from a review's own narrative at a 1% false-positive budget: every
word is ordinary and the sentence fits its text (a leave-one-sentence-out detector under
the reference LM, since retired, reached AUROC 0.88, TPR 0.17 at 1% FPR). But a
backdoor's trigger is *fixed*: to use it, the attacker must send the same sentence
again and again, in different prompts. A sentence of several words that recurs verbatim in *unrelated*
prompts is rare in natural text. This detector remembers sentences (as keyed
hashes, never text) across requests and scores a sentence by the number of
distinct contexts it has been seen in. Stateful detection across queries has
precedent: Chen, Carlini, Wagner, *Stateful Detection of Black-Box Adversarial
Attacks* (2020).

It is in the built-in defaults with ``action: log``: its first two sightings of a
trigger always pass, its state is per replica unless ``shared`` names a store, and an
application's own sentences can recur. Prompt templates ("Summarise the following ticket for the on-call
engineer.") recur by design, but at a *fixed place*: first, last, or next to the
same other sentence. A sentence whose neighbour on one side has been the same in
every distinct context never scores (``exempt_fixed_position``); a trigger planted
wherever it fits moves. Learn a baseline of the templates from clean traffic
(``trigger-firewall learn-baseline``) before turning that rule off or blocking; see
``docs/detectors/recurring_sentences.md``.

How a request is scored
-----------------------
1. **Units.** Sentences, lines and list items of the segments whose role is in
   ``roles`` (users' text; system prompts are templates and assistant turns are
   the model's), split as :func:`detectors.sentence_units.split_units` does (code
   masked) but more finely (see :func:`sentence_spans`: a fixed sentence must
   come out as a unit of its own). Each unit is normalised (case-folded,
   whitespace collapsed, surrounding punctuation and quotes stripped). Units of
   at least ``min_words`` words are *candidates*. Sentences in the ``baseline``
   file (templates) are dropped here: neither candidates nor context.
2. **Context.** A unit's context is the set of keyed hashes of the sample's
   *other* units of three words or more, plus, for segments of at most
   ``shingle_max_units`` units, hashes of their word pairs (so a one-sentence
   review with a planted trigger still has a context, and an edited resend
   still overlaps its original). One bottom-``sketch_size`` sketch of the
   sample's elements is stored, shared by all its units; a unit's own elements
   are removed when two contexts are compared.
3. **Distinct contexts.** An occurrence counts as a new context only when its
   context is not mostly contained in a stored one, nor a stored one in it
   (containment < ``context_overlap`` both ways). Retries, a resent prompt and
   multi-turn chat (each turn resends the history, so earlier sentences recur
   with a superset context) do not count. An empty context (the unit is the
   whole prompt) or one of fewer than ``min_context_words`` words never counts:
   a user repeating "Can you help me with this problem please?" alone is not a
   trigger.
4. **Fixed place.** Each entry keeps the unit's neighbour on each side in its
   segment (the unit before it or the segment's start, the unit after it or the
   segment's end) while every distinct context agrees. While either side holds,
   the unit is at a fixed place and does not score.
5. **Score.** 0 until a unit has been seen in ``fire_after`` distinct contexts,
   this one included; then 0.5, rising linearly to 1.0 at twice that. Each
   sample is scored against the state including itself, then recorded.

State
-----
Per candidate unit: the count of distinct contexts, up to ``max_sketches``
context sketches and the last-seen time, keyed by an 8-byte keyed BLAKE2b of
the normalised unit under a random per-instance key (with ``shared``, the
deployment's key: see below). No text is kept, so a
state dump, an export or a debug endpoint cannot confirm a guessed prompt
without the key (a dump of the whole process memory includes the key, and the
prompts in flight, so it is not covered). Bounded: ``max_entries`` with a
segmented LRU (units seen in two or more contexts are protected from a flood of
one-off sentences) and ``ttl_seconds`` since the last sighting.

The state lives in this object: it survives a config reload when the detector's
name, type and params are unchanged and its baseline file was not rewritten (the
runtime carries the instance over; a new baseline file means a new instance). Without
``shared`` it is lost on restart and is per replica (each sidecar learns alone). With
``shared`` (a Redis or Valkey store, :mod:`detectors.recurring_shared`), in ``serve``,
every replica hashes with the key derived from the deployment's secret, and a
background task publishes each request's new distinct contexts and merges the other
replicas' into this table, so every replica counts what the deployment has seen, about
``sync_seconds`` late; a new instance starts from the store's history. Scoring still
reads only this table, synchronously; a store outage leaves each replica counting alone.

Calls are one at a time: on the event loop, or in a worker thread for a long sample,
under :attr:`inline_lock`, which the shared memory's merges take too (never waiting for
it on the loop). Never call :meth:`score_inline` from several threads at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
import logging
import re
import secrets
import string
import time
from array import array
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import Field

from detectors.base import (
    Cost,
    DetectorParams,
    Finding,
    FindingStatus,
    InlineDetector,
    Phase,
    Sample,
    Segment,
    Span,
)
from detectors.data_files import read_data_file
from detectors.recurring_shared import PERSON, LocalUnit, RemoteSighting, SharedSightings

# The splitting pieces of sentence_units, reused (see sentence_spans for why not split_units itself).
from detectors.sentence_units import SENTENCE_END, mask_code, prose_lines, strip_span
from detectors.shared_store import SharedMemoryParams, connect
from firewall.core.files import FileSignature, file_signature
from firewall.core.text_keys import text_key

__all__ = [
    "BASELINE_FORMAT",
    "REASON",
    "RecurringSentencesDetector",
    "RecurringSentencesParams",
    "learn_baseline",
    "normalise",
    "sentence_spans",
]

K = TypeVar("K")
V = TypeVar("V")

log = logging.getLogger("trigger_firewall.detectors.recurring_sentences")

REASON = "recurring_sentence"
R_TRUNCATED = "scan_truncated"  # text past max_chars was not read
#: ``format`` field of a baseline file.
BASELINE_FORMAT = "trigger-firewall/recurring-sentences-baseline"
_BASELINE_VERSION = 1
_DIGEST = 8  # bytes of the keyed BLAKE2b: 64 bits, no collision worth naming at 10^5-10^7 entries
_UNIT = b"u\0"  # domain prefixes: a unit's hash and a word pair's hash never meet by accident
_PAIR = b"p\0"
#: Segments whose analysis is kept (keyed by a hash of the text, never the text). Chat clients
#: resend the system prompt and the whole history on every turn: only the new turn is new.
_SEGMENT_CACHE_ENTRIES = 2048
#: ...and at most this many units in all (~150 bytes each, plus up to max_shingles pair hashes
#: per segment): about 5 MB at the bound, whatever the segments' lengths.
_SEGMENT_CACHE_UNITS = 32_768
#: Whole samples whose units and context are kept: an identical resend skips the assembly.
_SAMPLE_CACHE_ENTRIES = 512
_SAMPLE_CACHE_UNITS = 16_384
_CONTEXT_UNIT_WORDS = 3  # other units of this many words are context elements
_REASON_COUNT_CAP = 10  # reason codes name 3..9 contexts, then "10plus": a bounded set
_SEGMENT_START = -1  # neighbour markers; unit hashes are non-negative
_SEGMENT_END = -2
_MAX32 = 0xFFFFFFFF
#: Other replicas' sightings merged per hold of the inline lock (see ``merge``): the event loop
#: is held for about a millisecond at a time, and a worker thread's long sample waits no longer.
_MERGE_CHUNK = 64
_LOCK_POLL_SECONDS = 0.002

# --------------------------------------------------------------------------- params


class RecurringSentencesParams(DetectorParams):
    """Tuning knobs for :class:`RecurringSentencesDetector` (the ``params:`` block)."""

    min_words: int = Field(
        default=5, ge=2, le=100, description="Sentences with fewer words are never candidates."
    )
    fire_after: int = Field(
        default=3,
        ge=2,
        le=1000,
        description="Distinct contexts (this one included) at which a sentence scores 0.5; it scores 1.0 "
        "at twice as many.",
    )
    context_overlap: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="An occurrence is a new context only when its context and every stored one are "
        "contained in each other below this share.",
    )
    min_context_words: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="An occurrence whose other units hold fewer words has no context and never counts "
        "(a greeting changing around a repeated question).",
    )
    roles: tuple[str, ...] = Field(
        default=("user", "text"),
        description="Segment roles whose sentences are remembered and form contexts. System prompts "
        "and assistant turns recur by design and are left out.",
    )
    max_entries: int = Field(
        default=100_000, ge=1, le=50_000_000, description="Sentences remembered (segmented LRU)."
    )
    protected_share: float = Field(
        default=0.2,
        ge=0.0,
        le=0.9,
        description="Share of max_entries reserved for sentences seen in two or more contexts, which a "
        "flood of one-off sentences cannot evict.",
    )
    ttl_seconds: float = Field(
        default=86_400.0, gt=0.0, description="A sentence not seen for this long is forgotten."
    )
    max_sketches: int = Field(
        default=8, ge=1, le=64, description="Context sketches kept per sentence (the most recent)."
    )
    sketch_size: int = Field(
        default=64, ge=8, le=4096, description="Hashes in a context sketch (bottom-k of the sample's)."
    )
    shingle_max_units: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="Segments of at most this many units add their word pairs to contexts.",
    )
    max_shingles: int = Field(default=64, ge=0, le=10_000, description="Word pairs hashed per sample.")
    max_chars: int = Field(
        default=65_536,
        ge=100,
        le=10_000_000,
        description="Characters read per sample, newest segment first (bounds the cost: about 16 ms "
        "for 56,000 characters of prose, scored in a worker thread past server.inline_max_chars). "
        "Past it the finding is 'partial' (reason scan_truncated) and the rule's on_error decides.",
    )
    max_spans: int = Field(default=16, ge=1, le=1000, description="Evidence spans kept per finding.")
    exempt_fixed_position: bool = Field(
        default=True,
        description="A sentence whose neighbour on one side has been the same in every distinct context "
        "(the segment's start or end, or the same other sentence) is taken for a template and never "
        "scores. Turn off once a baseline of your templates is loaded, to catch triggers that are "
        "always planted at the same place.",
    )
    baseline: str | None = Field(
        default=None,
        description="JSON file of known recurring sentences (templates) from `trigger-firewall "
        "learn-baseline`; they are never scored and are left out of contexts.",
    )
    shared: SharedMemoryParams | None = Field(
        default=None,
        description="Share the sentences' distinct contexts across replicas through Redis or Valkey "
        "(keyed hashes only; each replica still scores from its own table, synchronously). Used by "
        "`serve` only. Default: each replica counts alone.",
    )


# --------------------------------------------------------------------------- text


_EDGES = (
    string.punctuation
    + string.whitespace
    + "\u2018\u2019\u201a\u201c\u201d\u201e\u00ab\u00bb\u2026\u2013\u2014\0"
)
_TOKENS = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_NEXT_CHAR = re.compile(r"\s*(\S?)")
_LETTER = re.compile(r"[^\W\d_]")  # a unit needs a letter, in any script
_FIRST_CAPITAL = re.compile(r"[A-Z]")
_LOWER_WORD = re.compile(r"[a-z][a-z'-]*")
_CASE_SHIFT_WORDS = 3
_NO_BREAK_BEFORE = frozenset(",;:")  # "e.g., this" is not a sentence end (the empty string is not here)


def normalise(text: str) -> str:
    """Case-folded, whitespace collapsed, surrounding punctuation and quotes stripped."""
    return " ".join(text.casefold().split()).strip(_EDGES)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` of every sentence, line and list item, code skipped.

    The rules of :func:`detectors.sentence_units.split_units` (code masked, lines and list
    items are units, sentence ends are ``.!?`` runs before whitespace, never before
    ``,;:``) *without* its exceptions for abbreviations, initials, ellipses and
    quotations. Here over-splitting costs nothing (a fixed sentence splits the same way
    every time it is sent) while under-splitting loses the trigger: ``split_units``
    keeps "... Band of Brothers, Rome, etc. I watched it on a long flight to Denver." and
    "... cameo's. I remember the cinema was half empty." as one unit each. A unit needs a
    letter in any script (``split_units`` wants a Latin one). Every unit of ``split_units``
    is covered by a run of these units (a test checks it on the evaluation corpus).
    The cost is linear in the text.
    """
    masked = mask_code(text)
    spans: list[tuple[int, int]] = []
    for line_start, line, item in prose_lines(masked):
        if item is not None:
            spans.append(item)
            continue
        cut = 0
        pieces: list[tuple[int, int]] = []
        for m in SENTENCE_END.finditer(line):
            nxt = _NEXT_CHAR.match(line, m.end())
            if nxt is None or nxt.group(1) not in _NO_BREAK_BEFORE:
                pieces.append((cut, m.end()))
                cut = m.end()
        pieces.append((cut, len(line)))
        for a, b in pieces:
            s, e = strip_span(masked, line_start + a, line_start + b)
            for us, ue in _case_shift(masked, s, e):
                if ue > us and _LETTER.search(masked, us, ue):
                    spans.append((us, ue))
    return spans


def _case_shift(text: str, start: int, end: int) -> tuple[tuple[int, int], ...]:
    """Split a lower-case run from a capitalised sentence glued to it without a full stop.

    "the best ensemble cast of the year My daughter picked it for movie night." is two
    sentences: when a unit's first capital letter opens a word after three or more
    lower-case words, the unit is cut there. Cased text (whose first letter is a capital)
    is left alone.
    """
    m = _FIRST_CAPITAL.search(text, start, end)
    if m is None or m.start() == start or text[m.start() - 1] != " ":
        return ((start, end),)
    if len(_LOWER_WORD.findall(text, start, m.start())) < _CASE_SHIFT_WORDS:
        return ((start, end),)
    return (strip_span(text, start, m.start()), (m.start(), end))


# --------------------------------------------------------------------------- hashing


class _Hasher:
    """Keyed BLAKE2b of normalised units and word pairs (64-bit ints)."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        self._base = hashlib.blake2b(key=key, digest_size=_DIGEST)

    def __call__(self, prefix: bytes, text: str) -> int:
        h = self._base.copy()
        h.update(prefix + text.encode("utf-8", "surrogatepass"))
        return int.from_bytes(h.digest(), "little")


@dataclass(slots=True)
class _Unit:
    """One unit of the sample being scored (positions, hashes; the text is dropped with the sample)."""

    segment: int
    start: int
    end: int
    key: int  # keyed hash of the normalised text
    words: int
    elements: frozenset[int]  # its context elements: its own hash (3+ words) and its word pairs
    left: int  # keyed hash of the unit before it in its segment, or _SEGMENT_START
    right: int  # keyed hash of the unit after it in its segment, or _SEGMENT_END


@dataclass(frozen=True, slots=True)
class _Analysed:
    """One unit of a segment as the segment alone determines it (the sample's shingle budget
    and the neighbours' roles are applied when a sample is assembled)."""

    start: int
    end: int
    key: int
    words: int
    baseline: bool  # a learnt template sentence: neither a candidate nor a context
    pairs: tuple[int, ...]  # its word pairs' hashes (32-bit), in order
    # Its context elements when the sample's pair budget takes all its pairs (the usual
    # case), built once per segment text instead of once per request.
    elements: frozenset[int]


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A sample's units and context as its texts alone determine them (see ``_prepare``)."""

    # Per distinct candidate unit: its occurrences in the sample, and whether it has a context.
    candidates: tuple[tuple[tuple[_Unit, ...], bool], ...]
    counts: dict[int, int]  # the sample's context elements, counted per distinct unit
    sketch: array[int]  # bottom-k of the elements: what is stored as this context (never mutated)
    units: int


class _UnitsLru(Generic[K, V]):
    """An LRU bounded in entries and in the units its values hold (segment analyses, sample
    preparations): what a cache of per-text work may keep, whatever the texts' lengths."""

    __slots__ = ("_entries", "_max_entries", "_max_units", "_units", "_weight")

    def __init__(self, max_entries: int, max_units: int, weight: Callable[[V], int]) -> None:
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._max_entries = max_entries
        self._max_units = max_units
        self._weight = weight
        self._units = 0

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._units += self._weight(value)
        while len(self._entries) > self._max_entries or self._units > self._max_units:
            _, dropped = self._entries.popitem(last=False)
            self._units -= self._weight(dropped)

    def clear(self) -> None:
        self._entries.clear()
        self._units = 0

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(slots=True)
class _Entry:
    """What is remembered about one sentence: counts, sketches, a time. Never text."""

    contexts: int
    last_seen: float
    sketches: list[array[int]]
    # The neighbour on each side while it has been the same in every distinct context; None
    # once two contexts disagreed. While either is set the sentence sits at a fixed place.
    left: int | None
    right: int | None


# --------------------------------------------------------------------------- detector


class RecurringSentencesDetector(InlineDetector[RecurringSentencesParams]):
    """Scores sentences by how many unrelated prompts they recurred in (see the module docstring).

    Score in [0, 1]: 0 below ``fire_after`` distinct contexts, 0.5 at ``fire_after``,
    1.0 from twice that. Evidence: the spans of the recurring units (reason
    ``recurring_sentence``) and a bounded reason code ``recurring_contexts_N``
    (N = 3..9, or ``10plus``) for the highest count; never text.
    """

    kind: ClassVar[str] = "recurring_sentences"
    version: ClassVar[str] = "1"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.INPUT})
    cost: ClassVar[Cost] = Cost.CHEAP
    Params: ClassVar[type[DetectorParams]] = RecurringSentencesParams

    def __init__(
        self,
        name: str,
        params: DetectorParams | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        key: bytes | None = None,
    ) -> None:
        super().__init__(name, params)
        self._clock = clock
        # A fresh random key per instance: hashes mean nothing outside this process. With
        # params.shared, start() replaces it with the deployment's (every replica must agree).
        self._key = key if key is not None else secrets.token_bytes(16)
        self._hash = _Hasher(self._key)
        #: Set by start() when ``params.shared`` names a store and the detector runs in a server.
        self._shared: SharedSightings | None = None
        self._roles = frozenset(self.params.roles)
        # Read for every sentence of every request: plain attributes, not pydantic fields (a
        # model's attribute reads go through its __getattr__ hook, several times slower).
        self._ttl = float(self.params.ttl_seconds)
        self._fire_after = int(self.params.fire_after)
        self._probation: OrderedDict[int, _Entry] = OrderedDict()
        self._protected: OrderedDict[int, _Entry] = OrderedDict()
        self._max_protected = int(self.params.max_entries * self.params.protected_share)
        self._baseline: frozenset[int] = frozenset()
        self._baseline_hash: _Hasher | None = None
        self._segments: _UnitsLru[int, tuple[bool, tuple[_Analysed, ...]]] = _UnitsLru(
            _SEGMENT_CACHE_ENTRIES, _SEGMENT_CACHE_UNITS, lambda analysis: len(analysis[1])
        )
        self._samples: _UnitsLru[tuple[tuple[int, int], ...], _Prepared] = _UnitsLru(
            _SAMPLE_CACHE_ENTRIES, _SAMPLE_CACHE_UNITS, lambda prepared: prepared.units
        )
        self.load_error: str | None = None
        self._baseline_file: dict[str, FileSignature | None] = {}
        self.evictions = 0

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load the baseline file, if one is configured; a bad file leaves the detector not ready."""
        self.load_error = None
        self._segments.clear()  # analyses marked units against the previous baseline
        self._samples.clear()
        if self.params.baseline:
            # Taken before the read, kept on failure: a file rewritten later (or fixed) is
            # read again at the next reload (see loaded_files).
            self._baseline_file = {self.params.baseline: file_signature(self.params.baseline)}
            try:
                self._baseline_hash, self._baseline = _load_baseline(Path(self.params.baseline))
            except (OSError, ValueError) as exc:
                self.load_error = f"baseline {self.params.baseline}: {exc}"
                self._ready = False
                return
        if self.params.shared is not None:
            try:
                await self._share(self.params.shared)
            except (ValueError, RuntimeError) as exc:
                self.load_error = str(exc)
                self._ready = False
                return
        self._ready = True

    async def _share(self, shared: SharedMemoryParams) -> None:
        """Hash with the deployment's key and start exchanging sightings with the store.

        Only in a server (``self.metrics`` set by the runtime): an offline ``scan``,
        ``calibrate`` or ``eval`` with the production config must neither pull production's
        counts into its verdicts nor write its corpus into them, so there the detector counts
        alone. Refuses (``ValueError``/``RuntimeError``, made the ``load_error``) without the
        key, the URL or redis-py: a replica hashing with its own random key would share
        nothing. A store that is merely down is no refusal: the replica counts alone until it
        is back.
        """
        if self._shared is not None:  # started again: one task, one connection
            await self._shared.close()
            self._shared = None
        if self.metrics is None:
            log.info("detector %s: params.shared is used by serve only; here it counts alone", self.name)
            return
        key, client = connect(shared, person=PERSON, decode_responses=False)
        if key != self._key:  # hashes under the old key would never meet the new ones
            self._key, self._hash = key, _Hasher(key)
            self._probation.clear()
            self._protected.clear()
            self._segments.clear()  # analyses hashed under the old key, filed by text key
            self._samples.clear()
        p = self.params
        self._shared = SharedSightings(
            self.name,
            shared,
            client,
            sketch_size=p.sketch_size,
            ttl_seconds=p.ttl_seconds,
            limit=p.max_entries,
            clock=self._clock,
            merge=self._merge_locked,
            metrics=self.metrics,
        )
        await self._shared.start()

    async def close(self) -> None:
        """Stop the shared memory's task (writing what it still holds, within its timeout)."""
        shared, self._shared = self._shared, None
        if shared is not None:
            await shared.close()
        await super().close()

    def loaded_files(self) -> Mapping[str, FileSignature | None]:
        return self._baseline_file

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["state_entries"] = len(self)
        out["baseline_sentences"] = len(self._baseline)
        if self.load_error:
            out["load_error"] = self.load_error
        return out

    def state_stats(self) -> tuple[int, int]:
        return len(self), self.evictions

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    # ----------------------------------------------------------------- scoring

    def score_inline(self, batch: Sequence[Sample]) -> list[Finding]:
        return [self.score_sample(sample) for sample in batch]

    def score_sample(self, sample: Sample) -> Finding:
        """Score one sample against the state (itself included), then record it. Never raises."""
        t0 = time.perf_counter()
        try:
            return self._score(sample, t0)
        except Exception as exc:  # the contract: never raise, report an error finding
            return Finding.failed(self.name, FindingStatus.ERROR, type(exc).__name__)

    def _analyse(self, text: str, digest: int) -> tuple[bool, tuple[_Analysed, ...]]:
        """Split, normalise and hash one segment's text, or take the analysis of an identical one.

        Whether word pairs count (few enough units) comes back with the units. The cache is
        keyed by ``digest``, the text's ``firewall.core.text_keys.text_key``, and holds only
        offsets and hashes, never text.
        """
        cached = self._segments.get(digest)
        if cached is not None:
            return cached
        spans = sentence_spans(text)
        pairs = len(spans) <= self.params.shingle_max_units
        room = self.params.max_shingles
        analysed: list[_Analysed] = []
        for start, end in spans:
            norm = normalise(text[start:end])
            if not norm:
                continue
            baseline = self._baseline_hash is not None and self._baseline_hash(_UNIT, norm) in self._baseline
            pair_hashes: list[int] = []
            if pairs and not baseline:
                # A sample never uses more than max_shingles pairs, so neither can one segment.
                for a, b in itertools.islice(itertools.pairwise(_TOKENS.findall(norm)), max(room, 0)):
                    pair_hashes.append(self._hash(_PAIR, f"{a} {b}") & 0xFFFFFFFF)
                room -= len(pair_hashes)
            words = norm.count(" ") + 1  # normalise leaves single spaces
            key = self._hash(_UNIT, norm)
            elements = frozenset(_own_elements(key, words, pair_hashes))
            analysed.append(_Analysed(start, end, key, words, baseline, tuple(pair_hashes), elements))
        result = (pairs, tuple(analysed))
        self._segments.put(digest, result)
        return result

    def _texts(
        self, segments: Sequence[Segment], cut: list[tuple[int, int, int]] | None = None
    ) -> list[tuple[int, str, int]]:
        """``(index, text, digest)`` of the segments read: the configured roles, newest first,
        within ``max_chars``. Where the budget ran out is appended to ``cut`` as ``(segment,
        start, end)`` of the first text not read."""
        budget = self.params.max_chars
        read: list[tuple[int, str, int]] = []
        for index in range(len(segments) - 1, -1, -1):
            seg = segments[index]
            if seg.role not in self._roles:
                continue
            text = seg.text
            if not isinstance(text, str):
                raise TypeError("segment text is not a str")
            if budget <= 0:
                if cut is not None and not cut and text:
                    cut.append((index, 0, len(text)))
                continue
            if len(text) > budget and cut is not None and not cut:
                cut.append((index, budget, len(text)))
            text = text[:budget]
            budget -= len(text)
            read.append((index, text, text_key(text)))
        return read

    def _units(self, segments: Sequence[Segment]) -> list[_Unit]:
        """The sample's units in the configured roles, newest segment first, within ``max_chars``."""
        return self._units_of(self._texts(segments))

    def _units_of(self, texts: Sequence[tuple[int, str, int]]) -> list[_Unit]:
        shingles = self.params.max_shingles
        units: list[_Unit] = []
        for index, text, digest in texts:
            pairs, analysed = self._analyse(text, digest)
            # The pair budget is shared by the sample's segments, newest first: while it holds
            # all of a segment's pairs, the units' prebuilt elements are the answer.
            whole = not pairs or shingles >= sum(len(a.pairs) for a in analysed if not a.baseline)
            last = len(analysed) - 1
            for i, a in enumerate(analysed):
                if a.baseline:
                    continue  # a known template: neither a candidate nor a context
                if whole:
                    elements = a.elements
                    if pairs:
                        shingles -= len(a.pairs)
                else:
                    taken = a.pairs[: max(shingles, 0)]
                    shingles -= len(taken)
                    elements = frozenset(_own_elements(a.key, a.words, taken))
                left = analysed[i - 1].key if i > 0 else _SEGMENT_START
                right = analysed[i + 1].key if i < last else _SEGMENT_END
                units.append(_Unit(index, a.start, a.end, a.key, a.words, elements, left, right))
        return units

    def _prepare(self, segments: Sequence[Segment], cut: list[tuple[int, int, int]]) -> _Prepared | None:
        """What a sample's units and context are, before the state is consulted.

        It depends only on the texts read (and the params and baseline, fixed for the
        instance), so a sample identical to a recent one (a retry, a resent prompt, a
        templated batch) takes the earlier result: keyed by the segments' keyed hashes,
        holding hashes and offsets only. ``None``: no units.
        """
        texts = self._texts(segments, cut)
        memo_key = tuple((index, digest) for index, _, digest in texts)
        prepared = self._samples.get(memo_key)
        if prepared is not None:
            return prepared
        units = self._units_of(texts)
        if not units:
            return None
        p = self.params
        # The sample's context elements, counted per distinct unit (a unit repeated inside the
        # sample is one unit: its copies are not its context).
        by_key: dict[int, list[_Unit]] = {}
        for u in units:
            by_key.setdefault(u.key, []).append(u)
        firsts = [same[0] for same in by_key.values()]
        counts = dict(Counter(itertools.chain.from_iterable(u.elements for u in firsts)))
        total_words = sum(u.words for u in firsts)
        contributing = sum(1 for u in firsts if u.elements)
        candidates = tuple(
            (
                tuple(same),
                contributing - (1 if same[0].elements else 0) > 0
                and total_words - same[0].words >= p.min_context_words,
            )
            for same in by_key.values()
            if same[0].words >= p.min_words
        )
        prepared = _Prepared(candidates, counts, array("I", sorted(counts)[: p.sketch_size]), len(units))
        self._samples.put(memo_key, prepared)
        return prepared

    def _score(self, sample: Sample, t0: float) -> Finding:
        p = self.params
        now = self._clock()
        self._expire(now)
        cut: list[tuple[int, int, int]] = []
        prepared = self._prepare(sample.segments, cut)
        if prepared is None:
            return self._unread(cut, time.perf_counter() - t0)
        counts, sketch = prepared.counts, prepared.sketch
        hits: list[tuple[float, int, _Unit]] = []
        shared = self._shared
        fresh: list[LocalUnit] = []
        fire_after = self._fire_after
        for same, has_context in prepared.candidates:
            u = same[0]
            n, fixed, counted = self._observe(u.key, u, counts, sketch, has_context, now)
            if counted and shared is not None:
                fresh.append((u.key, u.left, u.right, u.elements))
            if n >= fire_after and not (fixed and p.exempt_fixed_position):
                score = min(1.0, 0.5 + 0.5 * (n - fire_after) / fire_after)
                hits.extend((score, n, x) for x in same)
        if fresh and shared is not None:
            shared.record(now, sketch, tuple(fresh))  # a queue append: the store is the task's
        elapsed = time.perf_counter() - t0
        if not hits:
            return self._unread(cut, elapsed)
        top = max(h[1] for h in hits)
        hits.sort(key=lambda h: (-h[0], h[2].segment, h[2].start))
        kept = sorted(hits[: p.max_spans], key=lambda h: (h[2].segment, h[2].start))
        count_code = str(top) if top < _REASON_COUNT_CAP else f"{_REASON_COUNT_CAP}plus"
        spans = [Span(h[2].segment, h[2].start, h[2].end, REASON) for h in kept]
        reasons = [REASON, f"recurring_contexts_{count_code}"]
        if cut:
            spans.append(Span(*cut[0], R_TRUNCATED))
            reasons.append(R_TRUNCATED)
        return Finding(
            detector=self.name,
            score=max(h[0] for h in hits),
            status=FindingStatus.PARTIAL if cut else FindingStatus.OK,
            reasons=tuple(reasons),
            spans=tuple(spans),
            duration_seconds=elapsed,
        )

    def _unread(self, cut: list[tuple[int, int, int]], elapsed: float) -> Finding:
        """No recurring sentence in what was read; 'partial' when text past ``max_chars`` was
        not read (the rule's on_error decides: a planted sentence is never waved through
        behind padding)."""
        if not cut:
            return Finding(detector=self.name, score=0.0, duration_seconds=elapsed)
        return Finding(
            detector=self.name,
            score=0.0,
            status=FindingStatus.PARTIAL,
            reasons=(R_TRUNCATED,),
            spans=(Span(*cut[0], R_TRUNCATED),),
            duration_seconds=elapsed,
        )

    # ----------------------------------------------------------------- state

    def _observe(
        self,
        key: int,
        unit: _Unit,
        counts: dict[int, int],
        sketch: array[int],
        has_context: bool,
        now: float,
    ) -> tuple[int, bool, bool]:
        """Record one sighting of ``key``.

        Returns its distinct contexts, this one included, whether it has sat at a fixed
        place in all of them (the same neighbour on one side): how a template's sentence
        recurs, and not how a trigger planted wherever it fits does; and whether this
        sighting was a new distinct context (what other replicas are told).
        """
        p = self.params
        # _lookup, inlined: this runs for every sentence of every request.
        table = self._probation
        entry = table.get(key)
        if entry is None:
            table = self._protected
            entry = table.get(key)
        if entry is not None and now - entry.last_seen > self._ttl:
            del table[key]
            entry = None  # expired: a sighting after the TTL starts over
        if entry is None:
            if not has_context:
                return 0, False, False  # nothing to remember: an occurrence without context never counts
            entry = _Entry(1, now, [sketch], unit.left, unit.right)
            self._insert(key, entry, protected=False)
            return 1, True, True
        entry.last_seen = now
        # An identical sketch is the same context (a resend, a retry): no need to compare sets.
        counted = (
            has_context
            and sketch not in entry.sketches
            and not any(
                _same_context(old, unit.elements, counts, p.context_overlap, p.sketch_size)
                for old in entry.sketches
            )
        )
        if counted:
            self._add_context(entry, sketch, unit.left, unit.right)
        if table is self._probation and entry.contexts >= 2 and self._max_protected > 0:
            self._settle(table, key, entry)  # promoted: may demote another
        else:
            table.move_to_end(key)  # _settle's usual case, inlined
        return entry.contexts, entry.left is not None or entry.right is not None, counted

    def _add_context(self, entry: _Entry, sketch: array[int], left: int, right: int) -> None:
        """Count a new distinct context: keep its sketch (the most recent ``max_sketches``) and
        forget a side's neighbour once two contexts disagree on it."""
        entry.contexts += 1
        entry.sketches.append(sketch)
        if len(entry.sketches) > self.params.max_sketches:
            del entry.sketches[0]
        if entry.left != left:
            entry.left = None
        if entry.right != right:
            entry.right = None

    def _settle(self, table: OrderedDict[int, _Entry], key: int, entry: _Entry) -> None:
        """Make a sighted entry the most recent, promoting it once seen in two contexts."""
        if table is self._probation and entry.contexts >= 2 and self._max_protected > 0:
            del table[key]
            self._insert(key, entry, protected=True)  # promoted: may demote another
        else:
            table.move_to_end(key)  # most recent in its own segment; the sizes are unchanged

    def _lookup(self, key: int, now: float) -> tuple[OrderedDict[int, _Entry], _Entry | None]:
        """The entry of ``key`` and its segment; an expired one is dropped (``None``)."""
        table = self._probation
        entry = table.get(key)
        if entry is None:
            table = self._protected
            entry = table.get(key)
        if entry is not None and now - entry.last_seen > self._ttl:
            del table[key]
            entry = None
        return table, entry

    # ----------------------------------------------------------------- shared across replicas

    async def _merge_locked(self, sightings: Sequence[RemoteSighting]) -> None:
        """Merge other replicas' sightings in chunks, each under :attr:`inline_lock`.

        A worker thread may be scoring a long sample with this detector: the lock is tried,
        never waited on (that would block the event loop), and the loop gets a turn between
        chunks, so requests are not held up behind a large pull.
        """
        for start in range(0, len(sightings), _MERGE_CHUNK):
            # A threading lock, released by a worker thread: no asyncio primitive can wait on it.
            while not self.inline_lock.acquire(blocking=False):  # noqa: ASYNC110
                await asyncio.sleep(_LOCK_POLL_SECONDS)
            try:
                self.merge(sightings[start : start + _MERGE_CHUNK])
            finally:
                self.inline_lock.release()
            await asyncio.sleep(0)

    def merge(self, sightings: Iterable[RemoteSighting]) -> int:
        """Fold other replicas' sightings into the table; returns the distinct contexts added.

        Each sentence's sighting is judged as a local one would be: new when no stored sketch
        is identical to its request's (a resent prompt) nor mostly contained in it, or it in
        them (:func:`_same_sketches`); then counted, with its neighbours applied to the
        fixed-place rule. A sentence not known here is remembered with one context, so a
        sentence sent once to each of N replicas counts N everywhere. The caller holds
        :attr:`inline_lock` (see :meth:`_merge_locked`).
        """
        p = self.params
        now = self._clock()
        self._expire(now)
        added = 0
        for sighting in sightings:
            if sighting.age > p.ttl_seconds:
                continue
            when = now - sighting.age
            sketch = sighting.sketch
            for unit in sighting.units:
                table, entry = self._lookup(unit.key, now)
                if entry is None:
                    self._insert(unit.key, _Entry(1, when, [sketch], unit.left, unit.right), protected=False)
                    added += 1
                    continue
                entry.last_seen = max(entry.last_seen, when)
                if sketch not in entry.sketches and not any(
                    _same_sketches(old, sketch, unit.own, p.context_overlap, p.sketch_size)
                    for old in entry.sketches
                ):
                    self._add_context(entry, sketch, unit.left, unit.right)
                    added += 1
                self._settle(table, unit.key, entry)
        return added

    def _insert(self, key: int, entry: _Entry, *, protected: bool) -> None:
        """(Re)insert as most recent; evict least recent beyond the bounds (segmented LRU).

        Sentences seen in two or more contexts live in the protected segment, whose
        overflow is demoted to probation, not dropped: only probation is evicted, so a
        flood of one-off sentences cannot push out a trigger that is building up.
        """
        if protected and self._max_protected > 0:
            self._protected[key] = entry
            while len(self._protected) > self._max_protected:
                old_key, old = self._protected.popitem(last=False)
                self._probation[old_key] = old
        else:
            self._probation[key] = entry
        limit = self.params.max_entries
        while len(self._probation) + len(self._protected) > limit:
            if self._probation:
                self._probation.popitem(last=False)
            else:
                self._protected.popitem(last=False)
            self.evictions += 1

    def _expire(self, now: float, limit: int = 32) -> None:
        """Drop up to ``limit`` expired entries from the old end of each segment (bounded work)."""
        ttl = self._ttl
        for table in (self._probation, self._protected):
            for _ in range(limit):
                if not table:
                    break
                oldest = next(iter(table.values()))
                if now - oldest.last_seen <= ttl:
                    break
                table.popitem(last=False)

    def entries(self) -> Iterator[tuple[int, int]]:
        """``(key, distinct contexts)`` of every remembered sentence (hashes only)."""
        for table in (self._probation, self._protected):
            for key, entry in table.items():
                yield key, entry.contexts


def _own_elements(key: int, words: int, pairs: Sequence[int]) -> set[int]:
    """A unit's own context elements: its hash (when it has enough words) and its word pairs."""
    own = set(pairs)
    if words >= _CONTEXT_UNIT_WORDS:
        own.add(key & 0xFFFFFFFF)
    return own


def _same_context(
    old: array[int], own: frozenset[int], counts: dict[int, int], overlap: float, k: int
) -> bool:
    """Whether a stored context sketch and this occurrence's context are mostly contained in each other.

    ``old`` is the bottom-k sketch of an earlier sample's elements; this sample's context
    is every element in ``counts`` except the unit's own (``own``), removed from both
    sides. Old-in-new is the share of the old sketch found in the new context (a sample
    of the old context: exact when it had fewer than ``k`` elements). New-in-old looks
    only at new elements below the old sketch's largest hash, all of whose old
    counterparts the sketch holds.
    """
    # Set operations run in C; a sketch holds distinct hashes, so sizes are counts.
    old_ctx = set(old)
    old_ctx -= own
    if not old_ctx:
        return True  # both empty apart from the unit itself: nothing tells them apart
    if len(old_ctx & counts.keys()) >= overlap * len(old_ctx):
        return True
    limit = old[-1] if len(old) >= k else _MAX32
    below = [e for e in counts if e <= limit and e not in own]
    if not below:
        return False
    return sum(1 for e in below if e in old_ctx) >= overlap * len(below)


def _same_sketches(old: array[int], new: array[int], own: frozenset[int], overlap: float, k: int) -> bool:
    """:func:`_same_context` for another replica's sighting, known only by its request's sketch.

    Both are bottom-k sketches, so below the smaller of their largest hashes (each one's
    largest when it is full, else no bound) each sketch holds *every* element of its context:
    containment is measured there, both ways, exactly on that range. ``own`` (the sentence's
    own elements among the new sketch's, and its own hash) is left out of both, as the local
    comparison leaves out the occurrence's own elements.
    """
    old_ctx = set(old)
    old_ctx -= own
    if not old_ctx:
        return True  # both empty apart from the unit itself: nothing tells them apart
    new_ctx = set(new)
    new_ctx -= own
    if not new_ctx:
        return True
    limit = min(old[-1] if len(old) >= k else _MAX32, new[-1] if len(new) >= k else _MAX32)
    old_low = {e for e in old_ctx if e <= limit}
    new_low = {e for e in new_ctx if e <= limit}
    both = len(old_low & new_low)
    if old_low and both >= overlap * len(old_low):
        return True
    if new_low and both >= overlap * len(new_low):
        return True
    return not old_low and not new_low  # nothing to compare on: taken for the same, as above


# --------------------------------------------------------------------------- baseline


def _load_baseline(path: Path) -> tuple[_Hasher, frozenset[int]]:
    """Read a baseline file; ``ValueError`` names what is wrong with it."""
    data = read_data_file(path, BASELINE_FORMAT, _BASELINE_VERSION, "baseline")
    try:
        key = bytes.fromhex(str(data["key"]))
        hashes = frozenset(int(h, 16) for h in data["hashes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"bad 'key' or 'hashes' ({exc})") from exc
    if len(key) < 16:
        raise ValueError("key must be at least 16 bytes")
    return _Hasher(key), hashes


def learn_baseline(
    samples: Iterable[Sample], params: RecurringSentencesParams | None = None, *, source: str = ""
) -> dict[str, Any]:
    """The baseline of ``samples``: every candidate sentence seen in ``fire_after`` distinct requests.

    Learning counts distinct *requests* (by the set of their sentences, so a retry or a
    resend counts once), not distinct contexts as scoring does: a template's sentences
    share their context with each other, so when the user's part is short, every
    templated request looks like one context and the template would never be learnt.
    Clean traffic is assumed: whatever recurs in it is exempt afterwards.

    The hashes use a new random key that is written into the file, so the detector can
    hash with it; the file therefore lets whoever holds it confirm a guessed sentence
    (a template, which is not secret user text).
    """
    p = params or RecurringSentencesParams()
    p = p.model_copy(update={"baseline": None})
    key = secrets.token_bytes(16)
    splitter = RecurringSentencesDetector("learn", p, key=key)
    # Per sentence, the distinct requests seen (truncated hashes), up to fire_after of them.
    seen: dict[int, set[int]] = {}
    n = 0
    for sample in samples:
        n += 1
        units = splitter._units(sample.segments)
        request = hash(frozenset(u.key for u in units))
        for u in units:
            if u.words < p.min_words:
                continue
            requests = seen.setdefault(u.key, set())
            if len(requests) < p.fire_after:
                requests.add(request)
    hashes = sorted(k for k, requests in seen.items() if len(requests) >= p.fire_after)
    return {
        "format": BASELINE_FORMAT,
        "version": _BASELINE_VERSION,
        "key": key.hex(),
        "hashes": [f"{h:016x}" for h in hashes],
        "learned": {
            "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source": source,
            "records": n,
            "sentences_remembered": len(seen),
            "min_words": p.min_words,
            "fire_after": p.fire_after,
            "roles": list(p.roles),
        },
    }
