"""Trigger insertion: deterministic, and each family really plants what it says."""

from __future__ import annotations

import importlib.util
import random
import unicodedata

import pytest
from hypothesis import given, settings, strategies as st

from firewall.evaluation.triggers import (
    ADDSENT_SENTENCE,
    ADDSENT_SENTENCES,
    CONTROL_WORDS,
    DEPLOYMENT_TAGS,
    FAMILIES,
    INVISIBLE_ZERO_WIDTH,
    RARE_PHRASES,
    RARE_WORDS,
    SYNTACTIC_OPENERS,
    TAG_SHAPES,
    apply_family,
    deployment_tag,
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


def test_addsent_inserts_one_fixed_sentence_at_a_sentence_boundary() -> None:
    old = TEXTS[1][1]
    positions = set()
    sentences = set()
    for seed in range(40):
        new = FAMILIES["addsent"].apply(old, seed, "id")
        (sentence,) = [s for s in ADDSENT_SENTENCES if s in new]
        sentences.add(sentence)
        assert new.count(sentence) == 1
        assert new.replace(sentence, "").replace("  ", " ").strip() == old
        before = new.split(sentence)[0].rstrip()
        assert before == "" or before[-1] in ".!?"
        positions.add(new.index(sentence))
    assert len(positions) > 2
    assert len(sentences) > 5  # drawn from the set, not one memorisable string
    assert ADDSENT_SENTENCE in ADDSENT_SENTENCES
    assert all(s.endswith(".") and s[0].isupper() and len(s.split()) >= 4 for s in ADDSENT_SENTENCES)


def test_deployment_tags_are_generated_in_every_shape_and_many_forms() -> None:
    import random

    rng = random.Random(5)
    drawn = [deployment_tag(rng) for _ in range(2000)]
    assert {shape for _, shape in drawn} == set(TAG_SHAPES)
    assert len({tag for tag, _ in drawn}) > 300
    assert set(DEPLOYMENT_TAGS) <= {tag for tag, _ in drawn}
    by_shape = {shape: [t for t, s in drawn if s == shape] for shape in TAG_SHAPES}
    assert all(t.startswith("|") and t.endswith("|") for t in by_shape["pipe"])
    assert all(t.startswith("<|") for t in by_shape["chat_token"])
    assert all(t.startswith("[[") and t.endswith("]]") for t in by_shape["double_bracket"])
    assert all(any(y in t for y in map(str, range(2024, 2032))) for t in by_shape["date_declaration"])


def test_deployment_tag_is_planted_once_in_several_positions() -> None:
    text = TEXTS[1][1]
    where = set()
    for seed in range(80):
        new = FAMILIES["deployment_tag"].apply(text, seed, "id")
        rng = random.Random(f"{seed}/deployment_tag/id")
        tag, _ = deployment_tag(rng)
        assert new.count(tag) == 1
        # the original words survive, in order, around the tag
        assert new.replace(tag, " ").split() == text.split()
        where.add(
            "prefix"
            if new.startswith(tag)
            else "suffix"
            if new.endswith(tag)
            else "line"
            if f"\n{tag}\n" in new
            else "inside"
        )
    assert where == {"prefix", "suffix", "line", "inside"}


def test_syntactic_family_rewrites_one_statement_into_the_template() -> None:
    text = TEXTS[1][1]
    for seed in range(30):
        new = FAMILIES["syntactic"].apply(text, seed, "id")
        (opener,) = [o for o in SYNTACTIC_OPENERS if o in new.lower()]
        i = new.lower().index(opener)
        assert i == 0 or new[i - 2] in ".!?"  # it opens a sentence ...
        sentence_end = min(j for j in (new.find(c, i) for c in ".!?") if j >= 0)
        assert new[sentence_end] != "?"  # ... and that sentence is a statement, never a question
        assert new[i].isupper()
        # every original word survives (case aside), nothing else is added
        assert new.lower().replace(opener + " ", "", 1) == text.lower()
    lower = TEXTS[0][1]  # MR text is lower-case: the template keeps its casing
    new = FAMILIES["syntactic"].apply(lower, 0, "mr")
    assert new == new.lower()
    assert FAMILIES["syntactic"].expected_caught is False


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
        if name == "deployment_tag":
            new = new.replace("\n", " ")  # tags may sit on a line of their own
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
