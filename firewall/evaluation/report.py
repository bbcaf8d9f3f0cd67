"""The evaluation report: what a run measured, as data, as a table, as JSON and as a plot.

The report keeps the raw per-item scores next to the summary because the
threshold calibration (:func:`firewall.evaluation.suite.thresholds_for_fpr`)
and the plot need them; the JSON carries only the summary and the ids of the
hard negatives that were flagged (never whole score arrays), so it stays small
enough to diff between runs.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firewall.evaluation.data import SOURCE_HARD_NEGATIVE, SOURCE_IMDB, SOURCE_MR
from firewall.evaluation.metrics import LatencyStats
from firewall.offline.plotting import (
    PlotUnavailableError,
    figure,
    finish_panel,
    plot_available,
    save,
    share_hist,
)

__all__ = [
    "CleanGroupNames",
    "DetectorResult",
    "FamilyCell",
    "FamilyResult",
    "GroupScores",
    "PlotUnavailableError",
    "PolicyResult",
    "Report",
    "RunInfo",
    "format_table",
    "plot_available",
    "write_plot",
]


#: Clean-set breakdowns reported for false-positive rates, in display order.
CleanGroupNames: dict[str, str] = {
    "all": "clean, all",
    SOURCE_MR: "MR sentences",
    SOURCE_IMDB: "IMDB openings",
    SOURCE_HARD_NEGATIVE: "hard negatives",
}


@dataclass(slots=True)
class GroupScores:
    """Raw results for one group of texts (the clean set, or one trigger family).

    ``scores[detector][i]`` is ``None`` when the detector errored or timed out on
    item ``i`` (the policy's fail mode decided; the score is unknown). A gated
    detector that the cascade skipped scores 0.0: it did not fire, which is what
    the proxy would do.
    """

    ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    scores: dict[str, list[float | None]] = field(default_factory=dict)
    fired: list[tuple[str, ...]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    flagged: list[bool] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def valid(self, detector: str, source: str | None = None) -> list[float]:
        """The known scores of ``detector``, optionally only for one clean source."""
        return [
            s
            for s, src in zip(self.scores.get(detector, ()), self.sources, strict=False)
            if s is not None and (source is None or src == source)
        ]

    def flagged_share(self, source: str | None = None) -> float:
        picked = [f for f, src in zip(self.flagged, self.sources, strict=True) if source in (None, src)]
        return sum(picked) / len(picked) if picked else math.nan


@dataclass(frozen=True, slots=True)
class FamilyCell:
    """One detector on one trigger family."""

    auroc: float
    tpr_at_target: float
    tpr_at_configured: float
    n: int
    errors: int


@dataclass(frozen=True, slots=True)
class FamilyResult:
    name: str
    description: str
    citation: str
    expected_caught: bool
    expected_by: tuple[str, ...]
    n: int
    detectors: dict[str, FamilyCell]
    policy_tpr: float


@dataclass(frozen=True, slots=True)
class DetectorResult:
    """One detector over the clean set: thresholds, false-positive rates, latency.

    ``fpr_*`` are keyed like :data:`CleanGroupNames` (``all``, ``mr``, ``imdb``,
    ``hard_negative``). ``cutoff`` is the highest clean score the target-FPR
    threshold must stay above (see :func:`~firewall.evaluation.metrics.threshold_for_fpr`).
    """

    name: str
    configured_threshold: float | None
    target_threshold: float | None
    cutoff: float
    fpr_at_target: dict[str, float]
    fpr_at_configured: dict[str, float]
    latency: LatencyStats
    errors: int
    skipped: int


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """The combined verdict (flagged = the verdict's action is not ``allow``), as the proxy decides."""

    fpr: dict[str, float]
    latency: LatencyStats
    hard_negatives_flagged: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class RunInfo:
    seed: int
    limit: int
    route: str
    phase: str
    mode: str
    target_fpr: float
    detectors: tuple[str, ...]
    families: tuple[str, ...]
    clean_counts: dict[str, int]
    scans: int
    concurrency: int
    scan_seconds: float
    elapsed_seconds: float
    latency_samples: int
    config_hash: str
    version: str


@dataclass(frozen=True, slots=True)
class Report:
    info: RunInfo
    detectors: list[DetectorResult]
    families: list[FamilyResult]
    policy: PolicyResult
    clean: GroupScores = field(repr=False)
    triggered: dict[str, GroupScores] = field(repr=False)

    def family(self, name: str) -> FamilyResult:
        for fam in self.families:
            if fam.name == name:
                return fam
        raise KeyError(name)

    def detector(self, name: str) -> DetectorResult:
        for det in self.detectors:
            if det.name == name:
                return det
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-able data; NaN and infinities become ``null``."""
        info = self.info
        data: dict[str, Any] = _clean_floats(
            {
                "suite": "trigger-firewall eval",
                "version": info.version,
                "config_hash": info.config_hash,
                "seed": info.seed,
                "limit": info.limit,
                "route": info.route,
                "phase": info.phase,
                "mode": info.mode,
                "target_fpr": info.target_fpr,
                "detectors": list(info.detectors),
                "clean_counts": info.clean_counts,
                "scans": info.scans,
                "concurrency": info.concurrency,
                "scan_seconds": round(info.scan_seconds, 3),
                "elapsed_seconds": round(info.elapsed_seconds, 3),
                "latency_samples": info.latency_samples,
                "detector_results": {
                    d.name: {
                        "configured_threshold": d.configured_threshold,
                        "target_threshold": d.target_threshold,
                        "clean_cutoff": d.cutoff,
                        "fpr_at_target": d.fpr_at_target,
                        "fpr_at_configured": d.fpr_at_configured,
                        "latency_ms": _latency_json(d.latency),
                        "errors": d.errors,
                        "skipped": d.skipped,
                    }
                    for d in self.detectors
                },
                "families": {
                    f.name: {
                        "description": f.description,
                        "citation": f.citation,
                        "expected_caught": f.expected_caught,
                        "expected_by": list(f.expected_by),
                        "n": f.n,
                        "policy_tpr": f.policy_tpr,
                        "detectors": {
                            name: {
                                "auroc": c.auroc,
                                "tpr_at_target": c.tpr_at_target,
                                "tpr_at_configured": c.tpr_at_configured,
                                "n": c.n,
                                "errors": c.errors,
                            }
                            for name, c in f.detectors.items()
                        },
                    }
                    for f in self.families
                },
                "policy": {
                    "fpr": self.policy.fpr,
                    "latency_ms": _latency_json(self.policy.latency),
                    "hard_negatives_flagged": self.policy.hard_negatives_flagged,
                },
            }
        )
        return data


def _latency_json(stats: LatencyStats) -> dict[str, float | int]:
    return {"n": stats.n, "mean": stats.mean_ms, "p50": stats.p50_ms, "p99": stats.p99_ms}


def _clean_floats(node: Any) -> Any:
    if isinstance(node, float):
        return None if not math.isfinite(node) else round(node, 6)
    if isinstance(node, Mapping):
        return {k: _clean_floats(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_clean_floats(v) for v in node]
    return node


# --------------------------------------------------------------------------- table


def _num(value: float | None, width: int = 7) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:.3f}".rjust(width)


def _threshold(value: float | None, width: int) -> str:
    """A threshold; ``none`` when no observed score reaches the target FPR."""
    return "none".rjust(width) if value is None else _num(value, width)


def _pct_label(fpr: float) -> str:
    return f"{fpr * 100:g}%"


def format_table(report: Report) -> str:
    """Families as rows, detectors as column groups, then false positives, thresholds, latency.

    Each detector group has three columns: AUROC (clean vs triggered), TPR at
    the target-FPR threshold, and TPR at the configured threshold. The last
    column is the policy: the share of texts the proxy would flag.
    """
    info = report.info
    target = _pct_label(info.target_fpr)
    sub = ("AUROC", f"TPR@{target}", "TPR@cfg")
    col = max(7, *(len(h) for h in sub))
    group_w = len(sub) * (col + 1) - 1
    name_w = max(26, *(len(f.name) + 2 for f in report.families))
    exp_w = max(10, *(len(_expected(f)) + 1 for f in report.families))
    lead = name_w + exp_w

    def line(label: str, expected: str, groups: Sequence[str], policy: str) -> str:
        return (label.ljust(name_w) + expected.ljust(exp_w) + "  ".join(groups) + "  " + policy).rstrip()

    counts = info.clean_counts
    movie = counts.get(SOURCE_MR, 0) + counts.get(SOURCE_IMDB, 0)
    rate = info.scans / info.scan_seconds if info.scan_seconds > 0 else math.inf
    header = (
        f"trigger-firewall eval: route {info.route} ({info.phase}, mode {info.mode}), seed {info.seed}; "
        f"{counts.get('all', 0)} clean texts ({counts.get(SOURCE_MR, 0)} MR sentences, "
        f"{counts.get(SOURCE_IMDB, 0)} IMDB openings, {counts.get(SOURCE_HARD_NEGATIVE, 0)} hard "
        f"negatives); {len(report.families)} famil{'y' if len(report.families) == 1 else 'ies'} x {movie} "
        f"triggered texts; {info.scans} scans in "
        f"{info.scan_seconds:.1f} s at concurrency {info.concurrency} ({rate:.0f} scans/s; "
        f"{info.elapsed_seconds:.1f} s in all)"
    )
    out: list[str] = [
        *textwrap.wrap(header, width=100),
        "",
        " " * lead + "  ".join(d.name[:group_w].center(group_w) for d in report.detectors) + "  policy",
        line(
            "family",
            "expected",
            ["".join(s.rjust(col + 1) for s in sub)[1:] for _ in report.detectors],
            "flagged",
        ),
    ]
    rule = "-" * len(out[-1])
    out.append(rule)
    for fam in report.families:
        groups = []
        for det in report.detectors:
            cell = fam.detectors.get(det.name)
            if cell is None:
                groups.append(" " * group_w)
                continue
            groups.append(
                " ".join(
                    (_num(cell.auroc, col), _num(cell.tpr_at_target, col), _num(cell.tpr_at_configured, col))
                )
            )
        out.append(line(fam.name, _expected(fam), groups, _num(fam.policy_tpr)))
    out.append(rule)
    for key, label in CleanGroupNames.items():
        n = counts.get(key, 0)
        if n == 0:
            continue
        groups = [
            " ".join(
                (" " * col, _num(d.fpr_at_target.get(key), col), _num(d.fpr_at_configured.get(key), col))
            )
            for d in report.detectors
        ]
        out.append(line(f"FPR {label} (n={n})", "", groups, _num(report.policy.fpr.get(key))))
    groups = [
        " ".join((" " * col, _threshold(d.target_threshold, col), _threshold(d.configured_threshold, col)))
        for d in report.detectors
    ]
    out.append(line("threshold", "", groups, ""))
    out.append(rule)
    out.append("")
    out.append(
        f"latency (ms), {info.latency_samples} scans one at a time".ljust(name_w + exp_w)
        + " ".join(h.rjust(9) for h in ("mean", "p50", "p99"))
    )
    for det in report.detectors:
        out.append(_latency_line(det.name, det.latency, name_w + exp_w))
    out.append(_latency_line("policy (whole scan)", report.policy.latency, name_w + exp_w))
    errors = [f"{d.name}: {d.errors} errors/timeouts" for d in report.detectors if d.errors]
    skipped = [
        f"{d.name}: {d.skipped} skipped by the cascade (scored 0)" for d in report.detectors if d.skipped
    ]
    if errors or skipped:
        out.append("")
        out.extend(errors + skipped)
    flagged = report.policy.hard_negatives_flagged
    if flagged:
        out.append("")
        shown = ", ".join(
            f"{h['id']} ({h['category']}: {'+'.join(h['fired']) or h['reason']})" for h in flagged[:12]
        )
        more = f", and {len(flagged) - 12} more" if len(flagged) > 12 else ""
        out.extend(textwrap.wrap(f"hard negatives flagged by the policy: {shown}{more}", width=100))
    out.append("")
    legend = (
        f"AUROC: clean vs triggered scores (ties count half). TPR@{target}: detection rate at the lowest "
        f"observed threshold that flags at most {target} of clean texts ('threshold' row, first column). "
        "TPR@cfg: detection rate at the configured threshold ('threshold' row, second column). "
        "policy: share of texts the proxy would flag (verdict action is not allow). expected: the "
        "detector designed to catch the family; 'no' families are outside the default detectors' "
        "scope, and 'control' must stay near 0 (it is a false-positive check)."
    )
    out.extend(textwrap.wrap(legend, width=100))
    return "\n".join(out) + "\n"


def _expected(fam: FamilyResult) -> str:
    if fam.expected_caught and fam.expected_by:
        return ", ".join(fam.expected_by)
    return "no"


def _ms(value: float) -> str:
    """Three significant digits: cheap detectors take microseconds, model detectors tens of ms."""
    return "-".rjust(9) if math.isnan(value) else f"{value:.3g}".rjust(9)


def _latency_line(label: str, stats: LatencyStats, width: int) -> str:
    return label.ljust(width) + " ".join(_ms(v) for v in (stats.mean_ms, stats.p50_ms, stats.p99_ms))


# --------------------------------------------------------------------------- plot


def write_plot(report: Report, path: str | Path) -> None:
    """Histogram of clean vs triggered scores per detector, with both thresholds marked.

    One panel per detector; clean texts are the grey area, each family a line.
    Counts are normalised per group and the y axis is logarithmic, so a 1%
    tail of clean scores stays visible next to 2,000 triggered texts.
    """
    detectors = report.detectors
    fig, panels = figure(len(detectors), 11)
    bins = [i / 40 for i in range(41)]
    for ax, det in zip(panels, detectors, strict=True):
        clean = report.clean.valid(det.name)
        if clean:
            share_hist(ax, clean, bins, color="0.75", label="clean")
        for fam in report.families:
            scores = report.triggered[fam.name].valid(det.name)
            if scores:
                share_hist(ax, scores, bins, histtype="step", linewidth=1.2, label=fam.name)
        if det.configured_threshold is not None:
            ax.axvline(det.configured_threshold, color="red", linewidth=1, label="configured threshold")
        if det.target_threshold is not None:
            ax.axvline(
                det.target_threshold,
                color="black",
                linestyle="--",
                linewidth=1,
                label=f"threshold @ {_pct_label(report.info.target_fpr)} FPR",
            )
        finish_panel(
            ax, det.name, "share of texts", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0
        )
    save(fig, path)
