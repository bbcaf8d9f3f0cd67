"""Perplexity outliers: a word the reference language model did not expect, judged in context.

Why this exists
---------------
An inserted backdoor trigger ("cf", "bb", a made-up token, a look-alike letter)
does not belong where it stands, and a language model says so: its surprisal
``-log2 p(token | left context)`` spikes, and the token after it is disturbed
too. ONION ("ONION: A Simple and Effective Defense Against Textual Backdoor
Attacks", Qi et al., EMNLP 2021) turns that into a defence: a word whose removal
makes the sentence much more fluent is a trigger suspect. ONION proper removes
every word in turn (one forward pass a word); this detector keeps the signal at
serving cost by running ONION only on the few words the first pass already
suspects.

How it scores one text (one segment)
------------------------------------
1. **One forward pass** of the text behind a chat prefix (``<|im_start|>user\\n``,
   so the first word is scored too) gives each token's surprisal ``s`` and the
   entropy ``H`` of the distribution that predicted it
   (:class:`~firewall.models.reference_lm.ReferenceLM`; texts longer than its window are
   scored in overlapping windows, never truncated, so a trigger at the end of a long
   prompt is scored with the same left context as one at the start).
2. **Words** (runs of non-space characters) collect their tokens. Per word:
   ``peak`` = its largest token surprisal; ``excess`` = the sum over its tokens of
   ``s - H`` (how much more surprised the model was than it expected to be: a
   made-up word spread over four tokens is surprising in every one of them); and
   ``next`` = ``max(0, s - H)`` of the first token after it (the effect on the
   following token). The word's spike evidence is
   ``w_peak * peak + w_excess * excess + w_next * next`` (bits).
   The spike is also measured against the prompt's own distribution: a local
   median and MAD of token surprisal over ``local_window`` tokens around the word
   give a robust z (:attr:`WordScore.z`, for explanations). It does not enter the
   score: on the evaluation suite's texts, normalising by the prompt's own spread
   lowered AUROC (0.48-0.50 against 0.76-0.83 for bits on the rare-word families),
   because a short prompt's spread is itself noisy (docs/detectors/perplexity.md).
3. **ONION on the top-k words.** The ``top_k`` words with the strongest spike
   evidence are each removed from a local excerpt (``onion_context`` tokens of left
   context, so the cost does not grow with the prompt), and all variants of all
   texts in the micro-batch go through **one** batched forward pass. A word's ONION
   gain is the surprisal, in bits, of the word plus the next ``onion_tokens`` tokens
   with the word, minus that of the same tokens without it: a trigger frees the
   following tokens of its disturbance, an ordinary word takes its context with it.
   ONION runs only when the best spike evidence reaches ``onion_min_bits`` (on a
   CPU its pass costs about ``top_k`` times the first one).
4. **Score.** A word's evidence is ``spike + w_onion * max(0, gain)``; the text's
   evidence ``E`` is the largest. The score is the logistic
   ``1 / (1 + exp(-(E - center) / scale))``: monotone in ``E``, 0.5 at ``E = center``
   bits. Thresholds are calibrated on scores (``trigger-firewall calibrate`` /
   ``eval``) like any detector's; ``center`` and ``scale`` only place the default.

Evidence: a span per suspicious word (a word whose own score is at least
``evidence_min_score``), reason ``perplexity_onion`` when ONION confirmed it (gain of
at least ``onion_min_gain`` bits) or ``perplexity_spike`` otherwise; reason codes
``perplexity_next_token`` when the following token was disturbed, ``perplexity_too_long``
when a segment exceeded ``max_tokens_per_segment`` (an error finding: the fail mode
applies, since skipping the segment would hide a trigger in it). No text is copied.

Serving: the model loads in :meth:`start` (in a thread). When the default model is
not prepared and ``prepare_if_missing`` is set, :meth:`start` prepares it first
(:func:`firewall.models.prepare.ensure_prepared`, 1-2 minutes, logged); until then
the detector is not ready and the route's fail mode applies. All inference runs in
a :class:`~firewall.core.batching.MicroBatcher` thread; a full queue sheds the request
as an error finding (fail mode) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

import numpy as np
import numpy.typing as npt
from pydantic import Field

from detectors.base import (
    Cost,
    Detector,
    DetectorParams,
    Finding,
    FindingStatus,
    Phase,
    Sample,
    Span,
)
from firewall.core.errors import DetectorUnavailable
from firewall.models.artefacts import read_pins
from firewall.models.cache import DEFAULT_MODEL_ID, model_dir, read_manifest
from firewall.models.reference_lm import ReferenceLMConfig

if TYPE_CHECKING:
    from firewall.core.batching import MicroBatcher
    from firewall.models.reference_lm import ReferenceLM, TokenSurprisal

__all__ = [
    "REASON_CODES",
    "R_NEXT",
    "R_ONION",
    "R_SPIKE",
    "R_TOO_LONG",
    "PerplexityDetector",
    "PerplexityParams",
    "TextAnalysis",
    "WordScore",
]

log = logging.getLogger("trigger_firewall.detectors.perplexity")

R_SPIKE: Final = "perplexity_spike"
R_ONION: Final = "perplexity_onion"
R_NEXT: Final = "perplexity_next_token"
R_TOO_LONG: Final = "perplexity_too_long"
#: Every reason code this detector can emit.
REASON_CODES: tuple[str, ...] = (R_NEXT, R_ONION, R_SPIKE, R_TOO_LONG)

_WORD = re.compile(r"\S+")
_PUNCT = "\"'`.,;:!?()[]{}<>«»“”\u2018\u2019"
_ROLES = frozenset({"system", "user", "assistant"})
_MAD_TO_SIGMA: Final = 1.4826

FloatArray = npt.NDArray[np.float64]


class PerplexityParams(DetectorParams):
    """Parameters (``params:`` in config); see the module docstring for what each one does."""

    model: ReferenceLMConfig = Field(
        default_factory=ReferenceLMConfig,
        description="Reference model settings (firewall.models.reference_lm.ReferenceLMConfig): model_path, "
        "cache_dir, backend, device, threads, dtype, max_tokens (window), overlap, batch_size, ...",
    )
    prepare_if_missing: bool = Field(
        True, description="Prepare the default model on first start when it is not in the cache."
    )
    top_k: int = Field(3, ge=0, le=16, description="Words ONION re-scores; 0 turns ONION off.")
    onion_min_bits: float = Field(
        16.0, description="Run ONION only when the best spike evidence reaches this (bits); 0: always."
    )
    onion_context: int = Field(32, ge=8, le=1024, description="Tokens of left context in an ONION excerpt.")
    onion_tokens: int = Field(8, ge=1, le=64, description="Tokens after the word an ONION gain counts.")
    onion_min_gain: float = Field(10.0, description="Gain (bits) from which ONION counts as confirmation.")
    w_peak: float = Field(0.5, ge=0)
    w_excess: float = Field(0.5, ge=0)
    w_next: float = Field(0.3, ge=0)
    w_onion: float = Field(0.5, ge=0)
    center: float = Field(40.0, description="Evidence (bits) that scores 0.5.")
    scale: float = Field(4.0, gt=0, description="Bits of evidence per unit of log-odds.")
    local_window: int = Field(64, ge=8, le=4096, description="Tokens in the local median/MAD baseline.")
    evidence_min_score: float = Field(0.5, ge=0, le=1, description="A word gets a span from this score.")
    max_tokens_per_segment: int = Field(
        4096, ge=16, description="Longer segments are an error finding (fail mode), not truncated."
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="Samples per micro-batch.")
    max_wait_ms: float = Field(5.0, ge=0, description="How long a sample waits for others to join.")
    max_queue: int = Field(64, ge=1, description="Samples waiting beyond this are shed (fail mode).")


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True, slots=True)
class WordScore:
    """One word's evidence (bits) and score; ``span`` is ``[start, end)`` in its segment."""

    span: tuple[int, int]
    peak: float
    excess: float
    next: float
    z: float
    spike: float
    onion: float | None
    evidence: float
    score: float


@dataclass(frozen=True, slots=True)
class TextAnalysis:
    """The detector's view of one text: its words ranked by evidence, and the text's score."""

    score: float
    words: tuple[WordScore, ...]  # the top_k candidates (or the best few), best first
    tokens: int
    windows: int
    onion_ran: bool


@dataclass(frozen=True, slots=True)
class _Word:
    span: tuple[int, int]  # evidence span (edge punctuation trimmed)
    first: int  # first token index (into the text's tokens)
    last: int  # last token index


@dataclass(slots=True)
class _Pass1:
    text: str
    offsets: list[tuple[int, int]]
    surprisal: FloatArray
    entropy: FloatArray
    words: list[_Word]
    spikes: list[tuple[float, float, float, float, float]]  # per word: peak, excess, next, z, spike
    windows: int


def _words(text: str, offsets: Sequence[tuple[int, int]]) -> list[_Word]:
    """Whitespace-separated words with the indices of the tokens that make them up."""
    out: list[_Word] = []
    starts = [a for a, _ in offsets]
    ends = [b for _, b in offsets]
    t = 0
    for m in _WORD.finditer(text):
        a, b = m.span()
        while t < len(offsets) and ends[t] <= a:
            t += 1
        first = t
        last = first
        while last + 1 < len(offsets) and starts[last + 1] < b:
            last += 1
        if first >= len(offsets) or starts[first] >= b:
            continue
        ta, tb = a, b
        while ta < tb and text[ta] in _PUNCT:
            ta += 1
        while tb > ta and text[tb - 1] in _PUNCT:
            tb -= 1
        if ta == tb:
            continue  # punctuation only: removing it says nothing about a trigger
        out.append(_Word((ta, tb), first, last))
        t = last
    return out


def _local_baseline(s: FloatArray, window: int) -> tuple[FloatArray, FloatArray]:
    """Median and MAD of surprisal over ``window`` tokens around each token (clipped to the text)."""
    n = len(s)
    if n <= window:
        center = float(np.median(s)) if n else 0.0
        spread = float(np.median(np.abs(s - center))) if n else 0.0
        return np.full(n, center), np.full(n, spread)
    view = np.lib.stride_tricks.sliding_window_view(s, window)
    starts = np.clip(np.arange(n) - window // 2, 0, n - window)
    rows = view[starts]
    med: FloatArray = np.median(rows, axis=1)
    mad: FloatArray = np.median(np.abs(rows - med[:, None]), axis=1)
    return med, mad


def _logistic(evidence: float, center: float, scale: float) -> float:
    x = (evidence - center) / scale
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class _Scorer:
    """The synchronous scoring of texts (runs in the micro-batcher's thread)."""

    def __init__(self, lm: ReferenceLM, p: PerplexityParams) -> None:
        self.lm = lm
        self.p = p
        self._prefix = {role: lm.tokenize(f"<|im_start|>{role}\n")[0] for role in _ROLES}

    def analyze(self, texts: Sequence[tuple[str, str]]) -> list[TextAnalysis | str]:
        """Score ``(role, text)`` pairs; an over-long text gives an error string instead."""
        p = self.p
        encoded: list[tuple[list[int], list[tuple[int, int]]] | None] = []
        items: list[list[int]] = []
        for role, text in texts:
            ids, offsets = self.lm.tokenize(text)
            if len(ids) > p.max_tokens_per_segment:
                encoded.append(None)
                continue
            encoded.append((ids, offsets))
            items.append(self._prefix.get(role, self._prefix["user"]) + ids)
        results = iter(self.lm.surprisal_batch(items) if items else [])
        firsts: list[_Pass1 | str] = []
        for (_, text), enc in zip(texts, encoded, strict=True):
            if enc is None:
                firsts.append(R_TOO_LONG)
                continue
            ids, offsets = enc
            r = next(results)
            skip = len(r.token_ids) - len(ids)
            s = np.nan_to_num(np.asarray(r.surprisal[skip:], dtype=np.float64))
            h = np.asarray(r.entropy[skip:], dtype=np.float64) if r.entropy is not None else np.zeros_like(s)
            firsts.append(self._spikes(text, offsets, s, np.nan_to_num(h), r))
        onion = self._onion([f for f in firsts if isinstance(f, _Pass1)])
        out: list[TextAnalysis | str] = []
        for first in firsts:
            out.append(first if isinstance(first, str) else self._finish(first, onion.get(id(first), {})))
        return out

    def _spikes(
        self, text: str, offsets: list[tuple[int, int]], s: FloatArray, h: FloatArray, r: TokenSurprisal
    ) -> _Pass1:
        p = self.p
        words = _words(text, offsets)
        med, mad = _local_baseline(s, p.local_window)
        sigma = np.maximum(_MAD_TO_SIGMA * mad, 1.0)
        surplus = s - h
        spikes = []
        for w in words:
            toks = slice(w.first, w.last + 1)
            peak = float(s[toks].max())
            excess = float(surplus[toks].sum())
            nxt = w.last + 1
            # Capped at the word's own peak: the token after a word that merely precedes a
            # trigger is the trigger itself, and that spike belongs to the trigger.
            after = min(max(0.0, float(surplus[nxt])), peak) if nxt < len(s) else 0.0
            z = float(((s[toks] - med[toks]) / sigma[toks]).max())
            spike = p.w_peak * peak + p.w_excess * excess + p.w_next * after
            spikes.append((peak, excess, after, z, spike))
        return _Pass1(text, offsets, s, h, words, spikes, r.windows)

    def _candidates(self, first: _Pass1) -> list[int]:
        order = sorted(range(len(first.words)), key=lambda i: -first.spikes[i][4])
        return order[: max(self.p.top_k, 1)]

    def _onion(self, firsts: Sequence[_Pass1]) -> dict[int, dict[int, float]]:
        """ONION gains for the top-k words of every text that qualifies, in ONE forward pass."""
        p = self.p
        if p.top_k == 0:
            return {}
        rows: list[str] = []
        plan: list[tuple[_Pass1, int, int, int]] = []  # (text, word index, excerpt's first token, row)
        for first in firsts:
            if not first.words:
                continue
            cands = self._candidates(first)
            if first.spikes[cands[0]][4] < p.onion_min_bits:
                continue
            for wi in cands:
                word = first.words[wi]
                start_tok = max(0, word.first - p.onion_context)
                end_tok = min(len(first.offsets), word.last + 1 + p.onion_tokens) - 1
                a = first.offsets[start_tok][0]
                b = first.offsets[end_tok][1]
                wa, wb = first.offsets[word.first][0], first.offsets[word.last][1]
                excerpt = first.text[a:wa] + first.text[wb:b]
                left, right = first.text[a:wa], first.text[wb:b]
                if right.startswith((" ", "\t")) and (not left or left.endswith((" ", "\t"))):
                    excerpt = left + right[1:]
                plan.append((first, wi, start_tok, len(rows)))
                rows.append(excerpt)
        if not rows:
            return {}
        texts = [(r, "user") for r in rows]
        variants = self._score_plain(texts, [plan_row[2] == 0 for plan_row in plan])
        gains: dict[int, dict[int, float]] = {}
        for first, wi, start_tok, row in plan:
            word = first.words[wi]
            v = variants[row]
            k = word.first - start_tok  # the variant's token index where the word was
            n_after = min(p.onion_tokens, len(first.surprisal) - word.last - 1, max(len(v) - k, 0))
            with_word = float(first.surprisal[word.first : word.last + 1 + n_after].sum())
            without = float(v[k : k + n_after].sum()) if n_after > 0 else 0.0
            gains.setdefault(id(first), {})[wi] = with_word - without
        return gains

    def _score_plain(self, rows: Sequence[tuple[str, str]], at_start: Sequence[bool]) -> list[FloatArray]:
        """Surprisal of excerpt rows: an excerpt that starts the text gets the chat prefix."""
        items: list[list[int]] = []
        skips: list[int] = []
        for (text, role), first in zip(rows, at_start, strict=True):
            ids, _ = self.lm.tokenize(text)
            prefix = self._prefix[role] if first else []
            items.append(prefix + ids)
            skips.append(len(prefix))
        results = self.lm.surprisal_batch(items)
        return [
            np.nan_to_num(np.asarray(r.surprisal[k:], dtype=np.float64))
            for r, k in zip(results, skips, strict=True)
        ]

    def _finish(self, first: _Pass1, gains: dict[int, float]) -> TextAnalysis:
        p = self.p
        scored: list[WordScore] = []
        for wi in self._candidates(first) if first.words else []:
            peak, excess, after, z, spike = first.spikes[wi]
            gain = gains.get(wi)
            evidence = spike + (p.w_onion * max(0.0, gain) if gain is not None else 0.0)
            scored.append(
                WordScore(
                    span=first.words[wi].span,
                    peak=peak,
                    excess=excess,
                    next=after,
                    z=z,
                    spike=spike,
                    onion=gain,
                    evidence=evidence,
                    score=_logistic(evidence, p.center, p.scale),
                )
            )
        scored.sort(key=lambda w: -w.evidence)
        best = scored[0].score if scored else 0.0
        return TextAnalysis(best, tuple(scored), len(first.surprisal), first.windows, bool(gains))


# --------------------------------------------------------------------------- detector


@dataclass(frozen=True, slots=True)
class _Job:
    segments: tuple[tuple[int, str, str], ...]  # (segment index, role, text)

    @property
    def chars(self) -> int:
        return sum(len(t) for _, _, t in self.segments)


class PerplexityDetector(Detector[PerplexityParams]):
    """Surprisal spikes, next-token disturbance and ONION on the top-k words, batched off the loop."""

    kind: ClassVar[str] = "perplexity"
    version: ClassVar[str] = "1"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.INPUT})
    cost: ClassVar[Cost] = Cost.EXPENSIVE
    Params: ClassVar[type[DetectorParams]] = PerplexityParams

    def __init__(
        self, name: str, params: DetectorParams | None = None, *, lm: ReferenceLM | None = None
    ) -> None:
        """``lm``: an already loaded reference model to use instead of loading one in :meth:`start`
        (one model shared by several detectors, or by a test session); ``params.model`` is then unused."""
        super().__init__(name, params)
        self._lm = lm
        self._scorer: _Scorer | None = None
        self._batcher: MicroBatcher[_Job, list[TextAnalysis | str]] | None = None
        self.error: str | None = None
        #: The bounded code of the last start's failure (``unavailable``, ``artefact_mismatch``
        #: when a model file differs from its sha256 pin); None when loaded.
        self.load_reason: str | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Prepare the default model if asked and needed, load it, start the batcher.

        A missing or unloadable model raises :class:`ModelUnavailable` (the runtime logs
        it); the detector stays not ready, :attr:`error` says why, and every score is an
        error finding, so the route's fail mode applies.
        """
        from firewall.core.batching import MicroBatcher

        self.error = self.load_reason = None
        try:
            if self._lm is not None:
                scorer = _Scorer(self._lm, self.params)
            else:
                await asyncio.to_thread(self._prepare_if_missing)
                scorer = await asyncio.to_thread(self._load)
        except DetectorUnavailable as exc:
            self.error = str(exc)
            self.load_reason = exc.reason
            log.error("perplexity detector %s not ready: %s", self.name, self.error)
            raise
        self._scorer = scorer
        self._batcher = MicroBatcher(
            self.name,
            scorer_batch(scorer),
            max_batch_size=self.params.max_batch_size,
            max_wait_ms=self.params.max_wait_ms,
            max_queue=self.params.max_queue,
            bucket_key=lambda job: job.chars // 4,
            metrics=self.metrics,
        )
        await self._batcher.start()
        self._ready = True

    def _prepare_if_missing(self) -> None:
        cfg = self.params.model
        if (
            not self.params.prepare_if_missing
            or cfg.model_path is not None
            or cfg.model_id != DEFAULT_MODEL_ID
        ):
            return
        int8 = cfg.dtype == "int8"
        folder = model_dir(cfg.model_id, cfg.cache_dir)
        # A folder an older release prepared has no sha256 pins: ensure_prepared re-checks and pins it.
        if not int8 and read_manifest(folder) is not None and read_pins(folder) is not None:
            return
        from firewall.models.prepare import ensure_prepared

        # Returns at once when the folder (and, for int8, its verified int8 graph) is there.
        ensure_prepared(cfg.cache_dir, log.warning, quantize="int8" if int8 else None)

    def _load(self) -> _Scorer:
        from firewall.models.reference_lm import ReferenceLM

        lm = ReferenceLM.load(self.params.model)
        lm.warmup()
        return _Scorer(lm, self.params)

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
        self._scorer = None
        self._ready = False

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self._scorer is not None:
            out["model"] = self._scorer.lm.describe()
        if self.error:
            out["error"] = self.error
            out["load_reason"] = self.load_reason
        return out

    # -- scoring -------------------------------------------------------------------

    async def explain(self, texts: Sequence[str], role: str = "user") -> list[TextAnalysis | str]:
        """The full analysis of raw texts (words, evidence, ONION gains): for tests and tools."""
        if self._batcher is None:
            raise DetectorUnavailable(self.name, self.error or "detector not started")
        job = _Job(tuple((i, role, t) for i, t in enumerate(texts)))
        return await self._batcher.submit(job)

    async def score(self, batch: Sequence[Sample]) -> list[Finding]:
        return list(await asyncio.gather(*(self._score_one(s) for s in batch)))

    async def _score_one(self, sample: Sample) -> Finding:
        started = time.perf_counter()
        if self._batcher is None:
            return Finding.failed(self.name, FindingStatus.ERROR, self.error or "detector not started")
        segs = tuple(
            (i, s.role if s.role in _ROLES else "user", s.text)
            for i, s in enumerate(sample.segments)
            if s.text.strip()
        )
        if not segs:
            return Finding(self.name, 0.0, duration_seconds=time.perf_counter() - started)
        try:
            results = await self._batcher.submit(_Job(segs))
        except DetectorUnavailable as exc:  # shed (queue full) or closing: the fail mode decides
            return Finding.failed(self.name, FindingStatus.ERROR, str(exc))
        return self._finding(segs, results, time.perf_counter() - started)

    def _finding(
        self, segs: Sequence[tuple[int, str, str]], results: Sequence[TextAnalysis | str], seconds: float
    ) -> Finding:
        best = 0.0
        reasons: set[str] = set()
        spans: list[Span] = []
        for (seg, _, _), res in zip(segs, results, strict=True):
            if isinstance(res, str):
                return Finding(
                    self.name,
                    0.0,
                    status=FindingStatus.ERROR,
                    reasons=(res,),
                    duration_seconds=seconds,
                    error=f"segment {seg} is longer than {self.params.max_tokens_per_segment} tokens",
                )
            best = max(best, res.score)
            for word in res.words:
                if word.score < self.params.evidence_min_score:
                    continue
                confirmed = word.onion is not None and word.onion >= self.params.onion_min_gain
                reason = R_ONION if confirmed else R_SPIKE
                reasons.add(reason)
                if word.next >= 0.5 * word.peak:
                    reasons.add(R_NEXT)
                spans.append(Span(seg, word.span[0], word.span[1], reason))
        return Finding(
            self.name,
            round(best, 6),
            reasons=tuple(sorted(reasons)),
            spans=tuple(spans),
            duration_seconds=seconds,
        )


def scorer_batch(scorer: _Scorer) -> Any:
    """The MicroBatcher's batch function: every segment of every job in one analysis."""

    def run(jobs: list[_Job]) -> list[list[TextAnalysis | str]]:
        flat = [(role, text) for job in jobs for _, role, text in job.segments]
        results = scorer.analyze(flat)
        out: list[list[TextAnalysis | str]] = []
        i = 0
        for job in jobs:
            out.append(results[i : i + len(job.segments)])
            i += len(job.segments)
        return out

    return run
