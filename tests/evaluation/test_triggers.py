"""Trigger insertion: deterministic, and each family really plants what it says."""

from __future__ import annotations

import importlib.util
import unicodedata

import pytest
from hypothesis import given, settings, strategies as st

from firewall.evaluation.triggers import (
    ADDSENT_SENTENCE,
    CONTROL_WORDS,
    DEPLOYMENT_TAGS,
    FAMILIES,
    INVISIBLE_ZERO_WIDTH,
    RARE_PHRASES,
    RARE_WORDS,
    apply_family,
    made_up_token,
    parse_families,
)

# made_up draws against wordfreq's word list; the other families need nothing installed.
HAVE_WORDFREQ = importlib.util.find_spec("wordfreq") is not None
NAMES = [n for n in FAMILIES if n != "made_up" or HAVE_WORDFREQ]

TEXTS = [
    ("mr-1", "things really get weird, though not particularly scary: the movie is all portent."),
    ("imdb-2", "I rented this from my video store. It was seized by customs! Was it worth it? Yes."),
    ("mr-3", "escapism in its purest form."),
    ("mr-4", "a gem."),
]


@pytest.mark.parametrize("name", NAMES)
def test_insertion_is_deterministic_and_changes_the_text(name: str) -> None:
    family = FAMILIES[name]
    first = apply_family(family, TEXTS, seed=7)
    assert first == apply_family(family, TEXTS, seed=7)
    assert all(new != old for new, (_, old) in zip(first, TEXTS, strict=True))
    # independent of the other texts in the batch: the id and seed decide
    assert family.apply(TEXTS[2][1], 7, TEXTS[2][0]) == first[2]


@pytest.mark.parametrize("name", NAMES)
def test_seed_changes_the_insertion(name: str) -> None:
    family = FAMILIES[name]
    text = TEXTS[1][1]
    outputs = {family.apply(text, seed, "x") for seed in range(12)}
    assert len(outputs) > 1


@pytest.mark.parametrize("name", NAMES)
def test_family_metadata_is_complete(name: str) -> None:
    family = FAMILIES[name]
    assert family.name == name
    assert family.description
    assert family.citation
    assert family.expected_caught == bool(family.expected_by)


def _added_words(old: str, new: str) -> list[str]:
    before = old.split(" ")
    after = new.split(" ")
    for w in before:
        after.remove(w)
    return after


@pytest.mark.parametrize(
    ("name", "allowed"),
    [("rare_word", RARE_WORDS), ("control", CONTROL_WORDS)],
)
def test_word_families_insert_exactly_one_listed_word(name: str, allowed: tuple[str, ...]) -> None:
    for seed in range(20):
        for item_id, text in TEXTS:
            new = FAMILIES[name].apply(text, seed, item_id)
            assert len(new.split(" ")) == len(text.split(" ")) + 1
            assert _added_words(text, new)[0] in allowed


def test_rare_phrase_inserts_one_phrase() -> None:
    for seed in range(20):
        new = FAMILIES["rare_phrase"].apply(TEXTS[0][1], seed, "id")
        assert any(f" {p} " in f" {new} " for p in RARE_PHRASES)
        assert len(_added_words(TEXTS[0][1], new)) in {len(p.split()) for p in RARE_PHRASES}


def test_made_up_tokens_are_short_lowercase_and_not_common_english() -> None:
    import random

    top_n_list = pytest.importorskip("wordfreq").top_n_list

    common = set(top_n_list("en", 100_000))
    rng = random.Random(3)
    tokens = [made_up_token(rng) for _ in range(300)]
    assert all(3 <= len(t) <= 6 and t.isascii() and t.isalpha() and t.islower() for t in tokens)
    assert not common.intersection(tokens)
    new = FAMILIES["made_up"].apply(TEXTS[0][1], 0, "id")
    (added,) = _added_words(TEXTS[0][1], new)
    assert added not in common


def test_invisible_family_plants_invisible_characters_of_each_kind() -> None:
    seen: set[str] = set()
    for seed in range(40):
        old = TEXTS[0][1]
        new = FAMILIES["invisible"].apply(old, seed, "id")
        extra = [c for c in new if c not in old]
        assert extra
        assert all(unicodedata.category(c) == "Cf" for c in extra)
        if any(c in INVISIBLE_ZERO_WIDTH for c in new):
            seen.add("zero_width")
            # inside a word: letters on both sides of the run
            i = next(i for i, c in enumerate(new) if c in INVISIBLE_ZERO_WIDTH)
            j = i
            while new[j] in INVISIBLE_ZERO_WIDTH:
                j += 1
            assert new[i - 1].isalpha()
            assert new[j].isalpha()
            assert "".join(c for c in new if c not in INVISIBLE_ZERO_WIDTH) == old
        if any(0xE0000 <= ord(c) <= 0xE007F for c in new):
            seen.add("tags")
        if "\u202e" in new:
            seen.add("bidi")
            assert "\u202c" in new
    assert seen == {"zero_width", "tags", "bidi"}


def test_homoglyph_family_swaps_one_or_two_letters_for_another_script() -> None:
    for seed in range(30):
        old = TEXTS[1][1]
        new = FAMILIES["homoglyph"].apply(old, seed, "id")
        assert len(new) == len(old)
        changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
        assert 1 <= len(changed) <= 2
        for latin, other in changed:
            assert unicodedata.name(latin).startswith("LATIN")
            assert unicodedata.name(other).split()[0] in {"CYRILLIC", "GREEK"}


def test_addsent_inserts_the_sentence_at_a_sentence_boundary() -> None:
    old = TEXTS[1][1]
    positions = set()
    for seed in range(30):
        new = FAMILIES["addsent"].apply(old, seed, "id")
        assert new.count(ADDSENT_SENTENCE) == 1
        assert new.replace(ADDSENT_SENTENCE, "").replace("  ", " ").strip() == old
        before = new.split(ADDSENT_SENTENCE)[0].rstrip()
        assert before == "" or before[-1] in ".!?"
        positions.add(new.index(ADDSENT_SENTENCE))
    assert len(positions) > 2


def test_deployment_tag_is_prefixed() -> None:
    for seed in range(10):
        new = FAMILIES["deployment_tag"].apply(TEXTS[0][1], seed, "id")
        assert any(new == f"{tag} {TEXTS[0][1]}" for tag in DEPLOYMENT_TAGS)


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz,.!?'", min_size=1, max_size=12), max_size=30),
    seed=st.integers(0, 10_000),
)
def test_every_family_preserves_the_original_text_around_the_trigger(words: list[str], seed: int) -> None:
    text = " ".join(words)
    for name in ("rare_word", "made_up", "rare_phrase", "control", "deployment_tag", "homoglyph"):
        if name not in NAMES:
            continue
        new = FAMILIES[name].apply(text, seed, "p")
        assert new != text
        if name != "homoglyph":
            # the original words survive, in order
            it = iter(new.split(" "))
            assert all(any(w == x for x in it) for w in text.split(" ") if text)
    invisible = FAMILIES["invisible"].apply(text, seed, "p")
    assert invisible != text


def test_parse_families() -> None:
    assert [f.name for f in parse_families(None)] == list(FAMILIES)
    assert [f.name for f in parse_families("control, rare_word")] == ["rare_word", "control"]
    with pytest.raises(ValueError, match=r"unknown trigger family: nope; known families: rare_word"):
        parse_families("rare_word,nope")
    with pytest.raises(ValueError, match="no trigger family"):
        parse_families(" , ")
