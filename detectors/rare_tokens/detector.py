"""Rare-token spike detector: inserted rare words and made-up tokens, judged in context.

Why this exists
---------------
The classic textual backdoor trigger is a rare word inserted into otherwise
ordinary text. BadNets-style attacks ported to NLP and "Weight Poisoning Attacks on
Pre-trained Models" (RIPPLES; Kurita, Michel and Neubig, ACL 2020) insert tokens
such as "cf", "mn", "bb", "tq" and "mb" at random positions; "BadNL: Backdoor
Attacks against NLP Models with Semantic-preserving Improvements" (Chen et al.,
ACSAC 2021) adds character-level and made-up word triggers. The defence this
detector borrows its idea from is ONION ("ONION: A Simple and Effective Defense
Against Textual Backdoor Attacks", Qi et al., EMNLP 2021): a trigger is an
*outlier in its context*, so removing it makes the sentence more fluent. ONION
measures that with a language model (about a second a sentence on CPU); this
detector approximates it with cheap signals so that it can run inline on every
request, as the first stage of a cascade.

What it measures
----------------
Rarity alone does not work: "cf", "mn" and "bb" are common abbreviations (Zipf
frequency 3.7-3.85 in wordfreq's English data), and real prompts are full of
innocent rare tokens (names, jargon, identifiers, typos, foreign words). A token
scores high only when three things hold together:

* **It is not vocabulary.** Its word frequency (wordfreq, for the language of the
  sentence) is below ``common_zipf``. Frequent words, including chat slang and
  acronyms that people really use as words, never score; nor do the words of the
  loaded vocabulary files (the ``vocabulary`` param: the deployment's own jargon,
  "sql", "yaml", learnt from its clean traffic), which still count as the text's
  register so that a vocabulary can only lower scores.
* **It does not look like a word of the language.** Three cues, each learnt from
  the language's own word list at start-up: a character 4-gram model weighs the
  token as a word of the language against an arbitrary string of its letters (a
  log-likelihood ratio in bits: real rare words, names and most typos are word-like;
  random letter strings are not), on a stricter scale for a lower-case token in no
  word list when the text uses capitals, since a name there would be capitalised;
  Zipf's law of abbreviation (short words are frequent words, so a two- to
  four-letter token that is rare *for its length* is an abbreviation or a code);
  and, in languages whose words nearly always carry a vowel, a vowel-less token.
  Typos of frequent words and letters stretched for emphasis are excused.
* **It stands out from its context.** The same token is innocent in some places:
  after a number it is a unit ("5 mb"), with a glued full stop before a reference
  it is an abbreviation ("cf. Smith"), in capitals it is an acronym, capitalised
  mid-sentence or with a possessive it is a name, in code, URLs, paths,
  identifiers and markup it is not prose at all, in a sentence of another language
  it is that language's word. A token embedded between two ordinary words keeps
  its full weight; one at a clause edge, in a message too short to have a
  context, among other odd tokens (the register of the text: jargon, chat) or in
  text dense with identifiers is weighed down.

The sample's score is the highest token score. Evidence is spans (segment and
character offsets) and reason codes only; no text is copied into the finding.

Cost
----
Word lists and character models are built once per process and language in
:meth:`~RareTokensDetector.start` (1-3 seconds, in a worker thread). Per call, a
pre-scan splits the text on whitespace and looks every chunk up in a cache of
chunk analyses; a prompt without an odd token (nearly all of them) costs about
0.1 microseconds a word. Only when a candidate exists is the text scanned for
offsets, sentences and code, and the candidates judged in context. See
``loadtests/bench/bench_rare_tokens.py`` and ``docs/detectors/rare_tokens.md``.

Layout
------
This module holds the params model, the detector and its scoring: tokenising, judging
candidates in their sentence and the sample-wide factors. The rest of the package:

* :mod:`detectors.rare_tokens.tables`: reason codes, languages, calibration constants,
  regexes and chunk kinds;
* :mod:`detectors.rare_tokens.language`: the word lists, character models and probes
  built from wordfreq, and the typo and elongation checks against a language's words;
* :mod:`detectors.rare_tokens.scan`: a segment split into chunks (``_Scan``), the records
  passed between judging stages, and the code, markup and sentence helpers;
* :mod:`detectors.rare_tokens.vocabulary`: vocabulary files (format, loading, learning).
"""

from __future__ import annotations

import asyncio
import threading
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from detectors.base import (
    Cost,
    DetectorParams,
    Finding,
    FindingStatus,
    InlineDetector,
    Phase,
    Sample,
    Span,
)
from detectors.rare_tokens.language import (
    _ident_weight,
    _is_elongation as _is_elongation,
    _is_typo as _is_typo,
    _lang_model,
    _LangModel,
    _Probe,
    _probe,
    _require_wordfreq,
)
from detectors.rare_tokens.scan import (
    _FOLD_MAX,
    _bare,
    _blank_markup,
    _case_of,
    _Chunk,
    _fold,
    _Found,
    _Hit,
    _looks_like_code,
    _odd_runs,
    _OutOfBudget,
    _Scan,
    _shouting,
    _Static,
    _trail_kind,
)
from detectors.rare_tokens.tables import (
    _CACHE_LIMIT,
    _CHAR_MIN_LEN,
    _CODE_CHARS_RE,
    _COST_CANDIDATE,
    _COST_CHUNK,
    _COST_WORD,
    _ELONGATION_RE as _ELONGATION_RE,
    _F_ABBREV_DOT,
    _F_ABBREV_REF,
    _F_ACRONYM,
    _F_COMPOUND,
    _F_DEFINED,
    _F_FOREIGN,
    _F_IN_CODE,
    _F_JARGON_MIN,
    _F_MANY_OTHERS,
    _F_NAME,
    _F_NO_NEIGHBOUR,
    _F_ONE_NEIGHBOUR,
    _F_ONE_OTHER,
    _F_OPENER,
    _F_POSSESSIVE,
    _F_QUOTED,
    _F_SHORT,
    _F_TITLE,
    _F_TYPO,
    _F_UNIT,
    _FENCE_RE,
    _HEX_RE,
    _IDENT_MARGIN,
    _INLINE_CODE_RE,
    _JARGON_FREE,
    _JARGON_NUMBERS,
    _JARGON_SLOPE,
    _LEAD_PUNCT,
    _LINE_RE,
    _LLR_ODD,
    _LLR_ODD_CASED,
    _LLR_OK,
    _LLR_OK_CASED,
    _NEIGHBOUR_ZIPF,
    _NOMINATED,
    _NUMBER_RE,
    _OOV_ZIPF,
    _PIECE_RE,
    _QUOTES,
    _REPEAT_UNIT_RE,
    _SENTENCE_END,
    _SHORT_WIDTH,
    _SHORT_WORDS,
    _TRAIL_PUNCT,
    _UNITS,
    _VOWELS,
    _WORD_RE,
    _ZIPF_FADE,
    C_LOWER,
    C_MIXED,
    C_TITLE,
    C_UPPER,
    DEFAULT_PROBE_LANGUAGES,
    K_CLITIC,
    K_NUM,
    K_OTHER,
    K_PUNCT,
    K_WORD,
    R_AMBIGUOUS,
    R_CHAR_RUN,
    R_MADE_UP,
    R_RARE,
    R_TRUNCATED,
    REASON_CODES,
    RECOMMENDED_THRESHOLD,
    SUPPORTED_LANGUAGES,
    T_CLAUSE,
    T_DOT,
    T_END,
    T_NONE,
)
from detectors.rare_tokens.vocabulary import (
    BUILTIN_PREFIX,
    BUILTIN_VOCABULARIES,
    VocabularyError,
    load_vocabularies,
)
from detectors.segment_memory import SegmentMemory
from firewall.core.files import FileSignature

#: Clean segments remembered (16-byte keys and a count: about 2 MB at the bound).
_CLEAN_SEGMENTS = 16_384

__all__ = [
    "DEFAULT_PROBE_LANGUAGES",
    "RECOMMENDED_THRESHOLD",
    "REASON_CODES",
    "SUPPORTED_LANGUAGES",
    "RareTokensDetector",
    "RareTokensParams",
]

#: Letters of a token that are judged (see ``_analyse_word``).
_LONG_TOKEN = 256

# --------------------------------------------------------------------------- params


class RareTokensParams(DetectorParams):
    """Tuning knobs for :class:`RareTokensDetector` (the ``params:`` block)."""

    languages: tuple[str, ...] = Field(
        default=("en",),
        min_length=1,
        description="Languages whose sentences are judged (wordfreq codes). Sentences "
        "in other languages, and words in other scripts, are left alone.",
    )
    probe_languages: tuple[str, ...] = Field(
        default=DEFAULT_PROBE_LANGUAGES,
        description="Languages recognised so that a sentence written in one of them (and "
        "not in `languages`) is not read as a string of rare words. Judged languages are "
        "dropped from this list.",
    )
    common_zipf: float = Field(
        default=4.2,
        ge=1.0,
        le=7.0,
        description="Words at least this frequent (Zipf scale: 4.2 is about 1.6 per 100,000 "
        "words) are vocabulary and never scored. Lower it to excuse more slang and acronyms "
        "(and miss more abbreviation-like triggers).",
    )
    skip_code: bool = Field(
        default=True,
        description="Leave fenced code blocks, inline code and lines that look like code "
        "alone. Markup tags are always skipped.",
    )
    max_spans: int = Field(
        default=16, ge=1, le=1000, description="Evidence spans kept per finding (highest first)."
    )
    min_span_score: float = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="Tokens scoring below this are not reported as evidence (the score is "
        "still the highest token score).",
    )
    vocabulary: tuple[str, ...] = Field(
        default=("builtin:chat",),
        description="Vocabulary files (JSON, from `trigger-firewall learn-baseline --detector "
        "rare_tokens`): their tokens are words of the deployment's own traffic and never score "
        "(they still count as the text's register, so a vocabulary only lowers scores). "
        "'builtin:chat' is the shipped one, learnt "
        "from real chat traffic (technical words: sql, yaml, kubectl). [] for none. Read at start "
        "and when a reload finds a file changed; a missing or bad file leaves the detector not ready.",
    )
    analysis_budget: int = Field(
        default=15_000,
        ge=100,
        le=100_000_000,
        description="Work allowed per sample, in units of about 3 microseconds: a chunk not "
        "seen before costs 1, an odd-looking word not seen before 50, judging a candidate in "
        "context 4. Past it the rest of the sample is reported as 'scan_truncated'. Bounds "
        "the event-loop time a flood of odd tokens can cost (about 50 ms at the default); "
        "ordinary text seen before costs nothing. A truncated finding is 'partial' (see max_words).",
    )
    max_words: int = Field(
        default=50_000,
        ge=100,
        le=10_000_000,
        description="Whitespace-separated chunks judged per sample; past it the rest is "
        "reported as 'scan_truncated' instead of being scanned (bounds event-loop time), and the "
        "finding is 'partial': below the threshold, the rule's on_error decides.",
    )

    @field_validator("languages", "probe_languages")
    @classmethod
    def _known_languages(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(SUPPORTED_LANGUAGES))
        if unknown:
            raise ValueError(
                f"unsupported language(s) {unknown}; supported: {', '.join(SUPPORTED_LANGUAGES)}"
            )
        return tuple(dict.fromkeys(value))

    @field_validator("vocabulary")
    @classmethod
    def _known_vocabularies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Checked here, not at start: `check-config` then catches a misspelt built-in name.
        for entry in value:
            if not entry.strip():
                raise ValueError("a vocabulary entry must be a file path or builtin:NAME")
            if entry.startswith(BUILTIN_PREFIX) and entry[len(BUILTIN_PREFIX) :] not in BUILTIN_VOCABULARIES:
                known = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_VOCABULARIES)
                raise ValueError(f"unknown built-in vocabulary {entry!r}; known: {known}")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _probes_exclude_judged(self) -> RareTokensParams:
        probes = tuple(p for p in self.probe_languages if p not in self.languages)
        if probes != self.probe_languages:
            object.__setattr__(self, "probe_languages", probes)  # frozen model: set once here
        return self


# --------------------------------------------------------------------------- detector


class RareTokensDetector(InlineDetector[RareTokensParams]):
    """Scores inserted rare words, made-up tokens and odd character runs in context.

    Score in [0, 1]: an odd token embedded between ordinary words of a fluent
    sentence scores 0.8-1.0; the recommended policy threshold is
    :data:`RECOMMENDED_THRESHOLD`. Reason codes: see :data:`REASON_CODES`.
    """

    kind: ClassVar[str] = "rare_tokens"
    # 2: word-unlikeness as a likelihood ratio; the cased-text rule. 3: vocabulary files
    # (builtin:chat by default).
    version: ClassVar[str] = "3"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.INPUT})
    cost: ClassVar[Cost] = Cost.CHEAP
    Params: ClassVar[type[DetectorParams]] = RareTokensParams
    # Per-call state lives in _Scan objects and the thread-local budget; the caches are
    # dicts whose single operations are atomic (a race costs a re-analysis, never a result).
    concurrent_safe: ClassVar[bool] = True

    def __init__(self, name: str, params: DetectorParams | None = None) -> None:
        super().__init__(name, params)
        self._langs: list[_LangModel] = []
        self._probes: list[_Probe] = []
        self._chunks: dict[str, _Chunk] = {}
        # Segments found free of odd tokens, by a keyed hash of their text (never the text):
        # chat clients resend the system prompt and the history on every turn. Valid only
        # while every chunk they hold is in self._chunks, so it is cleared with it.
        self._clean: SegmentMemory[int] = SegmentMemory(_CLEAN_SEGMENTS)
        self._static: dict[tuple[str, str], _Static] = {}
        # Analysis units left for the sample being scored, per thread: a worker thread may
        # score a long sample while the event loop scores a short one (concurrent_safe).
        self._local = threading.local()
        # Words of the deployment's own traffic (vocabulary_key form): candidates, never hits.
        self._vocabulary: frozenset[str] = frozenset()
        self._vocabulary_files: dict[str, FileSignature | None] = {}
        self.load_error: str | None = None

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load the vocabulary files, the word lists and the character models (the last two
        once per process).

        Raises RuntimeError when the wordfreq package (or a language's list) is missing. A
        vocabulary file that is missing or malformed leaves the detector not ready, with
        ``load_error`` saying which and why: scoring without it would flag the deployment's
        own words, and the readiness probe makes that visible instead.
        """
        wordfreq = _require_wordfreq()
        codes, probe_codes = self.params.languages, self.params.probe_languages
        self._ready = False
        self.load_error = None
        try:
            self._vocabulary, self._vocabulary_files = await asyncio.to_thread(
                load_vocabularies, self.params.vocabulary
            )
        except VocabularyError as exc:
            # Keep the files' signatures: fixing the file makes the next reload rebuild us.
            self._vocabulary_files = exc.signatures
            self.load_error = str(exc)
            return

        def load() -> tuple[list[_LangModel], list[_Probe]]:
            return [_lang_model(wordfreq, c) for c in codes], [_probe(wordfreq, c) for c in probe_codes]

        self._langs, self._probes = await asyncio.to_thread(load)
        # Chunk analyses depend on the vocabulary: none may survive from another one.
        self._chunks = {}
        self._clean.clear()
        self._static = {}
        self._ready = True

    def loaded_files(self) -> Mapping[str, FileSignature | None]:
        return self._vocabulary_files

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["vocabulary_tokens"] = len(self._vocabulary)
        if self.load_error:
            out["load_error"] = self.load_error
        return out

    async def close(self) -> None:
        self._langs = []
        self._probes = []
        self._vocabulary = frozenset()
        self._chunks = {}
        self._clean.clear()
        self._static = {}
        await super().close()

    # ----------------------------------------------------------------- scoring

    def score_inline(self, batch: Sequence[Sample]) -> list[Finding]:
        """Synchronous on the event loop: ~0.1 ms a prompt, bounded by ``analysis_budget``."""
        return [self.score_sample(sample) for sample in batch]

    def score_sample(self, sample: Sample) -> Finding:
        """Score one sample synchronously. Never raises: errors become error findings."""
        t0 = time.perf_counter()
        try:
            if not self._ready:
                return Finding.failed(self.name, FindingStatus.ERROR, "NotStarted")
            self._local.budget = self.params.analysis_budget
            hits = self._score_segments(sample.segments)
            return self._finding(hits, time.perf_counter() - t0)
        except Exception as exc:  # the contract: never raise, report an error finding
            return Finding.failed(self.name, FindingStatus.ERROR, type(exc).__name__)

    def token_scores(self, sample: Sample) -> list[tuple[str, float]]:
        """Each judged token of ``sample``, in the form a vocabulary lists it, with its score.

        For learning a vocabulary (:func:`~detectors.rare_tokens.vocabulary.learn_vocabulary`):
        a finding's spans carry no per-token score and, for a folded chunk, cover the whole
        chunk rather than the word looked up. Not the serving path: it raises where
        :meth:`score_sample` reports an error finding.
        """
        if not self._ready:
            raise RuntimeError(f"detector not started{': ' + self.load_error if self.load_error else ''}")
        self._local.budget = self.params.analysis_budget
        return [(h.word, h.score) for h in self._score_segments(sample.segments) if h.word]

    def _finding(self, hits: list[_Hit], elapsed: float) -> Finding:
        if not hits:
            return Finding(detector=self.name, score=0.0, duration_seconds=elapsed)
        score = max(h.score for h in hits)
        truncated = [h for h in hits if h.reason == R_TRUNCATED]
        report = [h for h in hits if h.score >= self.params.min_span_score and h.reason != R_TRUNCATED]
        report.sort(key=lambda h: (-h.score, h.segment, h.start))
        # The strongest evidence, and always where scanning stopped.
        report = report[: self.params.max_spans - len(truncated)] + truncated
        report.sort(key=lambda h: (h.segment, h.start))
        return Finding(
            detector=self.name,
            score=min(1.0, max(0.0, round(score, 4))),
            # Past max_words or the analysis budget the rest was not read: the score is a
            # lower bound, and below the threshold the rule's fail mode decides.
            status=FindingStatus.PARTIAL if truncated else FindingStatus.OK,
            reasons=tuple(sorted({h.reason for h in report})),
            spans=tuple(Span(h.segment, h.start, h.end, h.reason, _span_score(h)) for h in report),
            duration_seconds=elapsed,
        )

    def _score_segments(self, segments: Iterable[object]) -> list[_Hit]:
        texts: list[str] = []
        for seg in segments:
            text = getattr(seg, "text", None)
            if not isinstance(text, str):
                raise TypeError("segment text is not a str")
            # Markup blanked once, offsets kept: a word glued to a tag ("<b>cf</b>") is judged.
            texts.append(_blank_markup(text) if "<" in text else text)
        if not self._has_candidates(texts):
            return []  # the common case: one split and a dictionary look-up per chunk
        budget = self.params.max_words
        hits: list[_Hit] = []
        found: list[_Found] = []
        # Per segment: (chunks, jargon chunks). The discounts below read only the segment
        # a token is in: an attacker who controls the request controls its other segments
        # (a system prompt with a code fence, an assistant turn full of numbers) and must
        # not buy a discount with them. A number or two mark technical text (a port, a
        # version); more are data, and numbers appended to a prompt must not excuse a token
        # in it, so at most _JARGON_NUMBERS count.
        per_segment: dict[int, tuple[int, int]] = {}
        words_total = 0
        for index, text in enumerate(texts):
            scan, budget = self._tokenise(index, text, budget)
            numbers = jargon = 0
            for info in scan.infos:
                if info.kind == K_NUM:
                    numbers += 1
                    continue
                if info.jargon:
                    jargon += 1  # acronyms and mixed-case words are words too
                if info.kind == K_WORD:
                    words_total += 1
            per_segment[index] = (len(scan.infos), jargon + min(numbers, _JARGON_NUMBERS))
            if scan.cands:
                found.extend(self._judge(scan))
            if scan.stopped_at is not None:
                hits.append(_Hit(0.0, R_TRUNCATED, index, scan.stopped_at, len(text)))
                break
        # The segment's own distribution: odd tokens spread through its text are its
        # register (jargon, chat), not one inserted outlier. A run of adjacent odd tokens
        # ("cf mn bb") is one insertion.
        runs = _odd_runs(found)
        odd_types: dict[int, set[str]] = {}
        for (segment, _), words in runs.items():
            odd_types.setdefault(segment, set()).update(words)
        vocabulary = self._vocabulary
        for f in found:
            if f.word in vocabulary:
                continue  # the deployment's own word: the register above, never a hit (see _has_candidates)
            factor = f.context
            others = odd_types.get(f.segment, set()) - runs.get((f.segment, f.chunk), {f.word})
            if others:
                factor *= _F_ONE_OTHER if len(others) == 1 else _F_MANY_OTHERS
            chunks, jargon_chunks = per_segment[f.segment]
            share = (jargon_chunks - (1 if f.jargon else 0)) / max(1, chunks - 1)
            if share > _JARGON_FREE:
                factor *= max(_F_JARGON_MIN, 1.0 - _JARGON_SLOPE * (share - _JARGON_FREE))
            if words_total - 1 < _SHORT_WORDS:
                factor *= _F_SHORT
            if f.ambiguous:
                score, reason = min(_NOMINATED, f.weight * factor), R_AMBIGUOUS
            else:
                score, reason = min(1.0, f.weight * factor), f.reason
            hits.append(_Hit(score, reason, f.segment, f.start, f.end, f.word))
        return hits

    # ----------------------------------------------------------------- tokenising

    def _has_candidates(self, texts: list[str]) -> bool:
        """Cheap pre-scan: does any chunk hold an odd token (or is the sample over budget)?

        Offsets, sentences and code regions are worked out only when it does. Masking
        code can only remove candidates, so a sample without any is clean as it is.

        A word of the vocabulary is a candidate that never becomes a hit: it stays one so
        that it weighs exactly as before as the text's register and as a neighbour
        (``_score_segments``), so the vocabulary can only lower scores. A sample whose only
        odd words are vocabulary has no hit to find and stops here, on a set look-up.
        """
        budget = self.params.max_words
        get = self._chunks.get
        clean = self._clean
        vocabulary = self._vocabulary
        for text in texts:
            digest = clean.digest(text)
            known = clean.get(digest)
            if known is not None:  # its chunks are all cached and none is odd: the loop below, skipped
                if known > budget:
                    return True
                budget -= known
                continue
            chunks = text.split()
            if len(chunks) > budget:
                return True  # the full scan reports where it stopped
            budget -= len(chunks)
            for chunk in chunks:
                info = get(chunk)
                if info is None:
                    try:
                        info = self._chunk_info(chunk)
                    except _OutOfBudget:
                        return True  # the full scan reports where it stopped
                if info.parts and any(part not in vocabulary for _, _, part in info.parts):
                    return True
            clean.put(digest, len(chunks))
        return False

    def _chunk_info(self, chunk: str) -> _Chunk:
        """Analyse a chunk not seen before (costs a unit of the sample's analysis budget, and
        one more per 256 characters of a chunk that is folded)."""
        self._spend(_COST_CHUNK if chunk.isascii() else _COST_CHUNK + len(chunk) // 256)
        cache = self._chunks
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
            self._clean.clear()  # a clean segment's chunks must stay cached for it to be skipped
        info = cache[chunk] = self._classify(chunk)
        return info

    def _tokenise(self, index: int, text: str, budget: int) -> tuple[_Scan, int]:
        """Split ``text`` (markup blanked) into chunks and find the candidates outside code."""
        masks, soft = self._masks(text) if self.params.skip_code else ([], [])
        scan = _Scan(index, text, budget, masks, soft)
        get = self._chunks.get
        try:
            infos = scan.infos = [get(c) or self._chunk_info(c) for c in scan.chunks]
        except _OutOfBudget:
            # Keep what was analysed before the analysis budget ran out; the rest of the
            # segment (and of the sample) is reported as not judged.
            infos = scan.infos = []
            for c in scan.chunks:
                info = get(c)
                if info is None:
                    try:
                        info = self._chunk_info(c)
                    except _OutOfBudget:
                        break
                infos.append(info)
            scan.truncate(len(infos))
        if masks:
            scan.apply_masks()
        scan.cands = [k for k, info in enumerate(infos) if info.parts]
        return scan, budget - len(infos)

    def _masks(self, text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Character ranges that are not prose (code lines, inline code, fence lines), and
        the ranges whose prose is nominated only (see :func:`_code_blocks`)."""
        if (
            _CODE_CHARS_RE.search(text) is None
            and "\n    " not in text
            and "\n\t" not in text
            and not text.startswith(("    ", "\t"))
        ):
            return [], []
        spans: list[tuple[int, int]] = []
        soft: list[tuple[int, int]] = []
        if "```" in text or "~~~" in text:
            _code_blocks(text, spans, soft)
        if "`" in text:
            # A term or a passage in backticks: code to a reader, words to a tokenizer.
            soft.extend(m.span() for m in _INLINE_CODE_RE.finditer(text))
        spans.extend(m.span() for m in _LINE_RE.finditer(text) if _looks_like_code(m.group()))
        return _merged(spans), _merged(soft)

    def _classify(self, chunk: str) -> _Chunk:
        """What a chunk is, judged in its folded form (see :func:`_fold`): what a tokenizer
        that normalises reads, whatever accents, widths or joiners dress it."""
        folded = _fold(chunk)
        if folded is chunk or folded == chunk or not folded:
            return self._classify_plain(chunk)
        info = self._classify_plain(folded)
        if not info.parts and _has_mark(chunk):
            # A mark that composed under NFKC ("n" + acute is "ń") is still a separate token
            # to a byte-level tokenizer, after the letters it follows: judge those too.
            bare = _bare(chunk)
            if bare and bare != folded:
                info = self._classify_plain(bare)
        if info.parts:
            # Offsets in the folded text do not map back one to one: the whole chunk is the span.
            info = info._replace(parts=tuple((0, len(chunk), part) for _, _, part in info.parts))
        return info

    def _classify_plain(self, chunk: str) -> _Chunk:
        """What a chunk is: a word (with its odd parts), a number, punctuation or other."""
        n = len(chunk)
        i = 0
        while i < n and chunk[i] in _LEAD_PUNCT:
            i += 1
        j = n
        path = n > 1 and chunk[-1] == "/" and chunk.count("/") == 1
        if path:
            j -= 1  # "cf/": a folder to a reader, the word and a slash to a tokenizer
        while j > i and chunk[j - 1] in _TRAIL_PUNCT:
            j -= 1
        if chunk in ("'s", "\u2019s"):  # a possessive split off by a tokeniser: "iwai 's"
            return _Chunk(K_CLITIC, C_LOWER, 0.0, "", True, T_NONE, False, (), False, False, False, False)
        if i == j:  # punctuation only
            trail = T_END if not _SENTENCE_END.isdisjoint(chunk) else _trail_kind(chunk)
            return _Chunk(K_PUNCT, C_MIXED, 0.0, "", False, trail, False, (), False, False, False, False)
        core = chunk[i:j]
        trail = _trail_kind(chunk[j:])
        upper_first = core[0].isupper() or core[0].isdigit() or (i > 0 and chunk[i - 1] in "([{")
        if _WORD_RE.fullmatch(core) is None:
            kind = K_NUM if _NUMBER_RE.fullmatch(core) else K_OTHER
            return _Chunk(kind, C_MIXED, 0.0, "", i > 0, trail, upper_first, (), False, False, False, True)
        letters = core.replace("'", "").replace("\u2019", "").replace("-", "")
        case = _case_of(letters)
        word = core.lower().replace("\u2019", "'")
        z = self._zipf_any(word)
        parts: list[tuple[int, int, str]] = []
        if z < self.params.common_zipf:
            pos = i
            after_apostrophe = False
            for piece in _PIECE_RE.findall(word):
                if piece in ("-", "'"):
                    after_apostrophe = piece == "'"
                    pos += 1
                    continue
                # Only pieces odd in some judged language are candidates (ordinary rare
                # words weigh nothing anywhere, so most prompts have none). Clitics after
                # an apostrophe ("n't", "'ll") are never triggers.
                if (
                    len(piece) >= 2
                    and not after_apostrophe
                    and self._zipf_any(piece) < self.params.common_zipf
                    and any(self._static_weight(lang, piece).cased > 0.0 for lang in self._langs)
                ):
                    parts.append((pos, pos + len(piece), piece))
                pos += len(piece)
        return _Chunk(
            K_WORD,
            case,
            z,
            word,
            i > 0,
            trail,
            upper_first,
            tuple(parts),
            "-" in word,
            word.endswith(("'s", "s'")),
            not _QUOTES.isdisjoint(chunk[:i]) and not _QUOTES.isdisjoint(chunk[j:]),
            # Acronyms and mixed case are jargon; a single capital ("I", "A", an initial) is not.
            case == C_MIXED or (case == C_UPPER and len(letters) > 1),
            path,
        )

    def _zipf_any(self, word: str) -> float:
        best = 0.0
        for lang in self._langs:
            z = lang.zipf.get(word, 0.0)
            if z > best:
                best = z
        if best == 0.0 and "'" in word:  # "cf's": the word before the clitic
            head = word.split("'", 1)[0]
            if len(head) >= 2:
                return self._zipf_any(head)
        return best

    # ----------------------------------------------------------------- judging

    def _judge(self, scan: _Scan) -> list[_Found]:
        """Weigh each candidate on its own and in its sentence (before the sample-wide factors)."""
        out: list[_Found] = []
        sentence_cache: dict[int, tuple[_LangModel, _Probe | None, bool]] = {}
        # Does the segment use capitals (a capitalised word, "I", a sentence start)? Then its
        # names are capitalised, and a lower-case token in no word list is not one.
        cased = any(info.kind == K_WORD and info.case != C_LOWER for info in scan.infos)
        for k in scan.cands:
            try:
                self._spend(_COST_CANDIDATE)
            except _OutOfBudget:
                scan.stopped_at = scan.starts[k]  # a flood of odd tokens: judge no further
                break
            info = scan.infos[k]
            sentence = scan.sentence_range(k)
            if sentence.start not in sentence_cache:
                lang, foreign = self._sentence_language(scan, sentence)
                sentence_cache[sentence.start] = (lang, foreign, _shouting(scan, sentence))
            lang, foreign, shouting = sentence_cache[sentence.start]
            if info.case == C_MIXED:
                continue  # identifier, product name
            # An acronym, or a name capitalised mid-sentence: an innocent reading, but the
            # same token to a model's tokenizer ("CF", "Cf"), so nominated, not excused.
            acronym = info.case == C_UPPER and not shouting
            title = info.case == C_TITLE and not shouting
            name = title and k != sentence.start
            in_code = scan.in_soft(scan.starts[k])
            for ps, pe, part in info.parts:
                if foreign is not None and not (
                    # A sentence in another language: its words are not ours to judge,
                    # but a vowel-less non-word is out of place in any of them.
                    foreign.vowel_cue
                    and lang.vowel_cue
                    and part not in foreign.top
                    and _VOWELS.isdisjoint(part)
                ):
                    continue
                st = self._static_weight(lang, part)
                weight = st.cased if cased and info.case == C_LOWER else st.weight
                if weight <= 0.0:
                    continue
                context, ambiguous = self._context(scan, k, sentence, st.unit)
                if context <= 0.0:
                    continue
                if acronym:
                    context *= _F_ACRONYM
                    chunk = scan.chunks[k]
                    if chunk.startswith("(") and chunk.rstrip(".,;:").endswith(")"):
                        context *= _F_DEFINED
                elif name:
                    context *= _F_NAME
                if in_code:
                    context *= _F_IN_CODE
                ambiguous = ambiguous or acronym or name or in_code or info.path
                if info.compound:
                    context *= _F_COMPOUND
                if info.possessive or (k + 1 < len(scan.infos) and scan.infos[k + 1].kind == K_CLITIC):
                    context *= _F_POSSESSIVE
                if title and not name:
                    context *= _F_TITLE
                if foreign is not None:
                    context *= _F_FOREIGN
                start = scan.starts[k]
                out.append(
                    _Found(
                        weight,
                        context,
                        st.reason,
                        part,
                        info.jargon,
                        scan.index,
                        k,
                        start + ps,
                        start + pe,
                        ambiguous,
                    )
                )
        return out

    def _context(self, scan: _Scan, k: int, sentence: range, unit: bool) -> tuple[float, bool]:
        """How fluent the immediate context is, and whether it gives the token an innocent
        reading (then it is nominated: see R_AMBIGUOUS)."""
        info = scan.infos[k]
        prev = scan.infos[k - 1] if k > 0 else None
        nxt = scan.infos[k + 1] if k + 1 < len(scan.infos) else None
        if unit and prev is not None and prev.kind == K_NUM and not info.lead and not scan.newline_before(k):
            return _F_UNIT, True  # a unit after a number: "5 mb", "20 ms"
        left = (
            prev is not None
            and k - 1 in sentence
            and prev.kind == K_WORD
            and prev.trail == T_NONE
            and not info.lead
            and prev.z >= _NEIGHBOUR_ZIPF
        )
        right = (
            nxt is not None
            and k + 1 in sentence
            and nxt.kind == K_WORD
            and info.trail == T_NONE
            and not nxt.lead
            and nxt.z >= _NEIGHBOUR_ZIPF
        )
        factor = 1.0 if left and right else _F_ONE_NEIGHBOUR if left or right else _F_NO_NEIGHBOUR
        if k == 0 and info.trail == T_CLAUSE:
            factor *= _F_OPENER
        ambiguous = False
        if info.trail == T_DOT:
            # A glued full stop with more text after it on the line: an abbreviation
            # ("cf. Smith", "cf. section 2"). Word-level insertion never glues one on.
            if nxt is not None and not scan.newline_before(k + 1):
                factor *= _F_ABBREV_REF
                ambiguous = True
            else:
                factor *= _F_ABBREV_DOT
        if info.quoted:
            factor *= _F_QUOTED  # mentioned, not used: to a reader
            ambiguous = True
        return factor, ambiguous

    def _sentence_language(self, scan: _Scan, sentence: range) -> tuple[_LangModel, _Probe | None]:
        """The judged language closest to the sentence and, when the sentence reads as
        one of the probe languages instead, that probe."""
        if len(self._langs) == 1 and not self._probes:
            return self._langs[0], None
        words = {scan.infos[i].word for i in sentence} - {""}
        best_lang, best = self._langs[0], -1.0
        for lang in self._langs:
            weight = _ident_weight(lang.ident, words)
            if weight > best:
                best_lang, best = lang, weight
        foreign: _Probe | None = None
        most = 0.0
        hits = 0
        for probe in self._probes:
            weight = _ident_weight(probe.ident, words)
            if weight > most:
                foreign, most = probe, weight
                hits = len(probe.top.intersection(words))
        if hits >= 2 and most > best * _IDENT_MARGIN:
            return best_lang, foreign
        return best_lang, None

    def _spend(self, units: int) -> None:
        local = self._local
        if local.budget < units:
            raise _OutOfBudget
        local.budget -= units

    def _static_weight(self, lang: _LangModel, word: str) -> _Static:
        key = (lang.code, word)
        st = self._static.get(key)
        if st is None:
            self._spend(_COST_WORD)
            if len(self._static) >= _CACHE_LIMIT:
                self._static.clear()
            st = self._static[key] = self._analyse_word(lang, word)
        return st

    def _analyse_word(self, lang: _LangModel, word: str) -> _Static:
        """How word-unlike and how rare ``word`` is, before looking at its context.

        A token longer than ``_LONG_TOKEN`` letters is judged on its first ``_LONG_TOKEN``:
        no word is that long, and each check below reads the whole token (a 1 MB token
        took 0.13 s of regular-expression work, holding the GIL).
        """
        word = word[:_LONG_TOKEN]
        none = _Static(0.0, "", True, 0.0)
        if not lang.alphabet.issuperset(word):
            return none  # another script or alphabet
        z = lang.zipf.get(word, 0.0)
        if z >= self.params.common_zipf:
            return none
        gate = min(1.0, (self.params.common_zipf - z) / _ZIPF_FADE)
        if _ELONGATION_RE.search(word) and _is_elongation(lang, word):
            return none  # "sooo", "hmmmm", "zzzzz"
        unit = _REPEAT_UNIT_RE.fullmatch(word)
        if unit is not None and z < _OOV_ZIPF:
            if lang.zipf.get(unit.group(1), 0.0) >= self.params.common_zipf:
                return none  # "haha", "blahblah"
            return _Static(gate, R_CHAR_RUN, False, gate)
        if len(word) >= 6 and _HEX_RE.fullmatch(word):
            return none  # a hex string made only of a-f
        odd = odd_cased = 0.0
        if len(word) >= _CHAR_MIN_LEN:
            llr = lang.surprise(word)
            odd = _ramp(llr, _LLR_OK, _LLR_ODD)
            # Only a token in no word list gains: a listed rare word is a word, cased or not.
            odd_cased = _ramp(llr, _LLR_OK_CASED, _LLR_ODD_CASED) if z < _OOV_ZIPF else odd
        floor = lang.short_floor.get(len(word))
        if floor is not None and z < floor:
            short = min(1.0, (floor - z) / _SHORT_WIDTH)
            odd, odd_cased = max(odd, short), max(odd_cased, short)
        if lang.vowel_cue and _VOWELS.isdisjoint(word):
            odd = odd_cased = 1.0
        elif odd_cased > 0.0 and _is_typo(lang, word):
            odd, odd_cased = odd * _F_TYPO, odd_cased * _F_TYPO
        if odd_cased <= 0.0:
            return none
        return _Static(odd * gate, R_MADE_UP if z < _OOV_ZIPF else R_RARE, word in _UNITS, odd_cased * gate)


def _has_mark(chunk: str) -> bool:
    """Does the chunk hold a combining mark (as sent, before any normalisation)?"""
    category = unicodedata.category
    return any(category(c) in ("Mn", "Me") for c in chunk[:_FOLD_MAX] if not c.isascii())


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, overlapping ranges joined."""
    if not spans:
        return []
    spans.sort()
    merged: list[tuple[int, int]] = [spans[0]]
    for s, e in spans[1:]:
        ls, le = merged[-1]
        if s <= le:
            merged[-1] = (ls, max(le, e))
        else:
            merged.append((s, e))
    return merged


def _code_blocks(text: str, spans: list[tuple[int, int]], soft: list[tuple[int, int]]) -> None:
    """Fenced blocks: the fence lines are not prose; the block's other lines are looked into.

    Lines that look like code are masked anyway (``_masks``). The rest is prose that a
    model reads like any other ("the text wrapped in a code fence"): judged in full in a
    block marked as text (no info string, or text/markdown) that is mostly prose, and
    nominated only (``soft``) in a block marked as a language or mostly code, where a
    line of data or a log looks like odd prose.
    """
    for m in _FENCE_RE.finditer(text):
        start, end = m.span()
        body = m.group()
        first = body.find("\n")
        spans.append((start, start + first + 1))
        info = body[:first].strip().lstrip("`~").strip().lower()
        closing = body.rfind("\n", 0, len(body.rstrip()) - 1)
        inner_end = end
        if closing > first and body[closing + 1 :].strip().startswith(("```", "~~~")):
            spans.append((start + closing + 1, end))
            inner_end = start + closing + 1
        lines = [line for line in text[start + first + 1 : inner_end].splitlines() if line.strip()]
        code = sum(1 for line in lines if _looks_like_code(line))
        if info not in _PROSE_FENCES or 2 * code >= len(lines):
            soft.append((start + first + 1, inner_end))


#: Fence info strings that declare text, not a language.
_PROSE_FENCES = frozenset(("", "text", "txt", "plain", "plaintext", "markdown", "md"))


def _ramp(x: float, lo: float, hi: float) -> float:
    """0 at or below ``lo``, 1 at or above ``hi``, linear between."""
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))


def _span_score(hit: _Hit) -> float | None:
    """A token's own score on its span; where reading stopped has none."""
    return None if hit.reason == R_TRUNCATED else round(hit.score, 4)
