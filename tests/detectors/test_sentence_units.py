"""Unit tests for detectors/sentence_units.py: where a prompt's sentences, clauses and items are."""

from __future__ import annotations

from detectors.sentence_units import split_units


def _units(text: str) -> list[str]:
    return [text[u.start : u.end] for u in split_units(text)]


def test_split_keeps_abbreviations_initials_and_times_inside_sentences() -> None:
    text = "Dr. Smith met J. Jones at 3 p.m. on Friday. They talked, e.g. about films vs. plays. Done!"
    assert _units(text) == [
        "Dr. Smith met J. Jones at 3 p.m. on Friday.",
        "They talked, e.g. about films vs. plays.",
        "Done!",
    ]


def test_split_never_cuts_inside_a_quotation() -> None:
    text = 'She wrote "I watched this 3D movie. It was fine." and left. Then she called.'
    assert _units(text) == ['She wrote "I watched this 3D movie. It was fine." and left.', "Then she called."]


def test_split_skips_code_and_makes_list_items_units() -> None:
    text = (
        "Why does this fail?\n```python\ndef f(x):\n    return x. y\n```\n"
        "It says `obj.attr` is None.\n- first item. still the first\n2) second item"
    )
    units = split_units(text)
    assert [text[u.start : u.end] for u in units] == [
        "Why does this fail?",
        "It says `obj.attr` is None.",
        "first item. still the first",
        "second item",
    ]
    assert [u.kind for u in units] == ["sentence", "sentence", "item", "item"]


def test_split_ellipsis_before_lower_case_continues_the_sentence() -> None:
    assert _units("the film was long... and dull. I left early.") == [
        "the film was long... and dull.",
        "I left early.",
    ]


def test_clauses_split_at_semicolons_and_spaced_dashes_only_when_both_sides_are_clauses() -> None:
    text = "The plot is thin and predictable; the cast does what it can -- and that is a lot."
    assert [(text[u.start : u.end], u.kind) for u in split_units(text)] == [
        ("The plot is thin and predictable", "clause"),
        ("the cast does what it can", "clause"),
        ("and that is a lot.", "clause"),
    ]
    assert [u.kind for u in split_units("Well; fine, the plot is thin.")] == ["sentence"]
