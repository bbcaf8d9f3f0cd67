"""Run the evaluation: scan clean and triggered texts through the proxy's own screening path.

Why through :class:`~firewall.offline.scanning.Scanner`: it builds the runtime the server
builds (same detectors, same compiled policy, cascade and timeouts), so every
score and every verdict here is the one the proxy would produce for that text,
and the "policy" numbers are what a deployment with this config would do.

Design of a run:

1. the clean set: ``limit`` movie texts (half MR sentences, half IMDB openings)
   plus the hard negatives;
2. each trigger family is planted once in every movie text (paired design: a
   triggered text differs from its clean twin only by the trigger);
3. everything is scanned with bounded concurrency (``asyncio.gather`` over
   chunks), collecting each detector's score and latency and the verdict;
4. per detector and family: AUROC, TPR at the target-FPR threshold, TPR at the
   configured threshold; per clean source: FPR at both thresholds; the policy's
   flag rate for every group.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from firewall import __version__
from firewall.config.schema import FirewallConfig, config_hash
from firewall.core.errors import ConfigError
from firewall.core.types import Action, FindingStatus, Phase, Segment
from firewall.evaluation.data import SOURCE_HARD_NEGATIVE, CleanText, load_clean
from firewall.evaluation.metrics import LatencyStats, auroc, rate_at, threshold_for_fpr
from firewall.evaluation.report import (
    CleanGroupNames,
    DetectorResult,
    FamilyCell,
    FamilyResult,
    GroupScores,
    PolicyResult,
    Report,
    RunInfo,
)
from firewall.evaluation.triggers import TriggerFamily, parse_families
from firewall.offline.scanning import Scanner, ScanOutcome

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_LATENCY_SAMPLES",
    "DEFAULT_LIMIT",
    "DEFAULT_TARGET_FPR",
    "ThresholdChoice",
    "calibrate",
    "run_suite",
    "run_suite_async",
    "thresholds_for_fpr",
]

#: Movie texts used by default: with the cheap detectors a run (2,000 clean + 8 x 2,000
#: triggered + the hard negatives) takes well under a minute on two cores.
DEFAULT_LIMIT = 2000
DEFAULT_TARGET_FPR = 0.01
DEFAULT_CONCURRENCY = 64
#: Scans timed one at a time after the concurrent pass (spread over clean and every family).
DEFAULT_LATENCY_SAMPLES = 500

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class _Job:
    group: str  # "clean" or a family name
    item: CleanText
    text: str


async def run_suite_async(
    config: FirewallConfig,
    *,
    limit: int = DEFAULT_LIMIT,
    seed: int = 0,
    families: str | Sequence[str] | None = None,
    route: str | None = None,
    phase: Phase = Phase.INPUT,
    target_fpr: float = DEFAULT_TARGET_FPR,
    concurrency: int = DEFAULT_CONCURRENCY,
    hard_negatives: bool = True,
    latency_samples: int = DEFAULT_LATENCY_SAMPLES,
    progress: Progress | None = None,
) -> Report:
    """Run the suite with the detectors ``config`` enables; see the module docstring.

    Raises :class:`ValueError` for bad arguments (unknown family, limit < 1),
    :class:`~firewall.core.errors.ConfigError` when the route is unknown, detectors
    fail to load or nothing is screened in ``phase``, and
    :class:`~firewall.evaluation.data.DataUnavailableError` when the clean
    corpus is not installed.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if latency_samples < 0:
        raise ValueError("latency_samples must not be negative")
    if not 0.0 < target_fpr < 1.0:
        raise ValueError("target_fpr must be between 0 and 1 (exclusive)")
    fams = parse_families(families)
    started = time.perf_counter()
    # Config problems first: they are cheaper to find than loading the corpus.
    scanner = Scanner(config, route=route)
    rules = scanner.route.policy.rules(phase)
    if not rules:
        raise ConfigError(
            f"route {scanner.route.config.name!r} screens nothing in the {phase.value} phase "
            "(mode off, or no enabled detector runs in that phase); nothing to evaluate"
        )
    clean = load_clean(limit, seed, hard_negatives=hard_negatives)
    movie = [c for c in clean if c.source != SOURCE_HARD_NEGATIVE]
    jobs = [_Job("clean", c, c.text) for c in clean]
    for fam in fams:
        jobs.extend(_Job(fam.name, c, fam.apply(c.text, seed, c.id)) for c in movie)
    detectors = tuple(r.detector for r in rules)
    thresholds: dict[str, float] = {r.detector: r.threshold for r in rules}
    groups: dict[str, GroupScores] = {"clean": GroupScores(), **{f.name: GroupScores() for f in fams}}
    for g in groups.values():
        g.scores = {d: [] for d in detectors}
        g.errors = dict.fromkeys(detectors, 0)
        g.skipped = dict.fromkeys(detectors, 0)
    role = "user" if phase is Phase.INPUT else "assistant"
    timings = _Timings(scan=[], detector={d: [] for d in detectors})

    def scan(job: _Job) -> Awaitable[ScanOutcome]:
        return scanner.scan_segments([Segment(role, job.text, "/text")], phase, job.item.id)

    async with scanner:
        scan_started = time.perf_counter()
        for start in range(0, len(jobs), concurrency):
            chunk = jobs[start : start + concurrency]
            outcomes = await asyncio.gather(*(scan(j) for j in chunk))
            for job, outcome in zip(chunk, outcomes, strict=True):
                thresholds.update(outcome.verdict.thresholds)
                _record(groups[job.group], job, outcome, detectors)
            if progress is not None:
                progress(min(start + concurrency, len(jobs)), len(jobs))
        scan_seconds = time.perf_counter() - scan_started
        # Latency is measured apart, one scan at a time: under concurrency a scan's wall time
        # includes waiting for the other scans in flight, which says nothing about the detectors.
        for job in _spread(jobs, latency_samples):
            outcome = await scan(job)
            timings.scan.append(outcome.seconds)
            for finding in outcome.verdict.findings:
                if finding.scored and finding.detector in timings.detector:
                    timings.detector[finding.detector].append(finding.duration_seconds)
    elapsed = time.perf_counter() - started

    clean_scores = groups.pop("clean")
    info = RunInfo(
        seed=seed,
        limit=limit,
        route=scanner.route.config.name,
        phase=phase.value,
        mode=scanner.route.policy.mode.value,
        target_fpr=target_fpr,
        detectors=detectors,
        families=tuple(f.name for f in fams),
        clean_counts=_clean_counts(clean_scores),
        scans=len(jobs),
        concurrency=concurrency,
        scan_seconds=scan_seconds,
        elapsed_seconds=elapsed,
        latency_samples=len(timings.scan),
        config_hash=config_hash(config),
        version=__version__,
    )
    return _summarize(info, clean_scores, groups, fams, thresholds, timings)


@dataclass(frozen=True, slots=True)
class _Timings:
    scan: list[float]
    detector: dict[str, list[float]]


def _spread(jobs: Sequence[_Job], n: int) -> list[_Job]:
    """``n`` jobs evenly spread over the list, so every group is represented."""
    if n <= 0 or not jobs:
        return []
    step = max(1, len(jobs) // n)
    return list(jobs[::step][:n])


def _record(g: GroupScores, job: _Job, outcome: ScanOutcome, detectors: Sequence[str]) -> None:
    verdict = outcome.verdict
    g.ids.append(job.item.id)
    g.sources.append(job.item.source)
    g.categories.append(job.item.category)
    g.flagged.append(verdict.action is not Action.ALLOW)
    g.fired.append(verdict.fired)
    g.reasons.append(verdict.reason)
    by_name = {f.detector: f for f in verdict.findings}
    for name in detectors:
        finding = by_name.get(name)
        if finding is None or finding.status is FindingStatus.SKIPPED:
            g.scores[name].append(0.0)
            g.skipped[name] += 1
        elif finding.scored:
            g.scores[name].append(finding.score)
        else:
            g.scores[name].append(None)
            g.errors[name] += 1


def run_suite(config: FirewallConfig, **kwargs: Any) -> Report:
    """Synchronous wrapper of :func:`run_suite_async` (same keyword arguments).

    Starts its own event loop: call :func:`run_suite_async` from async code.
    """
    return asyncio.run(run_suite_async(config, **kwargs))


def _clean_counts(clean: GroupScores) -> dict[str, int]:
    counts = {"all": len(clean.sources)}
    for key in CleanGroupNames:
        if key != "all":
            counts[key] = sum(1 for s in clean.sources if s == key)
    return counts


def _fprs(clean: GroupScores, detector: str, threshold: float | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in CleanGroupNames:
        scores = clean.valid(detector, None if key == "all" else key)
        if scores:
            out[key] = rate_at(scores, threshold)
    return out


def _summarize(
    info: RunInfo,
    clean: GroupScores,
    triggered: dict[str, GroupScores],
    fams: Sequence[TriggerFamily],
    configured: dict[str, float],
    timings: _Timings,
) -> Report:
    detector_results: list[DetectorResult] = []
    targets: dict[str, float | None] = {}
    for name in info.detectors:
        negatives = clean.valid(name)
        target, cutoff = (
            threshold_for_fpr(
                negatives, info.target_fpr, (s for g in triggered.values() for s in g.valid(name))
            )
            if negatives
            else (None, float("nan"))
        )
        targets[name] = target
        detector_results.append(
            DetectorResult(
                name=name,
                configured_threshold=configured.get(name),
                target_threshold=target,
                cutoff=cutoff,
                fpr_at_target=_fprs(clean, name, target),
                fpr_at_configured=_fprs(clean, name, configured.get(name)),
                latency=LatencyStats.from_seconds(timings.detector[name]),
                errors=clean.errors[name] + sum(g.errors[name] for g in triggered.values()),
                skipped=clean.skipped[name] + sum(g.skipped[name] for g in triggered.values()),
            )
        )
    family_results: list[FamilyResult] = []
    for fam in fams:
        g = triggered[fam.name]
        cells: dict[str, FamilyCell] = {}
        for name in info.detectors:
            positives = g.valid(name)
            cells[name] = FamilyCell(
                auroc=auroc(clean.valid(name), positives),
                tpr_at_target=rate_at(positives, targets[name]),
                tpr_at_configured=rate_at(positives, configured.get(name)),
                n=len(positives),
                errors=g.errors[name],
            )
        family_results.append(
            FamilyResult(
                name=fam.name,
                description=fam.description,
                citation=fam.citation,
                expected_caught=fam.expected_caught,
                expected_by=fam.expected_by,
                n=len(g.ids),
                detectors=cells,
                policy_tpr=g.flagged_share(),
            )
        )
    policy = PolicyResult(
        fpr={
            key: clean.flagged_share(None if key == "all" else key)
            for key, n in info.clean_counts.items()
            if n
        },
        latency=LatencyStats.from_seconds(timings.scan),
        hard_negatives_flagged=[
            {"id": i, "category": cat, "fired": list(fired), "reason": reason}
            for i, src, cat, flag, fired, reason in zip(
                clean.ids,
                clean.sources,
                clean.categories,
                clean.flagged,
                clean.fired,
                clean.reasons,
                strict=True,
            )
            if flag and src == SOURCE_HARD_NEGATIVE
        ],
    )
    return Report(info, detector_results, family_results, policy, clean, triggered)


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True, slots=True)
class ThresholdChoice:
    """The threshold one detector needs for a target false-positive rate, and what it buys.

    ``threshold`` is the lowest observed score that keeps the clean-set FPR within
    target (``None``: no observed score does); any value in ``(cutoff, threshold]``
    classifies every observed text the same way, so a rounded value in that
    interval is an equally valid shipped default.
    """

    detector: str
    target_fpr: float
    threshold: float | None
    cutoff: float
    fpr: dict[str, float]
    tpr: dict[str, float]


def thresholds_for_fpr(report: Report, target_fpr: float = DEFAULT_TARGET_FPR) -> dict[str, ThresholdChoice]:
    """Per detector, the threshold for ``target_fpr`` on the report's clean set.

    This is what chooses the shipped defaults (1% FPR): run the suite once, then
    read ``threshold`` (or round it within ``(cutoff, threshold]``). Triggered
    scores serve only as candidate threshold values; the FPR constraint is
    computed on clean texts alone (hard negatives included).
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError("target_fpr must be between 0 and 1 (exclusive)")
    out: dict[str, ThresholdChoice] = {}
    for name in report.info.detectors:
        negatives = report.clean.valid(name)
        if not negatives:
            continue
        candidates = [s for g in report.triggered.values() for s in g.valid(name)]
        threshold, cutoff = threshold_for_fpr(negatives, target_fpr, candidates)
        out[name] = ThresholdChoice(
            detector=name,
            target_fpr=target_fpr,
            threshold=threshold,
            cutoff=cutoff,
            fpr=_fprs(report.clean, name, threshold),
            tpr={fam: rate_at(g.valid(name), threshold) for fam, g in report.triggered.items()},
        )
    return out


async def calibrate(
    config: FirewallConfig, target_fpr: float = DEFAULT_TARGET_FPR, **kwargs: Any
) -> dict[str, ThresholdChoice]:
    """Run the suite (keyword arguments as :func:`run_suite_async`) and return the thresholds."""
    report = await run_suite_async(config, target_fpr=target_fpr, **kwargs)
    return thresholds_for_fpr(report, target_fpr)
