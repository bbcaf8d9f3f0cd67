"""Metric definitions against hand-computed cases: the shipped thresholds are chosen with them."""

from __future__ import annotations

import math

import pytest

from firewall.evaluation.metrics import LatencyStats, auroc, percentile, rate_at, threshold_for_fpr


def test_auroc_perfect_separation_is_one() -> None:
    assert auroc([0.0, 0.1, 0.2], [0.8, 0.9]) == 1.0


def test_auroc_identical_scores_is_one_half() -> None:
    assert auroc([0.3, 0.3, 0.3], [0.3, 0.3]) == 0.5
    assert auroc([0.0] * 10, [0.0] * 7) == 0.5


def test_auroc_inverted_is_zero() -> None:
    assert auroc([0.8, 0.9], [0.0, 0.1, 0.2]) == 0.0


def test_auroc_counts_ties_as_half() -> None:
    # pairs (pos, neg): (0.5, 0.1) win, (0.5, 0.5) tie, (0.9, 0.1) win, (0.9, 0.5) win -> 3.5 / 4
    assert auroc([0.1, 0.5], [0.5, 0.9]) == pytest.approx(0.875)
    # 3 negatives, 2 positives: wins 1*3 (0.7 beats all) + 1 (0.2 beats 0.1) + half of (0.2 vs 0.2) = 4.5 / 6
    assert auroc([0.1, 0.2, 0.3], [0.2, 0.7]) == pytest.approx(0.75)


def test_auroc_matches_brute_force_pair_count() -> None:
    negatives = [0.0, 0.0, 0.1, 0.4, 0.4, 0.9, 0.2]
    positives = [0.4, 0.0, 0.95, 0.2, 0.2]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    assert auroc(negatives, positives) == pytest.approx(wins / (len(negatives) * len(positives)))


def test_auroc_empty_side_is_nan() -> None:
    assert math.isnan(auroc([], [1.0]))
    assert math.isnan(auroc([1.0], []))


def test_threshold_for_fpr_allows_at_most_the_target_share() -> None:
    clean = [i / 100 for i in range(100)]  # 0.00 .. 0.99
    threshold, cutoff = threshold_for_fpr(clean, 0.01)
    # one clean text (0.99) may be flagged; the 2nd highest (0.98) must not be
    assert cutoff == 0.98
    assert threshold == 0.99
    assert rate_at(clean, threshold) == 0.01


def test_threshold_for_fpr_takes_the_lowest_observed_score_above_the_cutoff() -> None:
    clean = [0.0] * 95 + [0.5] * 5  # 5% of clean texts at 0.5
    threshold, cutoff = threshold_for_fpr(clean, 0.01, candidates=[0.2, 0.6, 0.9])
    assert cutoff == 0.5  # more than 1% score 0.5, so 0.5 itself cannot be the threshold
    assert threshold == 0.6
    assert rate_at(clean, threshold) == 0.0
    assert rate_at([0.2, 0.6, 0.9], threshold) == pytest.approx(2 / 3)


def test_threshold_for_fpr_all_clean_zero_uses_the_lowest_positive_score() -> None:
    threshold, cutoff = threshold_for_fpr([0.0] * 200, 0.01, candidates=[0.0, 0.7, 0.95])
    assert (threshold, cutoff) == (0.7, 0.0)


def test_threshold_for_fpr_is_none_when_nothing_scores_above_the_cutoff() -> None:
    threshold, cutoff = threshold_for_fpr([1.0] * 50, 0.01, candidates=[1.0, 0.3])
    assert threshold is None
    assert cutoff == 1.0
    assert rate_at([1.0, 0.3], threshold) == 0.0


def test_threshold_for_fpr_small_sets_round_down() -> None:
    # 50 clean texts at 1%: floor(0.5) = 0 may be flagged, so the threshold clears the maximum.
    clean = [i / 50 for i in range(50)]
    threshold, cutoff = threshold_for_fpr(clean, 0.01, candidates=[0.999])
    assert cutoff == max(clean)
    assert threshold == 0.999


def test_threshold_for_fpr_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="target_fpr"):
        threshold_for_fpr([0.1], 1.5)
    with pytest.raises(ValueError, match="negative"):
        threshold_for_fpr([], 0.01)


def test_rate_at_uses_greater_or_equal_like_the_policy() -> None:
    assert rate_at([0.5, 0.49, 0.51], 0.5) == pytest.approx(2 / 3)
    assert math.isnan(rate_at([], 0.5))


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert percentile(list(range(101)), 99) == 99


def test_latency_stats_in_milliseconds() -> None:
    stats = LatencyStats.from_seconds([0.001, 0.002, 0.003])
    assert stats.n == 3
    assert stats.mean_ms == pytest.approx(2.0)
    assert stats.p50_ms == pytest.approx(2.0)
    assert math.isnan(LatencyStats.from_seconds([]).mean_ms)
