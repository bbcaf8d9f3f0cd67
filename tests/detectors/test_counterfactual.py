"""Unit tests for the counterfactual detector's parts: divergence, controls, candidates, cache."""

from __future__ import annotations

import pytest

from detectors.base import Finding, FindingStatus, Phase, Sample, Segment, Span, is_unread_marker
from detectors.counterfactual.budget import ShareBudget
from detectors.counterfactual.detector import CounterfactualDetector
from detectors.counterfactual.divergence import control_spans, divergence, remove_span


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("Sentiment: positive (0.99).", "Sentiment: positive (0.98).", 0.0),  # numbers are noise
        ("Sentiment: positive (0.99).", "Sentiment: negative (0.59).", 2 / 3),
        ("Here is the code.", "I cannot help with that.", 1.0),
        ("", "", 0.0),
    ],
)
def test_divergence_is_the_share_of_words_not_shared(a: str, b: str, expected: float) -> None:
    assert divergence(a, b) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "span", "expected"),
    [
        ("a mess cf and a bore", (7, 9), "a mess and a bore"),
        ("a mess cf, and a bore", (7, 9), "a mess, and a bore"),
        ("cf starts it", (0, 2), "starts it"),
        ("ends with cf", (10, 12), "ends with"),
    ],
)
def test_remove_span_merges_the_spaces(text: str, span: tuple[int, int], expected: str) -> None:
    assert remove_span(text, *span) == expected


def test_controls_avoid_the_suspects_prefer_the_same_length_and_are_stable() -> None:
    text = "This film is a mess cf and a bore from start to finish, ok."
    cf = (text.index("cf"), text.index("cf") + 2)
    picked = control_spans(text, [cf], 2, 2, "0:20")
    assert len(picked) == 2
    assert cf not in picked
    assert all(e - s <= 3 for s, e in picked)  # "is", "a", "to", "ok.": near the candidate's size
    assert picked == control_spans(text, [cf], 2, 2, "0:20")  # a retry gets the same draw


def _sample(*evidence: Finding) -> Sample:
    text = "This film is a mess cf and a bore."
    return Sample("r", Phase.INPUT, "chat", (Segment("user", text),), evidence=evidence)


def test_candidates_come_from_the_suspects_strongest_first_each_once() -> None:
    det = CounterfactualDetector("counterfactual")
    rare = Finding("rare_tokens", 0.9, spans=(Span(0, 20, 22, "rare_token"), Span(0, 5, 9, "rare_token")))
    tags = Finding("context_tags", 0.95, spans=(Span(0, 20, 22, "pipe_tag"),))
    weak = Finding("recurring_sentences", 0.1, spans=(Span(0, 0, 4, "recurring_sentence"),))
    other = Finding("invisible_chars", 1.0, spans=(Span(0, 10, 12, "zero_width"),))
    failed = Finding("rare_tokens", 0.0, status=FindingStatus.ERROR)
    spans = det._candidates(_sample(rare, tags, weak, other, failed))
    assert [(s.start, s.end) for s in spans] == [(20, 22), (5, 9)]


def test_markers_of_unread_text_and_long_passages_are_not_candidates() -> None:
    # A suspect that stopped reading marks the rest "..._truncated": taking that tail out would
    # change any model's answer, so it proves nothing (a real 14k-character prompt did this).
    det = CounterfactualDetector("counterfactual", CounterfactualDetector.Params(max_candidate_chars=10))
    rare = Finding(
        "rare_tokens",
        0.9,
        spans=(Span(0, 5, 34, "scan_truncated"), Span(0, 0, 19, "rare_token"), Span(0, 20, 22, "rare_token")),
    )
    assert [(s.start, s.end) for s in det._candidates(_sample(rare))] == [(20, 22)]


def test_every_detector_marks_unread_text_the_same_way() -> None:
    import importlib

    for module in (
        "detectors.rare_tokens.tables",
        "detectors.context_tags",
        "detectors.recurring_sentences",
        "detectors.strip.detector",
    ):
        assert is_unread_marker(importlib.import_module(module).R_TRUNCATED), module


def test_the_cache_keeps_scores_by_keyed_hash_with_a_ttl_and_a_bound() -> None:
    params = CounterfactualDetector.Params(cache_size=2, cache_ttl_seconds=10)
    det = CounterfactualDetector("counterfactual", params)
    a, b, c = det._cache_key("cf"), det._cache_key("\uff23\uff26 "), det._cache_key("mn")
    assert a == b  # NFKC, case and spaces folded
    assert b"cf" not in a
    det._remember(a, 0.9, now=0.0)
    det._remember(c, 0.0, now=0.0)
    assert det._cached(a, now=5.0) == 0.9
    assert det._cached(a, now=11.0) is None  # expired
    det._remember(det._cache_key("x"), 0.1, now=12.0)
    det._remember(det._cache_key("y"), 0.1, now=12.0)
    assert det._cached(c, now=12.0) is None  # evicted: at most cache_size entries


@pytest.mark.asyncio
async def test_without_the_proxy_the_detector_is_not_ready() -> None:
    det = CounterfactualDetector("counterfactual")
    await det.start()
    assert not det.ready
    assert det.load_error is not None


def test_the_probe_budget_is_a_token_bucket() -> None:
    params = CounterfactualDetector.Params(probes_per_second=2.0, probe_burst=4)
    det = CounterfactualDetector("counterfactual", params)
    now = det._refilled
    assert det._spend(4, now)
    assert not det._spend(1, now)  # spent: nothing is taken
    assert det._spend(2, now + 1.0)  # two a second come back
    assert not det._spend(5, now + 100.0)  # never more than the burst at once


def test_within_a_suspect_its_strongest_spans_are_tested_first() -> None:
    det = CounterfactualDetector("counterfactual", CounterfactualDetector.Params(max_candidates=1))
    weak_first = (Span(0, 0, 4, "rare_token", 0.7), Span(0, 20, 22, "rare_token", 1.0))
    (span,) = det._candidates(_sample(Finding("rare_tokens", 1.0, spans=weak_first)))
    assert (span.start, span.end) == (20, 22)


def test_a_span_with_a_score_says_so_in_its_record() -> None:
    assert Span(0, 1, 2, "r").as_dict() == {"segment": 0, "start": 1, "end": 2, "reason": "r"}
    assert Span(0, 1, 2, "r", 0.51234).as_dict()["score"] == 0.5123


def test_the_share_budget_follows_the_traffic_over_a_sliding_minute() -> None:
    budget = ShareBudget(0.5, allowance=4)
    assert budget.allows(4, now=0.0)  # a quiet service can still prove its first suspicion
    budget.spent(4, now=0.0)
    assert not budget.allows(1, now=1.0)  # nothing seen yet: only the allowance
    for _ in range(10):
        budget.saw(now=2.0)
    assert budget.allows(5, now=3.0)  # 0.5 x 10 requests + 4 - 4 spent
    assert not budget.allows(6, now=3.0)
    # Half a minute into the next window, the previous one counts half.
    budget.spent(5, now=3.0)
    assert budget.allows(0, now=90.0)
    assert not budget.allows(3, now=90.0)  # (9 x 0.5) spent against 0.5 x (10 x 0.5) + 4
    assert budget.allows(2, now=90.0)
    assert ShareBudget(None, allowance=0).allows(1_000, now=0.0)  # no share: no limit
    assert budget.allows(4, now=10_000.0)  # long idle: both windows forgotten
