"""Threshold calibration: from a sample of clean traffic to a reviewed config patch.

Security teams own the thresholds, and a threshold is only meaningful with its
price: the share of clean traffic it flags. This module turns a sample of clean
scores (a shadow score log written in ``monitor`` mode, ``scan`` output, or raw
records scored here through the proxy's own :class:`~firewall.offline.scanning.Scanner`)
into, per detector (and per route with ``per_route``):

* the **threshold** for a target false-positive rate,
* the **observed FPR** at that threshold on the sample,
* a **one-sided upper confidence bound** on the true FPR (exact Clopper-Pearson),
* the sample size, and a refusal when the sample is too small to say anything;

plus the detection rate on the evaluation suite's trigger families at those
thresholds, a score plot, and a YAML patch for the config.

Everything statistical is pure Python (no numpy, no scipy): the proxy's
environment has neither, and a few hundred thousand floats sort in well under a
second.

How the threshold is chosen (ties included)
-------------------------------------------
A text is flagged when ``score >= threshold`` (the policy's rule). With ``n``
clean scores and target ``f``, at most ``k = floor(f * n)`` of them may be
flagged. The **cutoff** is the ``(k+1)``-th highest clean score, counting tied
scores one by one; every clean score equal to the cutoff must stay unflagged
(flagging one flags all its ties, i.e. at least ``k+1`` scores), so any valid
threshold lies strictly above the cutoff. This is
:func:`firewall.evaluation.metrics.threshold_for_fpr`, reused here. Ties at the
cutoff therefore never split: they all fall below the threshold, and the
observed FPR can be well under target when many clean texts share one score.

Any threshold in ``(cutoff, next clean score above it]`` flags exactly the same
clean texts. The one written out is the *shortest decimal* (1 to 6 places) just
above the cutoff: readable in a config review, the lowest (most sensitive) in
that interval, and covered by the bound below. When no clean score lies above
the cutoff (a detector that scores 0.0 on nearly all clean text, or ties at the
top), the sample puts no upper limit on the threshold: the configured threshold
is kept when it is above the cutoff (basis ``configured``), otherwise the
shortest decimal above the cutoff is used (basis ``grid``); a cutoff of 1.0 (too
many clean texts at the maximum score) cannot be met at all (``unattainable``).

Why the Clopper-Pearson bound holds although the threshold came from the same data
-------------------------------------------------------------------------------------
For continuous scores, the true FPR just above the ``(k+1)``-th highest of ``n``
clean scores is distributed as the ``(k+1)``-th smallest of ``n`` uniforms,
``Beta(k+1, n-k)``; the one-sided Clopper-Pearson upper bound for ``k``
exceedances out of ``n`` is exactly that distribution's ``confidence`` quantile.
So the bound covers the true FPR of any threshold in ``(cutoff, next score]``
with probability at least ``confidence`` (exactly, in the limit of a threshold
touching the cutoff), and conservatively for tied (discrete) scores.

The refusal rule
----------------
The bound at the calibrated threshold must not exceed ``BOUND_FACTOR`` (2) times
the target, *whatever the data*: the worst case is a threshold that lets the full
``floor(f * n)`` clean texts through. :func:`min_sample_size` is the smallest
``n`` from which that holds for every larger ``n``; below it :func:`calibrate`
raises :class:`SampleTooSmallError` naming it. At 95% confidence that is 523
clean texts for a 1% target (about 5.25 / f for small f: 261 at 2%, 5,254 at
0.1%); at 90% it is 333, at 99% 1,003. With zero exceedances
alone ``n >= 3 / (2 f)`` would do, but the rule does not depend on the data, so a
team knows before collecting how much shadow traffic a target needs.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import yaml

from firewall.config.schema import FirewallConfig, build_config, deep_merge
from firewall.core.errors import FirewallError
from firewall.core.types import FindingStatus, Phase, Segment
from firewall.evaluation.metrics import rate_at, threshold_for_fpr
from firewall.offline.plotting import (
    PlotUnavailableError,
    figure,
    finish_panel,
    plot_available,
    save,
    share_hist,
)
from firewall.offline.scanning import RecordError, Scanner

__all__ = [
    "BOUND_FACTOR",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_TPR_LIMIT",
    "DEFAULT_TPR_SECONDS",
    "CalibrationResult",
    "DetectorCalibration",
    "FamilyTPR",
    "PendingRecord",
    "PlotUnavailableError",
    "SampleTooSmallError",
    "ScoreRow",
    "ScoreSample",
    "allowed_exceedances",
    "binom_cdf",
    "build_patch",
    "calibrate",
    "calibrate_detector",
    "choose_threshold",
    "clopper_pearson_upper",
    "family_tpr",
    "format_table",
    "min_sample_size",
    "parse_score_record",
    "patch_header",
    "plot_available",
    "read_sample",
    "render_patch",
    "score_pending",
    "verify_patch",
    "write_plot",
]

DEFAULT_CONFIDENCE: Final = 0.95
#: The FPR bound at the calibrated threshold may be at most this many times the target.
BOUND_FACTOR: Final = 2.0
#: Clean texts the trigger families are planted in for the TPR columns.
DEFAULT_TPR_LIMIT: Final = 200
#: Wall-time budget of the TPR scans; what is scanned by then is reported (with its n).
DEFAULT_TPR_SECONDS: Final = 45.0
#: Bad lines printed one by one before the rest are only counted.
MAX_REPORTED_BAD_LINES: Final = 100

_SCANNABLE = ("text", "request", "response")


class SampleTooSmallError(FirewallError):
    """The clean sample cannot support the requested FPR; the message names the minimum n."""

    code = "sample_too_small"
    reason = "sample_too_small"


# --------------------------------------------------------------------------- statistics


def binom_cdf(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, p)``, exact to double precision.

    Terms are summed in log space from ``i = k`` downwards with the ratio
    recurrence, and the sum stops once the remaining terms (past the mode, so
    shrinking geometrically) are below 1e-17 of the largest. That makes one
    evaluation ``O(sqrt(n p))`` in practice instead of ``O(k)``, which keeps the
    bisection in :func:`clopper_pearson_upper` fast even for score logs with
    millions of lines.
    """
    if n < 0:
        raise ValueError("n must not be negative")
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    log_term = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q
    mode = (n + 1) * p
    step = log_q - log_p
    terms = [log_term]
    peak = log_term
    i = k
    while i > 0:
        # term(i-1) / term(i) = i (1-p) / ((n-i+1) p)
        log_term += math.log(i) - math.log(n - i + 1) + step
        i -= 1
        terms.append(log_term)
        peak = max(peak, log_term)
        if i < mode and log_term < peak - 40.0:  # e^-40 ~ 4e-18: the rest cannot matter
            break
    return min(1.0, math.exp(peak) * math.fsum(math.exp(t - peak) for t in terms))


def clopper_pearson_upper(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """One-sided exact upper confidence bound on a rate from ``k`` events in ``n`` trials.

    The ``p`` at which seeing ``k`` or fewer events has probability ``1 -
    confidence`` (``P(X <= k | n, p) = alpha``), found by bisection on ``p`` (the
    tail decreases in ``p``) to 1e-13. Equal to the ``confidence`` quantile of
    ``Beta(k+1, n-k)``; for ``k = 0`` it is ``1 - alpha ** (1/n)``, the "rule of
    three" (about ``3/n`` at 95%). ``1.0`` when ``k >= n``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be between 0 and 1 (exclusive)")
    if n < 1:
        raise ValueError("n must be at least 1")
    if not 0 <= k <= n:
        raise ValueError("k must be between 0 and n")
    if k == n:
        return 1.0
    alpha = 1.0 - confidence
    if k == 0:
        return -math.expm1(math.log(alpha) / n)  # closed form, and more precise
    lo, hi = k / n, 1.0
    while hi - lo > 1e-13:
        mid = (lo + hi) / 2
        if binom_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def allowed_exceedances(n: int, target_fpr: float) -> int:
    """``floor(target_fpr * n)``: clean scores a threshold may flag (as in ``threshold_for_fpr``)."""
    return math.floor(target_fpr * n + 1e-9)


def min_sample_size(
    target_fpr: float, confidence: float = DEFAULT_CONFIDENCE, factor: float = BOUND_FACTOR
) -> int:
    """The smallest ``n`` from which the FPR bound stays within ``factor * target`` for every larger n.

    Worst case over the data: the calibrated threshold may flag up to ``k =
    floor(target * n)`` clean texts, and the bound grows with ``k``. As ``n``
    grows the bound falls, except where ``k`` steps up, so the feasible ``n``
    form a saw-tooth; this returns the point after the last tooth that fails
    (found segment by segment: within a run of equal ``k`` the bound decreases in
    ``n``, so one bisection per run suffices).
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError("target_fpr must be between 0 and 1 (exclusive)")
    limit = factor * target_fpr
    if limit >= 1.0:
        return 1

    def ok(n: int) -> bool:
        return clopper_pearson_upper(allowed_exceedances(n, target_fpr), n, confidence) <= limit

    def start(k: int) -> int:  # the smallest n with floor(target * n) >= k
        n = max(1, math.ceil(k / target_fpr) - 2)
        while n > 1 and allowed_exceedances(n - 1, target_fpr) >= k:
            n -= 1
        while allowed_exceedances(n, target_fpr) < k:
            n += 1
        return n

    last_failing: int | None = None
    passing_in_a_row = 0
    k = 0
    while passing_in_a_row < 3:  # the bound at a run's start falls like 1 + z/sqrt(k): settled
        if k > 100_000:
            raise ValueError(f"no sample size keeps the bound within {factor}x the target")
        if ok(start(k)):
            passing_in_a_row += 1
        else:
            last_failing, passing_in_a_row = k, 0
        k += 1
    if last_failing is None:
        return 1
    lo, hi = start(last_failing), start(last_failing + 1) - 1
    if not ok(hi):
        return hi + 1
    while hi - lo > 1:  # lo fails, hi passes
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


# --------------------------------------------------------------------------- thresholds


def _shortest_decimal_above(lo: float, hi: float) -> float | None:
    """The smallest number with the fewest decimals (1 to 6) in ``(lo, hi]``; None if none."""
    for places in range(1, 7):
        scale: int = 10**places
        m = math.floor(lo * scale) + 1
        while m > 1 and (m - 1) / scale > lo:  # guard against float rounding either way
            m -= 1
        while m / scale <= lo:
            m += 1
        value = round(m / scale, places)
        if lo < value <= hi:
            return value
    return None


def choose_threshold(
    scores: Sequence[float], target_fpr: float, configured: float | None = None
) -> tuple[float | None, float, str]:
    """``(threshold, cutoff, basis)`` for ``target_fpr`` on clean ``scores`` (module docstring).

    ``basis`` is ``sample`` (a clean score above the cutoff bounds the threshold),
    ``configured`` (nothing above the cutoff; the configured threshold is above it
    and is kept), ``grid`` (nothing above the cutoff; the shortest decimal above
    it) or ``unattainable`` (the cutoff is 1.0; threshold ``None``).
    """
    observed, cutoff = threshold_for_fpr(scores, target_fpr)
    if observed is not None:
        return _shortest_decimal_above(cutoff, observed) or observed, cutoff, "sample"
    if configured is not None and configured > cutoff:
        return configured, cutoff, "configured"
    if cutoff >= 1.0:
        return None, cutoff, "unattainable"
    return _shortest_decimal_above(cutoff, 1.0) or 1.0, cutoff, "grid"


@dataclass(frozen=True, slots=True)
class DetectorCalibration:
    """One detector's calibrated threshold on one group of clean scores, and its price.

    ``route`` is ``None`` for the pooled sample (every route). ``flagged`` is how
    many clean scores are ``>= threshold``; ``fpr_upper`` is the one-sided
    Clopper-Pearson bound from ``flagged`` and ``n`` (NaN when unattainable).
    ``errors`` counts records where the detector errored or timed out: their
    score is unknown, so they are not in ``n``.
    """

    detector: str
    route: str | None
    n: int
    errors: int
    target_fpr: float
    confidence: float
    threshold: float | None
    cutoff: float
    basis: str
    configured: float | None
    flagged: int
    observed_fpr: float
    fpr_upper: float


def calibrate_detector(
    scores: Sequence[float],
    target_fpr: float,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    configured: float | None = None,
    keep: float | None = None,
    detector: str = "",
    route: str | None = None,
    errors: int = 0,
) -> DetectorCalibration:
    """Threshold, observed FPR and FPR bound for one detector's clean ``scores``.

    ``configured`` is the threshold in force now (shown as "was"); ``keep`` is
    the one that stays when the sample does not bound the threshold (default:
    ``configured``; for a route, what it would have without a new override).
    Does not check the sample size (see :func:`calibrate`), so it can be used to
    study small samples.
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError("target_fpr must be between 0 and 1 (exclusive)")
    if not scores:
        raise ValueError(f"no clean scores for detector {detector!r}")
    kept = configured if keep is None else keep
    threshold, cutoff, basis = choose_threshold(scores, target_fpr, kept)
    n = len(scores)
    if threshold is None:
        flagged, observed, upper = n, math.nan, math.nan
    else:
        flagged = sum(1 for s in scores if s >= threshold)
        observed = flagged / n
        upper = clopper_pearson_upper(flagged, n, confidence)
    return DetectorCalibration(
        detector=detector,
        route=route,
        n=n,
        errors=errors,
        target_fpr=target_fpr,
        confidence=confidence,
        threshold=threshold,
        cutoff=cutoff,
        basis=basis,
        configured=configured,
        flagged=flagged,
        observed_fpr=observed,
        fpr_upper=upper,
    )


# --------------------------------------------------------------------------- reading the sample


@dataclass(frozen=True, slots=True)
class ScoreRow:
    """The scores one clean record contributes.

    A gated detector the cascade skipped counts as 0.0 (it did not fire, which is
    what the proxy did); a detector that errored or timed out is in ``errors``:
    its score is unknown and it is left out of ``n``.
    """

    scores: dict[str, float]
    errors: tuple[str, ...] = ()
    route: str | None = None
    config_hash: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A record with text but no scores yet: :func:`score_pending` runs it through the Scanner."""

    line_no: int
    record: dict[str, Any]


def _score_value(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"score of {name!r} must be a number, got {value!r}")
    score = float(value)
    if not 0.0 <= score <= 1.0:  # also rejects NaN
        raise RecordError(f"score of {name!r} must be in [0, 1], got {value!r}")
    return score


def _text_of(record: Mapping[str, Any]) -> str | None:
    text = record.get("text")
    if isinstance(text, str):
        return text
    if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
        return "\n".join(text)  # a score-log line with include_text: the phase's texts
    return None


def parse_score_record(record: Mapping[str, Any]) -> ScoreRow:
    """Read a score-log line (``scores`` + ``statuses``) or a ``scan`` line (``scores`` + ``findings``).

    Raises :class:`~firewall.offline.scanning.RecordError` saying what is wrong.
    """
    raw = record.get("scores")
    if not isinstance(raw, dict):
        raise RecordError("'scores' must be an object mapping detector names to scores")
    scores = {str(name): _score_value(str(name), value) for name, value in raw.items()}
    statuses: dict[str, str] = {}
    if isinstance(record.get("statuses"), dict):  # score log
        statuses = {str(k): str(v) for k, v in record["statuses"].items()}
    elif isinstance(record.get("findings"), list):  # scan output
        for finding in record["findings"]:
            if isinstance(finding, dict) and isinstance(finding.get("detector"), str):
                statuses[finding["detector"]] = str(finding.get("status", FindingStatus.OK.value))
    errors: list[str] = []
    for name, status in statuses.items():
        if name in scores:
            continue
        if status == FindingStatus.SKIPPED.value:
            scores[name] = 0.0
        elif status in (FindingStatus.ERROR.value, FindingStatus.TIMEOUT.value):
            errors.append(name)
    route = record.get("route")
    if route is not None and not isinstance(route, str):
        raise RecordError(f"'route' must be a string, got {route!r}")
    config_hash = record.get("config_hash")
    return ScoreRow(
        scores=scores,
        errors=tuple(errors),
        route=route,
        config_hash=config_hash if isinstance(config_hash, str) else None,
        text=_text_of(record),
    )


@dataclass(slots=True)
class ScoreSample:
    """Clean scores collected from one input, pooled and per route, plus what was skipped.

    ``texts`` is a seeded reservoir sample (at most ``text_limit``) of the texts
    the records carried, for planting the trigger families; ``bad`` holds
    ``(line number, why)`` for every line that was skipped.
    """

    phase: Phase
    text_limit: int = DEFAULT_TPR_LIMIT
    seed: int = 0
    scores: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    by_route: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    route_errors: dict[str, Counter[str]] = field(default_factory=dict)
    records: int = 0
    without_route: int = 0
    other_phase: int = 0
    config_hashes: Counter[str] = field(default_factory=Counter)
    texts: list[tuple[str, str]] = field(default_factory=list)
    texts_seen: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)
    pending: list[PendingRecord] = field(default_factory=list)
    source_sha256: str = ""
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"calibrate-texts/{self.seed}")  # noqa: S311 - reproducible sampling

    def add(self, row: ScoreRow, text_id: str = "") -> None:
        self.records += 1
        for name, score in row.scores.items():
            self.scores.setdefault(name, []).append(score)
        self.errors.update(row.errors)
        if row.route is None:
            self.without_route += 1
        else:
            per_route = self.by_route.setdefault(row.route, {})
            for name, score in row.scores.items():
                per_route.setdefault(name, []).append(score)
            self.route_errors.setdefault(row.route, Counter()).update(row.errors)
        if row.config_hash:
            self.config_hashes[row.config_hash] += 1
        if row.text:
            self._keep_text(text_id or f"record-{self.records}", row.text)

    def _keep_text(self, text_id: str, text: str) -> None:
        """Reservoir sampling: every text seen has the same chance to be kept, in one pass."""
        self.texts_seen += 1
        if len(self.texts) < self.text_limit:
            self.texts.append((text_id, text))
            return
        slot = self._rng.randrange(self.texts_seen)
        if slot < self.text_limit:
            self.texts[slot] = (text_id, text)


def read_sample(
    lines: Iterable[bytes], phase: Phase, *, text_limit: int = DEFAULT_TPR_LIMIT, seed: int = 0
) -> ScoreSample:
    """Parse JSONL clean data: score lines are used as they are, text records are queued for scanning.

    A line with ``scores`` is a score-log or ``scan`` line; a score-log line of
    the other phase is counted in ``other_phase`` and ignored. A line without
    ``scores`` but with ``text``/``request``/``response`` goes to ``pending``
    (:func:`score_pending` scores it). Anything else is a bad line, recorded with
    its number and skipped. The SHA-256 of the bytes read identifies the source
    in the patch header.
    """
    sample = ScoreSample(phase=phase, text_limit=text_limit, seed=seed)
    digest = hashlib.sha256()
    for line_no, line in enumerate(lines, start=1):
        digest.update(line)
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            sample.bad.append((line_no, f"invalid JSON ({exc.msg})"))
            continue
        if not isinstance(record, dict):
            sample.bad.append((line_no, "a record must be a JSON object"))
            continue
        if "scores" in record:
            if record.get("phase", phase.value) != phase.value:
                sample.other_phase += 1
                continue
            try:
                row = parse_score_record(record)
            except RecordError as exc:
                sample.bad.append((line_no, str(exc)))
                continue
            sample.add(row, f"line-{line_no}")
        elif any(key in record for key in _SCANNABLE):
            sample.pending.append(PendingRecord(line_no, record))
        else:
            sample.bad.append(
                (line_no, "a record needs 'scores' (a score-log or scan line) or 'text'/'request' to scan")
            )
    sample.source_sha256 = digest.hexdigest()
    return sample


async def score_pending(scanner: Scanner, sample: ScoreSample, *, concurrency: int = 32) -> None:
    """Score the queued text records with the configured detectors, exactly as ``scan`` would.

    Each result goes through :func:`parse_score_record` like a ``scan`` output
    line, under the scanner's route; records the Scanner cannot read become bad
    lines.
    """
    pending = {p.line_no: p.record for p in sample.pending}
    route = scanner.route.config.name

    async def records() -> AsyncIterator[tuple[int, Any]]:
        for line_no, record in pending.items():
            yield line_no, record

    async for line_no, result in scanner.scan_many(records(), sample.phase, concurrency=concurrency):
        if isinstance(result, RecordError):
            sample.bad.append((line_no, str(result)))
            continue
        record = pending[line_no]
        text = _text_of(record)
        if text is None:  # a request (or response) body: the texts the route screens
            segments = scanner.segments(record, sample.phase)
            text = "\n".join(s.text for s in segments) or None
        row = parse_score_record(result)
        sample.add(
            ScoreRow(scores=row.scores, errors=row.errors, route=route, text=text),
            f"line-{line_no}",
        )
    sample.pending.clear()
    sample.bad.sort()


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True, slots=True)
class CalibrationResult:
    """Per detector: the pooled calibration, and per route when asked for.

    ``skipped_routes`` maps a route left without overrides to why (too small a
    sample, or not in the config); ``unknown_detectors`` are detectors with
    scores in the data but not in the config (nothing to patch).
    """

    target_fpr: float
    confidence: float
    phase: Phase
    min_n: int
    pooled: dict[str, DetectorCalibration]
    routes: dict[str, dict[str, DetectorCalibration]] = field(default_factory=dict)
    skipped_routes: dict[str, str] = field(default_factory=dict)
    unknown_detectors: tuple[str, ...] = ()
    per_route: bool = False

    @property
    def thresholds(self) -> dict[str, float | None]:
        return {name: cal.threshold for name, cal in self.pooled.items()}


def _too_small(counts: Mapping[str, int], min_n: int, target_fpr: float, confidence: float) -> str:
    listed = ", ".join(f"{name} {n:,}" for name, n in counts.items())
    return (
        f"too few clean scores ({listed}); a {target_fpr:g} false-positive rate needs at least "
        f"{min_n:,} per detector (so that the one-sided {confidence:.0%} upper bound on the FPR stays "
        f"within {BOUND_FACTOR:g}x the target). Collect more clean traffic, or ask for a larger --target-fpr."
    )


def calibrate(
    sample: ScoreSample,
    config: FirewallConfig,
    *,
    target_fpr: float,
    confidence: float = DEFAULT_CONFIDENCE,
    per_route: bool = False,
) -> CalibrationResult:
    """Calibrate every configured detector that has scores in ``sample``.

    Pooled thresholds use every record (all routes); with ``per_route`` each
    route in both the data and the config also gets its own. Raises
    :class:`SampleTooSmallError` when a detector's pooled sample is smaller than
    :func:`min_sample_size` (or when no configured detector has scores); a route
    whose own sample is too small is skipped (listed in ``skipped_routes``) and
    keeps the pooled threshold.
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError("target_fpr must be between 0 and 1 (exclusive)")
    known = {d.name: d for d in config.detectors}
    unknown = tuple(sorted(n for n in sample.scores if n not in known))
    names = [d.name for d in config.detectors if sample.scores.get(d.name)]
    if not names:
        raise SampleTooSmallError(
            "the sample holds no scores for any configured detector "
            f"({', '.join(known) or 'none configured'}) in the {sample.phase.value} phase"
        )
    min_n = min_sample_size(target_fpr, confidence)
    small = {n: len(sample.scores[n]) for n in names if len(sample.scores[n]) < min_n}
    if small:
        raise SampleTooSmallError(_too_small(small, min_n, target_fpr, confidence))
    pooled = {
        name: calibrate_detector(
            sample.scores[name],
            target_fpr,
            confidence=confidence,
            configured=known[name].threshold,
            detector=name,
            errors=sample.errors[name],
        )
        for name in names
    }
    routes: dict[str, dict[str, DetectorCalibration]] = {}
    skipped: dict[str, str] = {}
    if per_route:
        configured_routes = {r.name: r for r in config.routing.routes}
        for route_name in sorted(sample.by_route):
            route_cfg = configured_routes.get(route_name)
            if route_cfg is None:
                skipped[route_name] = "not a route in the config"
                continue
            cals: dict[str, DetectorCalibration] = {}
            for name in names:
                scores = sample.by_route[route_name].get(name, [])
                if not scores:
                    continue
                if len(scores) < min_n:
                    skipped.setdefault(
                        route_name, f"{len(scores):,} clean scores, fewer than the {min_n:,} needed"
                    )
                    continue
                override = route_cfg.detectors.get(name)
                own = override.threshold if override is not None else None
                new_pooled = pooled[name].threshold
                inherited = new_pooled if new_pooled is not None else known[name].threshold
                cals[name] = calibrate_detector(
                    scores,
                    target_fpr,
                    confidence=confidence,
                    configured=own if own is not None else known[name].threshold,
                    keep=own if own is not None else inherited,
                    detector=name,
                    route=route_name,
                    errors=sample.route_errors.get(route_name, Counter())[name],
                )
            if cals:
                routes[route_name] = cals
    return CalibrationResult(
        target_fpr=target_fpr,
        confidence=confidence,
        phase=sample.phase,
        min_n=min_n,
        pooled=pooled,
        routes=routes,
        skipped_routes=skipped,
        unknown_detectors=unknown,
        per_route=per_route,
    )


# --------------------------------------------------------------------------- TPR on trigger families


@dataclass(frozen=True, slots=True)
class FamilyTPR:
    """Detection rate of each trigger family at the calibrated thresholds.

    ``source`` says where the clean texts the triggers were planted in came from
    (``"sample"``: the input's own texts; ``"corpus"``: the evaluation suite's
    movie texts). ``n[family]`` is how many triggered texts were scanned (fewer
    than ``texts`` only when the time budget ran out).
    """

    source: str
    texts: int
    seed: int
    families: tuple[str, ...]
    n: dict[str, int]
    tpr: dict[str, dict[str, float]]
    truncated: bool = False


async def family_tpr(
    scanner: Scanner,
    thresholds: Mapping[str, float | None],
    texts: Sequence[tuple[str, str]],
    *,
    phase: Phase,
    seed: int = 0,
    limit: int = DEFAULT_TPR_LIMIT,
    families: Sequence[str] | None = None,
    time_budget: float = DEFAULT_TPR_SECONDS,
    concurrency: int = 64,
) -> FamilyTPR:
    """Plant every trigger family in clean texts and measure what the calibrated thresholds catch.

    Uses the evaluation suite's families and insertion
    (:meth:`~firewall.evaluation.triggers.TriggerFamily.apply`, deterministic in
    ``(seed, family, text id)``) on ``texts`` (at most ``limit``), or, when
    ``texts`` is empty, on the suite's own clean corpus
    (:func:`~firewall.evaluation.data.load_clean`, which raises
    :class:`~firewall.evaluation.data.DataUnavailableError` when not installed).
    Scans run text by text, all families of a text together, and stop when
    ``time_budget`` seconds are spent, so every family is measured on (nearly)
    the same texts.
    """
    from firewall.evaluation.data import load_clean
    from firewall.evaluation.triggers import parse_families

    fams = parse_families(families)
    source = "sample"
    picked = list(texts[:limit])
    if not picked:
        source = "corpus"
        picked = [(c.id, c.text) for c in load_clean(limit, seed, hard_negatives=False)]
    role = "user" if phase is Phase.INPUT else "assistant"
    detectors = [d for d, t in thresholds.items() if t is not None]
    scores: dict[str, dict[str, list[float]]] = {f.name: {d: [] for d in detectors} for f in fams}
    counts = dict.fromkeys((f.name for f in fams), 0)
    jobs = [(fam.name, fam.apply(text, seed, item_id), item_id) for item_id, text in picked for fam in fams]
    deadline = time.monotonic() + time_budget
    truncated = False
    for start in range(0, len(jobs), concurrency):
        if time.monotonic() > deadline:
            truncated = True
            break
        chunk = jobs[start : start + concurrency]
        outcomes = await asyncio.gather(
            *(
                scanner.scan_segments([Segment(role, text, "/text")], phase, item_id)
                for _, text, item_id in chunk
            )
        )
        for (fam_name, _, _), outcome in zip(chunk, outcomes, strict=True):
            counts[fam_name] += 1
            by_name = {f.detector: f for f in outcome.verdict.findings}
            for det in detectors:
                finding = by_name.get(det)
                if finding is None or finding.status is FindingStatus.SKIPPED:
                    scores[fam_name][det].append(0.0)  # not run on this text: did not fire
                elif finding.scored:
                    scores[fam_name][det].append(finding.score)
    tpr = {
        det: {fam.name: rate_at(scores[fam.name][det], thresholds[det]) for fam in fams} for det in detectors
    }
    return FamilyTPR(
        source=source,
        texts=len(picked),
        seed=seed,
        families=tuple(f.name for f in fams),
        n=counts,
        tpr=tpr,
        truncated=truncated,
    )


# --------------------------------------------------------------------------- the table


def _fmt_threshold(value: float | None) -> str:
    return "-" if value is None else format(value, ".6g")


def _pct(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{100 * value:.2f}%"


def _basis_note(cal: DetectorCalibration) -> str | None:
    where = cal.detector if cal.route is None else f"{cal.detector} on route {cal.route}"
    if cal.basis == "configured":
        kept = (
            f"the current {cal.threshold:.6g} is kept"
            if cal.route is None
            else f"the route keeps {cal.threshold:.6g} (its own override, or the pooled threshold)"
        )
        return (
            f"{where}: no clean score above {cal.cutoff:.6g}; any threshold above it meets the "
            f"target, so {kept}"
        )
    if cal.basis == "grid":
        return (
            f"{where}: no clean score above {cal.cutoff:.6g}; the shortest decimal above it "
            f"({_fmt_threshold(cal.threshold)}) is proposed"
        )
    if cal.basis == "unattainable":
        return (
            f"{where}: more than {cal.target_fpr:.2%} of clean texts score 1.0; no threshold in [0, 1] "
            "meets the target (unchanged in the patch)"
        )
    return None


def format_table(
    result: CalibrationResult, tpr: FamilyTPR | None = None, *, tpr_note: str | None = None
) -> str:
    """The calibration as a plain-text table, one row per detector (and route), then notes."""
    families = tpr.families if tpr is not None else ()
    head = ["detector", "route", "n", "threshold", "was", "FPR", f"FPR<={result.confidence:.0%}"]
    head += list(families) if families else ["TPR"]
    rows: list[list[str]] = []
    groups: list[DetectorCalibration] = list(result.pooled.values())
    for route in sorted(result.routes):
        groups.extend(result.routes[route].values())
    for cal in groups:
        row = [
            cal.detector,
            "*" if cal.route is None else cal.route,
            f"{cal.n:,}",
            _fmt_threshold(cal.threshold),
            _fmt_threshold(cal.configured),
            _pct(cal.observed_fpr),
            _pct(cal.fpr_upper),
        ]
        if families and tpr is not None:
            rates = tpr.tpr.get(cal.detector, {}) if cal.route is None else {}
            row += [
                f"{100 * rates[f]:.1f}%" if f in rates and not math.isnan(rates[f]) else "-" for f in families
            ]
        else:
            row.append("-")
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    right = {2, 3, 4, 5, 6, *range(7, len(head))}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [
        f"Calibration for a {result.target_fpr:g} false-positive rate ({result.phase.value} phase; "
        f"one-sided {result.confidence:.0%} Clopper-Pearson bound; minimum n {result.min_n:,})",
        "",
        line(head),
        line(["-" * w for w in widths]),
        *(line(r) for r in rows),
        "",
        "threshold: flag when score >= threshold; was: the current (effective) threshold; FPR: share of the "
        f"clean sample flagged; FPR<={result.confidence:.0%}: upper confidence bound on the true FPR.",
    ]
    if tpr is not None:
        where = (
            f"{tpr.texts} clean texts from the input (seed {tpr.seed})"
            if tpr.source == "sample"
            else f"{tpr.texts} texts of the evaluation suite's clean corpus (the input carries no text; "
            f"seed {tpr.seed})"
        )
        n = min(tpr.n.values()) if tpr.n else 0
        out.append(
            f"TPR: triggers of each family planted in {where}, at the pooled thresholds; "
            f"control inserts common words, so its rate is a false-positive rate."
            + (f" Time budget ran out: at least {n} texts per family." if tpr.truncated else "")
        )
    elif tpr_note:
        out.append(f"TPR: {tpr_note}")
    notes = [note for cal in groups if (note := _basis_note(cal))]
    notes += [f"route {r}: no overrides ({why})" for r, why in sorted(result.skipped_routes.items())]
    if result.unknown_detectors:
        notes.append(
            f"scores for detectors not in the config were ignored: {', '.join(result.unknown_detectors)}"
        )
    if notes:
        out += ["", "notes:", *(f"  - {n}" for n in notes)]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the config patch


def build_patch(config: FirewallConfig, result: CalibrationResult) -> dict[str, Any]:
    """The YAML patch as data: whole lists, so applying it replaces them outright.

    The config's deep merge merges mappings and *replaces* lists, so the patch
    carries the full ``detectors`` list of ``config`` (each entry as written:
    only the keys that were set, with ``threshold`` replaced where calibrated),
    and, with per-route results, the full ``routing.routes`` list with
    ``detectors.<name>.threshold`` overrides for the calibrated routes (other
    override keys kept). Detectors and routes without calibration are copied
    unchanged, so the patch never drops anything.
    """
    detectors: list[dict[str, Any]] = []
    for det in config.detectors:
        entry = det.model_dump(mode="json", exclude_unset=True)
        cal = result.pooled.get(det.name)
        if cal is not None and cal.threshold is not None:
            entry["threshold"] = cal.threshold
        detectors.append(entry)
    patch: dict[str, Any] = {"detectors": detectors}
    if result.routes:
        routes: list[dict[str, Any]] = []
        for route in config.routing.routes:
            entry = route.model_dump(mode="json", exclude_unset=True)
            overrides: dict[str, Any] = dict(entry.get("detectors", {}))
            for name, cal in sorted(result.routes.get(route.name, {}).items()):
                if cal.threshold is None or cal.basis == "configured":
                    continue  # nothing learned: the route keeps what it has (or inherits the pooled value)
                overrides[name] = {**overrides.get(name, {}), "threshold": cal.threshold}
            if overrides:
                entry["detectors"] = overrides
            routes.append(entry)
        patch["routing"] = {"routes": routes}
    return patch


def patch_header(
    result: CalibrationResult,
    *,
    source: str,
    source_sha256: str,
    records: int,
    config_source: str,
    config_hash: str,
    date: str,
) -> list[str]:
    """The comment lines on top of the patch: what it was computed from, and the price of each threshold."""
    lines = [
        "trigger-firewall calibrate: threshold patch for review",
        f"target FPR {result.target_fpr:g} ({result.phase.value} phase); one-sided "
        f"{result.confidence:.0%} Clopper-Pearson upper bound; minimum n {result.min_n:,}",
        f"source: {source} (sha256 {source_sha256}; {records:,} clean records)",
        f"base config: {config_source} (hash {config_hash})",
        f"date: {date}",
        "",
    ]
    groups = list(result.pooled.values()) + [
        c for r in sorted(result.routes) for c in result.routes[r].values()
    ]
    for cal in groups:
        where = cal.detector if cal.route is None else f"{cal.detector} @ route {cal.route}"
        if cal.threshold is None:
            lines.append(f"{where}: n={cal.n:,}, unattainable (unchanged)")
            continue
        lines.append(
            f"{where}: threshold {cal.threshold:.6g} (was {_fmt_threshold(cal.configured)}; {cal.basis}), "
            f"n={cal.n:,}, observed FPR {cal.observed_fpr:.4%}, FPR <= {cal.fpr_upper:.4%} "
            f"at {cal.confidence:.0%}"
        )
    for route, why in sorted(result.skipped_routes.items()):
        lines.append(f"route {route}: no override ({why})")
    lines += [
        "",
        "Apply by deep merge into the config file: mappings merge, lists are replaced whole, so",
        "the lists below (complete copies with thresholds changed) replace the file's lists.",
        "See docs/calibration.md.",
    ]
    return lines


def render_patch(patch: Mapping[str, Any], header: Sequence[str]) -> str:
    """Comment header plus the patch as block-style YAML, in the config's key order."""
    body = yaml.safe_dump(dict(patch), sort_keys=False, default_flow_style=False, allow_unicode=True)
    return "".join(f"# {line}\n" if line else "#\n" for line in header) + body


def verify_patch(
    base: Mapping[str, Any], patch: Mapping[str, Any], result: CalibrationResult
) -> FirewallConfig:
    """Merge ``patch`` into the file's data ``base``, validate, and check every calibrated threshold.

    Run before a patch is written, so a patch that would not validate, or not
    set what the table says, is never handed to a reviewer. Raises
    :class:`~firewall.core.errors.ConfigError` or :class:`ValueError`.
    """
    merged = deep_merge(dict(base), patch)
    config = build_config(merged, source="config + calibration patch")
    for name, cal in result.pooled.items():
        if cal.threshold is not None and config.detector(name).threshold != cal.threshold:
            raise ValueError(f"patched threshold of {name!r} is {config.detector(name).threshold}")
    routes = {r.name: r for r in config.routing.routes}
    for route_name, cals in result.routes.items():
        for name, cal in cals.items():
            if cal.threshold is None:
                continue
            override = routes[route_name].detectors.get(name)
            effective = (
                override.threshold
                if override is not None and override.threshold is not None
                else config.detector(name).threshold
            )
            if effective != cal.threshold:
                raise ValueError(f"patched threshold of {name!r} on route {route_name!r} is {effective}")
    return config


# --------------------------------------------------------------------------- the plot


def write_plot(sample: ScoreSample, result: CalibrationResult, path: str | Path) -> None:
    """Clean score distributions per detector, with the calibrated and current thresholds marked.

    Log-scaled shares per bin, so the few percent of clean traffic in the tail,
    which is exactly what the threshold trades, stays visible next to the bulk at
    0. With per-route results each route is a step line with its own threshold.
    """
    names = list(result.pooled)
    fig, panels = figure(len(names), 10)
    bins = [i / 50 for i in range(51)]
    for index, name in enumerate(names):
        ax = panels[index]
        cal = result.pooled[name]
        clean = sample.scores[name]
        share_hist(ax, clean, bins, color="0.75", label=f"clean (n={len(clean):,})")
        for route, cals in sorted(result.routes.items()):
            route_cal = cals.get(name)
            if route_cal is None:
                continue
            scores = sample.by_route[route][name]
            drawn = share_hist(ax, scores, bins, histtype="step", label=f"route {route}")
            if route_cal.threshold is not None:
                color = drawn[2][0].get_edgecolor() if drawn[2] else None
                ax.axvline(route_cal.threshold, linestyle=":", color=color, linewidth=1)
        if cal.configured is not None:
            ax.axvline(cal.configured, color="red", linewidth=1, label=f"current {cal.configured:.6g}")
        if cal.threshold is not None:
            ax.axvline(
                cal.threshold,
                color="black",
                linestyle="--",
                linewidth=1,
                label=f"calibrated {cal.threshold:.6g} (FPR <= {cal.fpr_upper:.2%})",
            )
        title = f"{name}: clean scores, {result.phase.value} phase, target FPR {result.target_fpr:g}"
        finish_panel(ax, title, "share of clean texts", loc="upper right")
    save(fig, path)
