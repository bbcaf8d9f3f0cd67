"""Rates by conversation: the interval resamples conversations, so one talkative conversation
widens it, and the same data gives the same numbers."""

from __future__ import annotations

import pytest

from firewall.evaluation.clustered import clustered_rate
from firewall.evaluation.real_traffic import conversation_of


def test_one_conversation_with_many_hits_is_one_event() -> None:
    # 5 hits, all in one conversation of 5 texts; 95 clean conversations of one text each.
    clustered = [("loud", True)] * 5 + [(f"c{i}", False) for i in range(95)]
    # The same 5 hits spread over 5 conversations.
    spread = [(f"h{i}", True) for i in range(5)] + [(f"c{i}", False) for i in range(95)]
    a, b = clustered_rate(clustered), clustered_rate(spread)
    assert a.rate == b.rate == pytest.approx(0.05)
    assert (a.conversations, a.conversations_hit) == (96, 1)
    assert (b.conversations, b.conversations_hit) == (100, 5)
    # Grouped hits give the wider interval: a resample either has the conversation or not.
    assert a.low == 0.0
    assert a.high - a.low > b.high - b.low
    assert b.low <= b.rate <= b.high
    assert b.low > 0.0


def test_the_interval_is_reproducible() -> None:
    outcomes = [(f"c{i % 40}", i % 7 == 0) for i in range(400)]
    first = clustered_rate(outcomes)
    assert first == clustered_rate(outcomes)
    assert first.low < first.rate < first.high


def test_no_texts_and_no_resamples() -> None:
    empty = clustered_rate([])
    assert (empty.texts, empty.rate, empty.low, empty.high) == (0, 0.0, 0.0, 0.0)
    exact = clustered_rate([("a", True), ("b", False)], resamples=0)
    assert exact.low == exact.high == exact.rate == 0.5
    assert exact.to_json()["interval_95"] == [0.5, 0.5]


def test_text_ids_name_their_conversation_without_the_part_suffix() -> None:
    assert conversation_of("OSYsAOr_33/7") == "OSYsAOr"
    assert conversation_of("abc/0") == "abc"
