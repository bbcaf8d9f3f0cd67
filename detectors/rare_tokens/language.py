"""Language models of the rare-token detector, built from wordfreq's word lists.

Why a module of its own: everything the detector knows about a language comes from
here, built once per process and language in worker threads: word frequencies, the
alphabet, the character n-gram model and the likelihood ratio that says how word-like
a token looks (``_LangModel``), the top words of recognised-but-not-judged languages
(``_Probe``), and the checks that relate a token to the language's words (a typo of a
frequent word, a word stretched for emphasis). The detector only asks these questions.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import Counter
from collections.abc import Iterable
from types import ModuleType
from typing import NamedTuple

from detectors.rare_tokens.tables import (
    _ALPHABET_MIN_COUNT,
    _CORE_LETTER_SHARE,
    _DISCOUNT,
    _ELONGATED_BARE_ZIPF,
    _ELONGATED_ZIPF,
    _ELONGATION_MAX_RUNS,
    _IDENT_WORDS,
    _KEY_NEIGHBOURS,
    _LETTERS,
    _ORDER,
    _RUN_RE,
    _SHORT_MAX_LEN,
    _SHORT_TAIL,
    _TOP_WORDS,
    _TRAIN_MIN_ZIPF,
    _TYPO_DROPPED_ZIPF,
    _TYPO_LONG_LEN,
    _TYPO_LONG_ZIPF,
    _TYPO_ZIPF,
    _VOWELLESS_SHARE,
    _VOWELS,
)

__all__ = [
    "_require_wordfreq", "_read_wordlist", "_CharModel", "_LangModel", "_Probe", "_vowelless_share",
    "_short_floors", "_top_zipf", "_ident_weight", "_top_words", "_LANG_CACHE", "_PROBE_CACHE",
    "_CACHE_LOCK", "_lang_model", "_probe", "_is_elongation", "_is_typo",
]  # fmt: skip

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
        "longest",
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
        # One slip changes a word's length by at most one: a token two letters longer than
        # every listed word is no typo, so the typo search stops there instead of costing
        # time quadratic in the token's length (a 400 KB made-up "word" in a request).
        self.longest = max(map(len, zipf), default=0)
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
        one of its words: the log-likelihood ratio in bits (negative: word-like).

        It costs a few microseconds a letter: the detector passes at most its first
        ``_LONG_TOKEN`` letters of a token (``RareTokensDetector._analyse_word``)."""
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


def _is_elongation(lang: _LangModel, word: str) -> bool:
    """Letters stretched for emphasis ("sooo", "hmmmm", "scaarrryyy"): one or two
    letters for every repeated run give a known word, or it is one letter repeated."""
    # Each run gives at least one letter of the target word: more runs than the longest
    # listed word has letters cannot shrink to one, so stop reading there (a 1 MB token).
    runs = [m.group() for m in itertools.islice(_RUN_RE.finditer(word), lang.longest + 1)]
    if len(runs) == 1:
        return True  # "zzzzz", "aaaa"
    if len(runs) > lang.longest:
        return False
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
    if len(word) < 3 or len(word) > lang.longest + 1 or _VOWELS.isdisjoint(word):
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
