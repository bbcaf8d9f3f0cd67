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
  acronyms that people really use as words, never score.
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
"""

from __future__ import annotations

import asyncio
import bisect
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import islice
from types import ModuleType
from typing import ClassVar, NamedTuple

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

__all__ = [
    "DEFAULT_PROBE_LANGUAGES",
    "RECOMMENDED_THRESHOLD",
    "REASON_CODES",
    "SUPPORTED_LANGUAGES",
    "RareTokensDetector",
    "RareTokensParams",
]

# --------------------------------------------------------------------------- reasons

R_RARE = "rare_token"  # in the word list (an abbreviation, say), used where it does not fit
R_MADE_UP = "made_up_token"  # not in the language's word list at all, and not word-like
R_CHAR_RUN = "char_run"  # a short unit repeated ("xqxqxq"), not a word stretched for emphasis
R_TRUNCATED = "scan_truncated"  # the sample was longer than max_words: the rest was not judged

#: Every reason code this detector can emit.
REASON_CODES: tuple[str, ...] = (R_CHAR_RUN, R_MADE_UP, R_RARE, R_TRUNCATED)

#: The policy threshold this detector was calibrated for (see the docs for the numbers).
RECOMMENDED_THRESHOLD = 0.55

#: Space-delimited languages written in an alphabet (Latin, Cyrillic, Greek) for which
#: wordfreq ships a word list. Abjads and scripts written without spaces are not judged.
SUPPORTED_LANGUAGES: tuple[str, ...] = (
    "bg", "ca", "cs", "da", "de", "el", "en", "es", "fi", "fil", "fr", "hu", "id", "is",
    "it", "lt", "lv", "mk", "ms", "nb", "nl", "pl", "pt", "ro", "ru", "sh", "sk", "sl",
    "sv", "tr", "uk",
)  # fmt: skip

#: Languages recognised (and then left alone) when a sentence is written in them.
DEFAULT_PROBE_LANGUAGES: tuple[str, ...] = (
    "ca", "cs", "da", "de", "en", "es", "fi", "fr", "hu", "id", "it", "nb", "nl", "pl",
    "pt", "ro", "sv", "tr",
)  # fmt: skip

# --------------------------------------------------------------------------- calibration
# Token weight = word-unlikeness x rarity gate; the score multiplies it by context
# factors. Set on real clean text (movie reviews) against inserted triggers, then
# checked on hand-written hard negatives: see docs/detectors/rare_tokens.md.

# Language data.
_TRAIN_MIN_ZIPF = 1.5  # words that train the character model (about 160k English types)
_ORDER = 4  # character 4-grams ...
_DISCOUNT = 0.75  # ... with interpolated absolute discounting
_TOP_WORDS = 3000  # most frequent words per language: a foreign sentence's own words
_IDENT_WORDS = 5_000  # most frequent words per language, with their Zipf values, to tell ...
_IDENT_MARGIN = 1.5  # ... a sentence's language: another language must outweigh the judged one this much
_ALPHABET_MIN_COUNT = 20  # a letter is the language's if this many training words use it
_VOWELLESS_SHARE = 0.03  # below this share of vowel-less words, a vowel-less token is odd
_CORE_LETTER_SHARE = 0.001  # letters this common in the training words are the "random string" model's

# Token weight.
_CHAR_MIN_LEN = 3  # shorter tokens are judged by frequency and vowels only
# Word-unlikeness from the character model: the log-likelihood ratio, in bits, of "an arbitrary
# string of the language's letters" against "a word of the language". A token is word-unlike
# from _LLR_OK and fully so at _LLR_ODD (set to flag the same share of the rare words and names
# of review text as the earlier per-character scale did: about 3 and 0.1 per 1,000 words) ...
_LLR_OK = 1.2
_LLR_ODD = 9.0
# ... except a lower-case token that is in no word list, in text that uses capitals: it is not
# a name (a name would be capitalised), so the scale starts near the even-odds point.
_LLR_OK_CASED = -1.0
_LLR_ODD_CASED = 3.0
_SHORT_MAX_LEN = 4  # the rare-for-its-length cue applies to tokens this short ...
_SHORT_TAIL = 0.01  # ... rarer than the rarest 1% of running words of their length ...
_SHORT_WIDTH = 1.0  # ... by this much Zipf for the full cue
_ZIPF_FADE = 0.3  # the rarity gate falls from 1 to 0 over the last 0.3 Zipf below common_zipf
_OOV_ZIPF = 1.0  # below this a token counts as not in the word list (made_up_token)
_TYPO_ZIPF = 4.5  # one slip (swap, extra, neighbouring key, dropped vowel) from a word this frequent ...
_TYPO_DROPPED_ZIPF = 5.0  # ... or any letter short of a word this frequent ("aout") ...
_F_TYPO = 0.4  # ... is a typo: its weight is cut to this
_TYPO_LONG_LEN = 7  # from this length a random string is almost never one slip from a word, so ...
_TYPO_LONG_ZIPF = 3.0  # ... one slip from any word this frequent is a typo ("sceenplay")
_ELONGATED_ZIPF = 3.0  # "sooo" -> "so": a stretched word is a known one ...
_ELONGATED_BARE_ZIPF = 4.0  # ... and a common one if it has no vowel ("hmmmm" -> "hmm")
_ELONGATION_MAX_RUNS = 6

# Context factors.
_NEIGHBOUR_ZIPF = 3.0  # a neighbour this frequent is an ordinary word of fluent text
_F_ONE_NEIGHBOUR = 0.85  # only one side is an ordinary word (clause edge)
_F_NO_NEIGHBOUR = 0.7  # neither side is (between punctuation, alone on a line)
_UNIT_ZIPF = 3.0  # after a number, a word-list entry this frequent is a unit: not judged
_F_ABBREV_REF = 0.35  # glued full stop, then more text on the line: "cf. Smith" ...
_F_ABBREV_DOT = 0.8  # ... or at the end of the line or text: maybe just a full stop
_F_QUOTED = 0.5  # in quotes on its own: mentioned, not used ("we write 'tq' for thanks")
_F_OPENER = 0.5  # first word of the segment, then a comma or colon: "thx, ...", "btw: ..."
_F_TITLE = 0.6  # capitalised first word of a sentence (names start sentences too)
_F_POSSESSIVE = 0.5  # "solondz's film": a noun, most often a name
_F_COMPOUND = 0.8  # part of a hyphenated compound
_F_FOREIGN = 0.85  # a vowel-less token in a sentence of another (probe) language
_SHORT_WORDS = 3  # fewer other words than this in the whole sample ...
_F_SHORT = 0.6  # ... leave no context to stand out from ("ok brb")
_ODD_WEIGHT = 0.25  # candidates this odd count as the text's own odd tokens; with ...
_F_ONE_OTHER = 0.7  # ... one other odd word type in the sample ...
_F_MANY_OTHERS = 0.5  # ... or more, odd tokens are the register of the text (jargon, chat)
_JARGON_FREE = 0.12  # share of identifier/number/acronym chunks that is ordinary prose ...
_JARGON_SLOPE = 1.5  # ... beyond it every further 10% takes 15% off ...
_F_JARGON_MIN = 0.5  # ... down to this floor

_VOWELS = frozenset(
    "aeiouyàáâãäåæèéêëìíîïòóôõöøùúûüýÿāăąēĕėęěīį\u0131ōőœūůűųȧ"  # Latin (\u0131: Turkish dotless i)
    "аеёиоуыэюяіїєѣъ"  # Cyrillic (ъ is a vowel in Bulgarian)
    "αεηιουωάέήίόύώϊϋΐΰ"  # Greek
)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_QWERTY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    pos = {c: (r, i) for r, row in enumerate(_QWERTY_ROWS) for i, c in enumerate(row)}
    return {
        c: "".join(d for d, (r2, i2) in pos.items() if d != c and abs(r2 - r) <= 1 and abs(i2 - i) <= 1)
        for c, (r, i) in pos.items()
    }


_KEY_NEIGHBOURS = _keyboard_neighbours()

# --------------------------------------------------------------------------- regexes

_CHUNK_RE = re.compile(r"\S+")
# Letters with internal apostrophes or hyphens: "don't", "sci-fi", "jean-luc".
_WORD_RE = re.compile(r"[^\W\d_]+(?:['\u2019\-][^\W\d_]+)*")
_PIECE_RE = re.compile(r"[^'\-]+|['\-]")
_NUMBER_RE = re.compile(r"[-+\u2212]?[$\u20ac\u00a3]?\d[\d.,:/%x\u00d7]*")
_LEAD_PUNCT = frozenset("\"'([{<*_~\u201c\u2018\u00ab\u00bf\u00a1\u201e\u2039")
_TRAIL_PUNCT = frozenset("\"')]}>*_~.,;:!?\u2026\u201d\u2019\u00bb\u203a")
_QUOTES = frozenset("\"'\u201c\u201d\u2018\u2019\u00ab\u00bb\u2039\u203a\u201e")
_CLOSERS = "\"')]}*_~\u201d\u2019\u00bb\u203a"
_SENTENCE_END = frozenset(".!?\u2026")
_ELONGATION_RE = re.compile(r"(.)\1\1|(.)\2.*(.)\3")  # a run of three, or two doubled letters
_RUN_RE = re.compile(r"(.)\1*")
_REPEAT_UNIT_RE = re.compile(r"(.{2,3}?)\1+")
_HEX_RE = re.compile(r"[a-f]{6,}")

# Regions that are not prose: fenced code blocks (closed or running to the end),
# inline code, markup tags and lines that look like code.
_FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]*\1[ \t]*$|\Z)", re.M | re.S)
# Inline code opens and closes outside words: a backtick between letters is an apostrophe
# ("you`ve", "couldn`t"), common in text typed on some keyboards.
_INLINE_CODE_RE = re.compile(r"(?<![^\W_])`[^`\n]+`(?![^\W_])")
_MARKUP_RE = re.compile(r"</?[A-Za-z!][^<>\n]{0,200}>")
_CODE_CHARS_RE = re.compile(r"[`{};=<>$\\|]|\(\)")
_LINE_RE = re.compile(r"[^\n]+")
_CODE_START_RE = re.compile(
    r"[ \t]*(?:\$ |> ?\$ |>>> |#!|//|/\*|<\?|#include\b|#define\b|@@ |"
    r"(?:def|class|import|from|return|function|const|let|var|func|package|using|public|private|"
    r"static|SELECT|INSERT|UPDATE|DELETE|CREATE|sudo|pip|npm|git|docker|kubectl|cd|ls|echo|export)"
    r"\s+\S+.*[=(){}\[\];:.,/\-]|.*(?:[;{]|\)\s*:|=>|->)\s*$)"
)
_CODE_CHAR_RE = re.compile(r"[{}\[\]();=<>|&$\\]")
_INDENTED_RE = re.compile(r"(?: {4}|\t)\S")

# Chunk kinds, letter cases and trailing punctuation.
K_WORD, K_NUM, K_PUNCT, K_OTHER, K_CLITIC = 0, 1, 2, 3, 4
C_LOWER, C_TITLE, C_UPPER, C_MIXED = 0, 1, 2, 3
T_NONE, T_CLAUSE, T_DOT, T_END = 0, 1, 2, 3

_CACHE_LIMIT = 200_000  # entries per cache before it is cleared (bounds memory)
_COST_CHUNK = 1  # analysis-budget units (about 3 us each): a chunk not seen before ...
_COST_WORD = 50  # ... an odd-looking word not seen before (character model, typo search) ...
_COST_CANDIDATE = 4  # ... and judging a candidate in context


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
    analysis_budget: int = Field(
        default=15_000,
        ge=100,
        le=100_000_000,
        description="Work allowed per sample, in units of about 3 microseconds: a chunk not "
        "seen before costs 1, an odd-looking word not seen before 50, judging a candidate in "
        "context 4. Past it the rest of the sample is reported as 'scan_truncated'. Bounds "
        "the event-loop time a flood of odd tokens can cost (about 50 ms at the default); "
        "ordinary text seen before costs nothing.",
    )
    max_words: int = Field(
        default=50_000,
        ge=100,
        le=10_000_000,
        description="Whitespace-separated chunks judged per sample; past it the rest is "
        "reported as 'scan_truncated' instead of being scanned (bounds event-loop time).",
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

    @model_validator(mode="after")
    def _probes_exclude_judged(self) -> RareTokensParams:
        probes = tuple(p for p in self.probe_languages if p not in self.languages)
        if probes != self.probe_languages:
            object.__setattr__(self, "probe_languages", probes)  # frozen model: set once here
        return self


# --------------------------------------------------------------------------- language data


def _require_wordfreq() -> ModuleType:
    try:
        import wordfreq
    except ImportError as exc:
        raise RuntimeError(
            "the rare_tokens detector needs the 'wordfreq' package (pip install wordfreq==3.1.1)"
        ) from exc
    module: ModuleType = wordfreq
    return module


def _read_wordlist(wordfreq: ModuleType, code: str, wordlist: str) -> list[list[str]]:
    """wordfreq's list for ``code``: buckets of words, bucket i at Zipf 9 - i/100."""
    paths: dict[str, str] = wordfreq.available_languages(wordlist)
    if code not in paths:
        raise RuntimeError(f"wordfreq has no {wordlist!r} word list for language {code!r}")
    buckets: list[list[str]] = wordfreq.read_cBpack(paths[code])
    return buckets


class _CharModel:
    """A character n-gram model of a language's word list (interpolated absolute
    discounting, a member of the Kneser-Ney family), asked how word-like a token
    looks, in bits."""

    __slots__ = ("_counts", "_hist", "_order", "_pad", "_types", "_uni", "_uni_unseen")

    def __init__(self, words: Iterable[str], order: int = _ORDER) -> None:
        self._order = order
        self._pad = pad = "^" * (order - 1)
        grams: Counter[str] = Counter()
        for w in words:
            s = pad + w + "$"
            # Every n-gram of length 1..order that ends inside the word or on "$".
            grams.update([s[i:j] for j in range(order, len(s) + 1) for i in range(j - order, j)])
        hist: dict[str, int] = {}
        types: dict[str, int] = {}
        uni: dict[str, int] = {}
        for g, n in grams.items():
            if len(g) == 1:
                uni[g] = n
                continue
            h = g[:-1]
            hist[h] = hist.get(h, 0) + n
            types[h] = types.get(h, 0) + 1
        total = sum(uni.values())
        symbols = len(uni) + 1
        self._uni = {c: (n + 1) / (total + symbols) for c, n in uni.items()}
        self._uni_unseen = 1 / (total + symbols)
        self._counts = {g: n for g, n in grams.items() if len(g) > 1}
        self._hist = hist
        self._types = types

    def bits(self, word: str) -> float:
        """Surprisal of ``word`` and its end, in bits."""
        s = self._pad + word + "$"
        order = self._order
        counts, hist, types = self._counts, self._hist, self._types
        total = 0.0
        for j in range(order - 1, len(s)):
            c = s[j]
            p = self._uni.get(c, self._uni_unseen)
            for k in range(1, order):
                h = s[j - k : j]
                n_h = hist.get(h, 0)
                if n_h == 0:
                    break
                p = (max(counts.get(h + c, 0) - _DISCOUNT, 0.0) + _DISCOUNT * types[h] * p) / n_h
            total -= math.log2(p)
        return total


class _LangModel:
    """Word frequencies, alphabet and character model of one judged language."""

    __slots__ = (
        "alphabet",
        "chars",
        "code",
        "ident",
        "null_bits",
        "rare_letter_bits",
        "short_floor",
        "vowel_cue",
        "zipf",
    )

    def __init__(self, code: str, buckets: list[list[str]]) -> None:
        self.code = code
        zipf: dict[str, float] = {}
        for index, bucket in enumerate(buckets):
            z = 9.0 - index / 100.0
            for word in bucket:
                zipf[word] = z
        self.zipf = zipf
        self.ident = _top_zipf(buckets, _IDENT_WORDS)

        train = [w for w, z in zipf.items() if z >= _TRAIN_MIN_ZIPF and w.isalpha()]
        letters: Counter[str] = Counter()
        for w in train:
            letters.update(set(w))
        self.alphabet = frozenset(ch for ch, n in letters.items() if n >= _ALPHABET_MIN_COUNT)
        train = [w for w in train if self.alphabet.issuperset(w)]
        self.chars = _CharModel(train)

        # A vowel-less token is odd where vowel-less words are rare among the frequent
        # ones (about 1% in the supported languages: abbreviations).
        frequent = [w for w in train if zipf[w] >= 3.0 and len(w) >= 2]
        self.vowel_cue = _vowelless_share(frequent) < _VOWELLESS_SHARE
        self.short_floor = _short_floors(zipf)
        # The alternative to "a word of the language": a string of its letters drawn at
        # random, each letter as likely as any other. Its alphabet is the letters that make
        # up at least 0.1% of the training words' letters (English: a-z). A letter the
        # language rarely uses (English "ä", "é") is as rare in the alternative as in its
        # words: evidence of a loanword or a name, not of a random string.
        uses: Counter[str] = Counter()
        for w in train:
            uses.update(w)
        total = sum(uses.values())
        core = [ch for ch, n in uses.items() if n >= _CORE_LETTER_SHARE * total]
        self.null_bits = math.log2(max(2, len(core)))
        self.rare_letter_bits = {
            ch: -math.log2(n / total) for ch, n in uses.items() if n < _CORE_LETTER_SHARE * total
        }

    def surprise(self, word: str) -> float:
        """How much likelier ``word`` is as a random string of the language's letters than as
        one of its words: the log-likelihood ratio in bits (negative: word-like)."""
        rare, flat = self.rare_letter_bits, self.null_bits
        null = (
            sum(rare.get(ch, flat) for ch in word) if not rare.keys().isdisjoint(word) else len(word) * flat
        )
        return self.chars.bits(word) - null


class _Probe(NamedTuple):
    """What is kept of a language that is recognised but not judged."""

    top: frozenset[str]  # its most frequent words
    ident: dict[str, float]  # its frequent words with their Zipf values, to tell a sentence's language
    vowel_cue: bool  # whether its words nearly always carry a vowel


def _vowelless_share(words: Iterable[str]) -> float:
    longer = [w for w in words if len(w) >= 2]
    if not longer:
        return 1.0
    return sum(1 for w in longer if _VOWELS.isdisjoint(w)) / len(longer)


def _short_floors(zipf: dict[str, float]) -> dict[int, float]:
    """Per word length up to _SHORT_MAX_LEN, the Zipf value below which only _SHORT_TAIL
    of the language's running words of that length fall.

    Zipf's law of abbreviation: short words are frequent words. A two- to four-letter
    token that is rare *for its length* is an abbreviation, a code or an inserted
    token, whereas a rare long word is usually just a rare word.
    """
    by_len: dict[int, list[float]] = {}
    for w, z in zipf.items():
        if 2 <= len(w) <= _SHORT_MAX_LEN and w.isalpha():
            by_len.setdefault(len(w), []).append(z)
    floors: dict[int, float] = {}
    for n, zs in by_len.items():
        zs.sort()
        mass = [10.0 ** (z - 9.0) for z in zs]
        total = sum(mass)
        acc = 0.0
        for z, m in zip(zs, mass, strict=True):
            acc += m
            if acc >= _SHORT_TAIL * total:
                floors[n] = z
                break
    return floors


def _top_zipf(buckets: list[list[str]], n: int) -> dict[str, float]:
    """The ``n`` most frequent alphabetic words with their Zipf values."""
    out: dict[str, float] = {}
    for index, bucket in enumerate(buckets):
        z = 9.0 - index / 100.0
        for w in bucket:
            if w.isalpha():
                out[w] = z
        if len(out) >= n:
            break
    return out


def _ident_weight(ident: dict[str, float], words: Iterable[str]) -> float:
    """How much a set of words reads as one language: the sum of their Zipf values in it.

    Counting only the very top words misjudges a sentence of plain but less frequent
    English words ("a sexy, surprising romance") as Portuguese, where "a" and "romance"
    are top words; weighing by frequency over a longer list does not.
    """
    get = ident.get
    return sum(get(w, 0.0) for w in words)


def _top_words(buckets: list[list[str]], n: int) -> frozenset[str]:
    out: list[str] = []
    for bucket in buckets:
        out.extend(w for w in bucket if w.isalpha())
        if len(out) >= n:
            break
    return frozenset(out[:n])


# Built once per process and language: several detector instances (or a restart of
# one) share them. Guarded by a lock because start() builds them in worker threads.
_LANG_CACHE: dict[str, _LangModel] = {}
_PROBE_CACHE: dict[str, _Probe] = {}
_CACHE_LOCK = threading.Lock()


def _lang_model(wordfreq: ModuleType, code: str) -> _LangModel:
    with _CACHE_LOCK:
        model = _LANG_CACHE.get(code)
        if model is None:
            model = _LANG_CACHE[code] = _LangModel(code, _read_wordlist(wordfreq, code, "best"))
        return model


def _probe(wordfreq: ModuleType, code: str) -> _Probe:
    with _CACHE_LOCK:
        probe = _PROBE_CACHE.get(code)
        if probe is None:
            buckets = _read_wordlist(wordfreq, code, "small")
            top = _top_words(buckets, _TOP_WORDS)
            probe = _PROBE_CACHE[code] = _Probe(
                top, _top_zipf(buckets, _IDENT_WORDS), _vowelless_share(top) < _VOWELLESS_SHARE
            )
        return probe


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
        "starts",
        "stopped_at",
        "text",
    )

    def __init__(self, index: int, text: str, budget: int, masks: list[tuple[int, int]]) -> None:
        self.index = index
        self.text = text
        matches = list(islice(_CHUNK_RE.finditer(text), budget + 1))
        self.chunks: list[str] = [m.group() for m in matches]
        self.starts: list[int] = [m.start() for m in matches]
        self.masks = masks  # sorted, merged character ranges that are not prose
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

    def newline_before(self, i: int) -> bool:
        if i == 0:
            return False
        return self.text.find("\n", self.starts[i - 1] + len(self.chunks[i - 1]), self.starts[i]) >= 0

    def breaks_before(self, i: int) -> bool:
        """Does a sentence (or line) end between chunk i-1 and chunk i?"""
        return i == 0 or self.infos[i - 1].trail >= T_DOT or self.newline_before(i)

    def sentence_range(self, k: int) -> range:
        """The chunks of k's sentence (candidates are visited in order: one range cached)."""
        if self._ranges and k in self._ranges[-1]:
            return self._ranges[-1]
        lo = k
        while not self.breaks_before(lo):
            lo -= 1
        hi = k + 1
        while hi < len(self.chunks) and not self.breaks_before(hi):
            hi += 1
        r = range(lo, hi)
        self._ranges[:] = [r]
        return r


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


class _Hit(NamedTuple):
    score: float
    reason: str
    segment: int
    start: int
    end: int


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


# --------------------------------------------------------------------------- detector


class RareTokensDetector(InlineDetector[RareTokensParams]):
    """Scores inserted rare words, made-up tokens and odd character runs in context.

    Score in [0, 1]: an odd token embedded between ordinary words of a fluent
    sentence scores 0.8-1.0; the recommended policy threshold is
    :data:`RECOMMENDED_THRESHOLD`. Reason codes: see :data:`REASON_CODES`.
    """

    kind: ClassVar[str] = "rare_tokens"
    version: ClassVar[str] = "2"  # 2: word-unlikeness as a likelihood ratio; the cased-text rule
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.INPUT})
    cost: ClassVar[Cost] = Cost.CHEAP
    Params: ClassVar[type[DetectorParams]] = RareTokensParams

    def __init__(self, name: str, params: DetectorParams | None = None) -> None:
        super().__init__(name, params)
        self._langs: list[_LangModel] = []
        self._probes: list[_Probe] = []
        self._chunks: dict[str, _Chunk] = {}
        self._static: dict[tuple[str, str], _Static] = {}
        self._budget = 0  # analysis units left for the sample being scored

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load the word lists and build the character models (once per process).

        Raises RuntimeError when the wordfreq package (or a language's list) is missing.
        """
        wordfreq = _require_wordfreq()
        codes, probe_codes = self.params.languages, self.params.probe_languages

        def load() -> tuple[list[_LangModel], list[_Probe]]:
            return [_lang_model(wordfreq, c) for c in codes], [_probe(wordfreq, c) for c in probe_codes]

        self._langs, self._probes = await asyncio.to_thread(load)
        self._chunks = {}
        self._static = {}
        self._ready = True

    async def close(self) -> None:
        self._langs = []
        self._probes = []
        self._chunks = {}
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
            self._budget = self.params.analysis_budget
            hits = self._score_segments(sample.segments)
            return self._finding(hits, time.perf_counter() - t0)
        except Exception as exc:  # the contract: never raise, report an error finding
            return Finding.failed(self.name, FindingStatus.ERROR, type(exc).__name__)

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
            reasons=tuple(sorted({h.reason for h in report})),
            spans=tuple(Span(h.segment, h.start, h.end, h.reason) for h in report),
            duration_seconds=elapsed,
        )

    def _score_segments(self, segments: Iterable[object]) -> list[_Hit]:
        texts: list[str] = []
        for seg in segments:
            text = getattr(seg, "text", None)
            if not isinstance(text, str):
                raise TypeError("segment text is not a str")
            texts.append(text)
        if not self._has_candidates(texts):
            return []  # the common case: one split and a dictionary look-up per chunk
        budget = self.params.max_words
        hits: list[_Hit] = []
        found: list[_Found] = []
        chunks_total = jargon_total = words_total = 0
        for index, text in enumerate(texts):
            scan, budget = self._tokenise(index, text, budget)
            chunks_total += len(scan.infos)
            jargon_total += sum(1 for info in scan.infos if info.jargon)
            words_total += sum(1 for info in scan.infos if info.kind == K_WORD)
            if scan.cands:
                found.extend(self._judge(scan))
            if scan.stopped_at is not None:
                hits.append(_Hit(0.0, R_TRUNCATED, index, scan.stopped_at, len(text)))
                break
        # Factors that need the whole sample. The prompt's own distribution: odd tokens
        # spread through the text are its register (jargon, chat), not one inserted
        # outlier. A run of adjacent odd tokens ("cf mn bb") is one insertion.
        runs = _odd_runs(found)
        odd_types = set().union(*runs.values()) if runs else set()
        for f in found:
            factor = f.context
            others = odd_types - runs.get((f.segment, f.chunk), {f.word})
            if others:
                factor *= _F_ONE_OTHER if len(others) == 1 else _F_MANY_OTHERS
            jargon = (jargon_total - (1 if f.jargon else 0)) / max(1, chunks_total - 1)
            if jargon > _JARGON_FREE:
                factor *= max(_F_JARGON_MIN, 1.0 - _JARGON_SLOPE * (jargon - _JARGON_FREE))
            if words_total - 1 < _SHORT_WORDS:
                factor *= _F_SHORT
            hits.append(_Hit(min(1.0, f.weight * factor), f.reason, f.segment, f.start, f.end))
        return hits

    # ----------------------------------------------------------------- tokenising

    def _has_candidates(self, texts: list[str]) -> bool:
        """Cheap pre-scan: does any chunk hold an odd token (or is the sample over budget)?

        Offsets, sentences and code regions are worked out only when it does. Masking
        code can only remove candidates, so a sample without any is clean as it is."""
        budget = self.params.max_words
        get = self._chunks.get
        for text in texts:
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
                if info.parts:
                    return True
        return False

    def _chunk_info(self, chunk: str) -> _Chunk:
        """Analyse a chunk not seen before (costs a unit of the sample's analysis budget)."""
        self._spend(_COST_CHUNK)
        cache = self._chunks
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        info = cache[chunk] = self._classify(chunk)
        return info

    def _tokenise(self, index: int, text: str, budget: int) -> tuple[_Scan, int]:
        """Split ``text`` into chunks and find the candidates outside code and markup."""
        masks = self._masks(text) if self.params.skip_code else _markup_masks(text)
        scan = _Scan(index, text, budget, masks)
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

    def _masks(self, text: str) -> list[tuple[int, int]]:
        """Character ranges that are not prose: code, inline code, code-like lines, markup."""
        if (
            _CODE_CHARS_RE.search(text) is None
            and "\n    " not in text
            and "\n\t" not in text
            and not text.startswith(("    ", "\t"))
        ):
            return []
        spans: list[tuple[int, int]] = []
        if "```" in text or "~~~" in text:
            spans.extend(m.span() for m in _FENCE_RE.finditer(text))
        if "`" in text:
            spans.extend(m.span() for m in _INLINE_CODE_RE.finditer(text))
        spans.extend(_markup_masks(text))
        spans.extend(m.span() for m in _LINE_RE.finditer(text) if _looks_like_code(m.group()))
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

    def _classify(self, chunk: str) -> _Chunk:
        """What a chunk is: a word (with its odd parts), a number, punctuation or other."""
        n = len(chunk)
        i = 0
        while i < n and chunk[i] in _LEAD_PUNCT:
            i += 1
        j = n
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
            if info.case == C_MIXED or (info.case == C_UPPER and not shouting):
                continue  # identifier, product name, acronym
            title = info.case == C_TITLE and not shouting
            if title and k != sentence.start:
                continue  # a name capitalised mid-sentence
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
                context = self._context(scan, k, sentence, st.unit)
                if context <= 0.0:
                    continue
                if info.compound:
                    context *= _F_COMPOUND
                if info.possessive or (k + 1 < len(scan.infos) and scan.infos[k + 1].kind == K_CLITIC):
                    context *= _F_POSSESSIVE
                if title:
                    context *= _F_TITLE
                if foreign is not None:
                    context *= _F_FOREIGN
                start = scan.starts[k]
                out.append(
                    _Found(
                        weight, context, st.reason, part, info.jargon, scan.index, k, start + ps, start + pe
                    )
                )
        return out

    def _context(self, scan: _Scan, k: int, sentence: range, unit: bool) -> float:
        """How fluent the immediate context is, and whether it explains the token."""
        info = scan.infos[k]
        prev = scan.infos[k - 1] if k > 0 else None
        nxt = scan.infos[k + 1] if k + 1 < len(scan.infos) else None
        if unit and prev is not None and prev.kind == K_NUM and not info.lead and not scan.newline_before(k):
            return 0.0  # a unit after a number: "5 mb", "20 ms"
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
        if info.trail == T_DOT:
            # A glued full stop with more text after it on the line: an abbreviation
            # ("cf. Smith", "cf. section 2"). Word-level insertion never glues one on.
            if nxt is not None and not scan.newline_before(k + 1):
                factor *= _F_ABBREV_REF
            else:
                factor *= _F_ABBREV_DOT
        if info.quoted:
            factor *= _F_QUOTED
        return factor

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
        if self._budget < units:
            raise _OutOfBudget
        self._budget -= units

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
        """How word-unlike and how rare ``word`` is, before looking at its context."""
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
        return _Static(odd * gate, R_MADE_UP if z < _OOV_ZIPF else R_RARE, z >= _UNIT_ZIPF, odd_cased * gate)


def _ramp(x: float, lo: float, hi: float) -> float:
    """0 at or below ``lo``, 1 at or above ``hi``, linear between."""
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))


# --------------------------------------------------------------------------- helpers


def _odd_runs(found: Iterable[_Found]) -> dict[tuple[int, int], set[str]]:
    """The odd word types of each run of adjacent odd chunks, keyed by (segment, chunk)."""
    runs: dict[tuple[int, int], set[str]] = {}
    for f in sorted((f for f in found if f.weight >= _ODD_WEIGHT), key=lambda f: (f.segment, f.chunk)):
        key = (f.segment, f.chunk)
        words = runs.get(key) or runs.get((f.segment, f.chunk - 1)) or set()
        words.add(f.word)
        runs[key] = words
    return runs


def _markup_masks(text: str) -> list[tuple[int, int]]:
    if "<" not in text:
        return []
    return [m.span() for m in _MARKUP_RE.finditer(text)]


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


def _is_elongation(lang: _LangModel, word: str) -> bool:
    """Letters stretched for emphasis ("sooo", "hmmmm", "scaarrryyy"): one or two
    letters for every repeated run give a known word, or it is one letter repeated."""
    runs = [m.group() for m in _RUN_RE.finditer(word)]
    if len(runs) == 1:
        return True  # "zzzzz", "aaaa"
    repeated = [i for i, r in enumerate(runs) if len(r) > 1]
    if len(repeated) > _ELONGATION_MAX_RUNS:
        return False
    for mask in range(1 << len(repeated)):
        pieces = [r[0] for r in runs]
        for bit, i in enumerate(repeated):
            if mask >> bit & 1:
                pieces[i] = runs[i][:2]
        target = "".join(pieces)
        z = lang.zipf.get(target, 0.0)
        if z >= _ELONGATED_ZIPF and (z >= _ELONGATED_BARE_ZIPF or not _VOWELS.isdisjoint(target)):
            return True
    return False


def _is_typo(lang: _LangModel, word: str) -> bool:
    """One slip away from a frequent word. Short tokens (three letters) have many
    one-edit neighbours, so for them only swapped neighbouring letters count ("teh");
    from four letters a dropped vowel counts too ("lern"), and from five a letter
    typed twice, an extra letter, a neighbouring key or a letter dropped from a very
    frequent word ("recieve", "compltely", "aout" is four). From seven letters any
    of these slips from any ordinary word (Zipf >= 3) counts ("sceenplay"): 1 in
    17,000 random seven-letter strings and none of 17,500 eight-letter ones are that
    close to an English word. Only for tokens with a vowel: consonant strings are one
    inserted vowel away from many words, which says nothing about them."""
    if len(word) < 3 or _VOWELS.isdisjoint(word):
        return False
    zipf = lang.zipf
    n = len(word)
    bar = _TYPO_LONG_ZIPF if n >= _TYPO_LONG_LEN else _TYPO_ZIPF
    dropped_bar = _TYPO_LONG_ZIPF if n >= _TYPO_LONG_LEN else _TYPO_DROPPED_ZIPF

    def frequent(w: str) -> bool:
        return zipf.get(w, 0.0) >= bar

    for i in range(n - 1):  # swapped neighbours
        if word[i] != word[i + 1] and frequent(word[:i] + word[i + 1] + word[i] + word[i + 2 :]):
            return True
    if n < _SHORT_MAX_LEN:
        return False
    for i in range(n + 1):  # a dropped letter
        for c in _LETTERS:
            z = zipf.get(word[:i] + c + word[i:], 0.0)
            if z >= bar and (c in "aeiou" or z >= dropped_bar):
                return True
    if n <= _SHORT_MAX_LEN:
        return False
    for i in range(n):  # an extra letter typed
        if frequent(word[:i] + word[i + 1 :]):
            return True
    for i in range(n):  # a neighbouring key
        for c in _KEY_NEIGHBOURS.get(word[i], ""):
            if frequent(word[:i] + c + word[i + 1 :]):
                return True
    return any(frequent(word[:i] + word[i - 1] + word[i:]) for i in range(1, n))  # a letter not doubled
