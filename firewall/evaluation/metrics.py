"""Detection metrics in pure Python: AUROC, thresholds for a target FPR, rates, latency.

Why pure Python: the suite runs in the proxy's own environment (no numpy, no
scikit-learn) and on a few thousand scores per detector, where sorting in
Python takes milliseconds. Every definition here is spelled out because the
shipped default thresholds are chosen with them.

Conventions: higher scores are more suspicious; an item is *flagged* at
threshold ``t`` when ``score >= t`` (the policy's rule); "negatives" are clean
texts and "positives" are triggered texts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "LatencyStats",
    "auroc",
    "percentile",
    "rate_at",
    "threshold_for_fpr",
]


def auroc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """Area under the ROC curve: P(positive scores above negative), ties counting one half.

    Computed as the Mann-Whitney U statistic from average ranks in
    O(n log n): rank all scores together (tied scores share the mean of their
    ranks), sum the positives' ranks, subtract the smallest possible sum, and
    divide by the number of (positive, negative) pairs. 1.0 is perfect
    separation, 0.5 is chance (or identical scores), 0.0 is perfectly inverted.
    NaN when either side is empty.
    """
    n_neg, n_pos = len(negatives), len(positives)
    if n_neg == 0 or n_pos == 0:
        return math.nan
    labelled = sorted([(s, 0) for s in negatives] + [(s, 1) for s in positives])
    rank_sum_pos = 0.0
    i = 0
    while i < len(labelled):
        j = i
        while j + 1 < len(labelled) and labelled[j + 1][0] == labelled[i][0]:
            j += 1
        mean_rank = (i + j) / 2 + 1  # ranks are 1-based
        rank_sum_pos += mean_rank * sum(label for _, label in labelled[i : j + 1])
        i = j + 1
    u = rank_sum_pos - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def threshold_for_fpr(
    negatives: Sequence[float], target_fpr: float, candidates: Iterable[float] = ()
) -> tuple[float | None, float]:
    """The lowest threshold at which at most ``target_fpr`` of the negatives score ``>=`` it.

    Returns ``(threshold, cutoff)``. With ``k = floor(target_fpr * n)`` negatives
    allowed to be flagged, ``cutoff`` is the ``(k+1)``-th highest negative score:
    a threshold keeps the false-positive rate within target exactly when it is
    strictly above ``cutoff``. Any threshold in ``(cutoff, next observed score]``
    flags the same observed items, so the one returned is the smallest observed
    score (negatives or ``candidates``, e.g. the triggered scores) above
    ``cutoff``: a real score, and the one that detects the most. ``None`` when no
    observed score lies above the cutoff: no threshold flags anything at this
    false-positive rate. When ``k >= n`` every negative may be flagged and the
    lowest observed score is returned.
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError("target_fpr must be in [0, 1]")
    if not negatives:
        raise ValueError("threshold_for_fpr needs at least one negative score")
    observed = [*negatives, *candidates]
    n = len(negatives)
    k = math.floor(target_fpr * n + 1e-9)
    if k >= n:
        return min(observed), -math.inf
    cutoff = sorted(negatives, reverse=True)[k]
    above = [s for s in observed if s > cutoff]
    return (min(above) if above else None), cutoff


def rate_at(scores: Sequence[float], threshold: float | None) -> float:
    """Fraction of ``scores`` flagged (``>= threshold``); 0.0 for no threshold, NaN for no scores."""
    if not scores:
        return math.nan
    if threshold is None:
        return 0.0
    return sum(1 for s in scores if s >= threshold) / len(scores)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Per-item latency in milliseconds: mean, median and 99th percentile."""

    n: int
    mean_ms: float
    p50_ms: float
    p99_ms: float

    @classmethod
    def from_seconds(cls, seconds: Sequence[float]) -> LatencyStats:
        if not seconds:
            return cls(0, math.nan, math.nan, math.nan)
        ms = [s * 1000 for s in seconds]
        return cls(len(ms), sum(ms) / len(ms), percentile(ms, 50), percentile(ms, 99))
