"""The insecure-code evaluation: ``trigger-firewall eval --suite code``.

Why a separate suite: the trigger suite plants triggers into *prompts*; the insecure-code
detector screens *answers*, and its question is different: of realistic answers that
contain vulnerable code, how many does it stop (recall), and of their safe look-alikes
(the same answer with the vulnerability fixed), how many does it wrongly stop (the
false-positive rate that decides whether a team can switch enforcement on)?

The data is ``data/code_answers.jsonl`` (written for this project): assistant answers
in markdown, in pairs that differ only where the vulnerability is, labelled with
language, CWE list and category. Every answer is scanned as an **output** through
:class:`~firewall.offline.scanning.Scanner`, i.e. exactly as the proxy would screen a
non-streaming response with this config. When the config has no ``insecure_code``
detector, one is added with its defaults (threshold 0.5, block), so
``eval --suite code`` works out of the box.

Reported: precision, recall, F1 and the safe look-alike flag rate overall, per
language and per category; which rule categories fired on the misses and false
positives; latency per answer (p50/p95/p99), also for answers of 50+ lines.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson

from firewall.config.schema import DetectorConfig, FirewallConfig
from firewall.core.errors import ConfigError
from firewall.core.types import Phase, Segment
from firewall.evaluation.metrics import percentile
from firewall.offline.scanning import Scanner

__all__ = [
    "CODE_ANSWERS",
    "CodeAnswer",
    "CodeReport",
    "Counts",
    "format_code_table",
    "load_code_answers",
    "run_code_suite",
    "run_code_suite_async",
]

CODE_ANSWERS = "code_answers.jsonl"
DETECTOR_KIND = "insecure_code"
LONG_ANSWER_LINES = 50

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class CodeAnswer:
    """One labelled answer of the benchmark."""

    id: str
    pair: str
    language: str
    category: str
    vulnerable: bool
    cwe: tuple[str, ...]
    text: str
    split: str = "dev"

    @property
    def lines(self) -> int:
        return self.text.count("\n") + 1


def load_code_answers(raw: bytes | None = None) -> list[CodeAnswer]:
    """The packaged benchmark (or ``raw`` JSONL bytes); :class:`ValueError` on a bad line."""
    if raw is None:
        raw = resources.files("firewall.evaluation").joinpath("data", CODE_ANSWERS).read_bytes()
    out: list[CodeAnswer] = []
    seen: set[str] = set()
    for line_no, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        item = orjson.loads(line)
        if "_provenance" in item:
            continue
        try:
            answer = CodeAnswer(
                id=str(item["id"]),
                pair=str(item.get("pair", item["id"])),
                language=str(item["language"]),
                category=str(item["category"]),
                vulnerable=bool(item["vulnerable"]),
                cwe=tuple(item.get("cwe", ())),
                text=str(item["text"]),
                split=str(item.get("split", "dev")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{CODE_ANSWERS}:{line_no}: missing or bad field {exc}") from None
        if answer.id in seen:
            raise ValueError(f"{CODE_ANSWERS}:{line_no}: duplicate id {answer.id!r}")
        if answer.vulnerable and not answer.cwe:
            raise ValueError(f"{CODE_ANSWERS}:{line_no}: a vulnerable answer needs a CWE list")
        seen.add(answer.id)
        out.append(answer)
    return out


@dataclass(slots=True)
class Counts:
    """Confusion counts at the configured threshold."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def add(self, vulnerable: bool, flagged: bool) -> None:
        if vulnerable:
            if flagged:
                self.tp += 1
            else:
                self.fn += 1
        elif flagged:
            self.fp += 1
        else:
            self.tn += 1

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else math.nan

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if math.isnan(p) or math.isnan(r) or p + r == 0:
            return 0.0 if self.tp + self.fn else math.nan
        return 2 * p * r / (p + r)

    @property
    def safe_flag_rate(self) -> float:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
            "precision": _clean(self.precision),
            "recall": _clean(self.recall),
            "f1": _clean(self.f1),
            "safe_flag_rate": _clean(self.safe_flag_rate),
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    answer: CodeAnswer
    score: float
    flagged: bool
    reasons: tuple[str, ...]
    detector_seconds: float
    scan_seconds: float
    status: str


@dataclass(slots=True)
class CodeReport:
    """Everything the table and the JSON file show."""

    detector: str
    threshold: float
    overall: Counts = field(default_factory=Counts)
    by_language: dict[str, Counts] = field(default_factory=dict)
    by_category: dict[str, Counts] = field(default_factory=dict)
    by_split: dict[str, Counts] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)
    false_positives: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    errors: int = 0
    detector_ms: list[float] = field(default_factory=list)
    long_detector_ms: list[float] = field(default_factory=list)
    scan_ms: list[float] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)

    def latency(self, values: Sequence[float]) -> dict[str, float]:
        return {
            "n": len(values),
            "p50_ms": _clean(percentile(values, 50)),
            "p95_ms": _clean(percentile(values, 95)),
            "p99_ms": _clean(percentile(values, 99)),
            "max_ms": max(values) if values else math.nan,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": "code",
            "detector": self.detector,
            "threshold": self.threshold,
            "answers": len(self.outcomes),
            "overall": self.overall.to_json(),
            "by_language": {k: v.to_json() for k, v in sorted(self.by_language.items())},
            "by_category": {k: v.to_json() for k, v in sorted(self.by_category.items())},
            "by_split": {k: v.to_json() for k, v in sorted(self.by_split.items())},
            "misses": self.misses,
            "false_positives": [{"id": i, "reasons": list(r)} for i, r in self.false_positives],
            "errors": self.errors,
            "latency": {
                "detector": self.latency(self.detector_ms),
                f"detector_{LONG_ANSWER_LINES}_plus_lines": self.latency(self.long_detector_ms),
                "scan": self.latency(self.scan_ms),
            },
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


def _clean(value: float) -> float:
    return value if not math.isnan(value) else math.nan


def with_code_detector(config: FirewallConfig) -> tuple[FirewallConfig, str]:
    """``config`` with an ``insecure_code`` detector (added with defaults when missing)."""
    for det in config.detectors:
        if det.kind == DETECTOR_KIND and det.enabled:
            return config, det.name
    added = DetectorConfig(name=DETECTOR_KIND, phases=(Phase.OUTPUT,))
    return config.model_copy(update={"detectors": (*config.detectors, added)}), added.name


async def run_code_suite_async(
    config: FirewallConfig,
    *,
    route: str | None = None,
    answers: Sequence[CodeAnswer] | None = None,
    repeats: int = 3,
    progress: Progress | None = None,
) -> CodeReport:
    """Scan every answer as an output, one at a time (so latencies are per answer).

    ``repeats`` scans each answer that many times and keeps the fastest detector time
    only for the first pass's decision and every pass's latency (so p95 reflects the
    detector, not a single scheduler hiccup on a shared machine).
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    started = time.perf_counter()
    config, name = with_code_detector(config)
    scanner = Scanner(config, route=route)
    rules = scanner.route.policy.rules(Phase.OUTPUT)
    rule = next((r for r in rules if r.detector == name), None)
    if rule is None:
        raise ConfigError(
            f"route {scanner.route.config.name!r} does not screen outputs with {name!r}; nothing to evaluate"
        )
    items = list(answers) if answers is not None else load_code_answers()
    report = CodeReport(detector=name, threshold=rule.threshold)
    async with scanner:
        for i, answer in enumerate(items):
            for rep in range(repeats):
                outcome = await scanner.scan_segments(
                    [Segment("assistant", answer.text, "/text")], Phase.OUTPUT, f"{answer.id}#{rep}"
                )
                finding = next((f for f in outcome.verdict.findings if f.detector == name), None)
                ms = (finding.duration_seconds if finding is not None else outcome.seconds) * 1000
                report.detector_ms.append(ms)
                report.scan_ms.append(outcome.seconds * 1000)
                if answer.lines >= LONG_ANSWER_LINES:
                    report.long_detector_ms.append(ms)
                if rep:
                    continue
                ok = finding is not None and finding.scored
                score = finding.score if finding is not None and ok else 0.0
                flagged = ok and score >= rule.threshold
                reasons = finding.reasons if finding is not None else ()
                report.outcomes.append(
                    Outcome(answer, score, flagged, reasons, ms / 1000, outcome.seconds, _status(finding))
                )
            if progress is not None:
                progress(i + 1, len(items))
    _summarise(report)
    report.elapsed_seconds = time.perf_counter() - started
    return report


def _status(finding: Any) -> str:
    return "missing" if finding is None else str(finding.status.value)


def _summarise(report: CodeReport) -> None:
    for o in report.outcomes:
        a = o.answer
        if o.status != "ok":
            report.errors += 1
        report.overall.add(a.vulnerable, o.flagged)
        report.by_language.setdefault(a.language, Counts()).add(a.vulnerable, o.flagged)
        report.by_category.setdefault(a.category, Counts()).add(a.vulnerable, o.flagged)
        report.by_split.setdefault(a.split, Counts()).add(a.vulnerable, o.flagged)
        if a.vulnerable and not o.flagged:
            report.misses.append(a.id)
        if not a.vulnerable and o.flagged:
            report.false_positives.append((a.id, o.reasons))


def run_code_suite(config: FirewallConfig, **kwargs: Any) -> CodeReport:
    """Blocking wrapper around :func:`run_code_suite_async` (for the CLI)."""
    return asyncio.run(run_code_suite_async(config, **kwargs))


def _fmt(value: float) -> str:
    return "   -  " if math.isnan(value) else f"{value:6.3f}"


def _row(label: str, c: Counts) -> str:
    n_vuln, n_safe = c.tp + c.fn, c.fp + c.tn
    return (
        f"  {label:<20} {n_vuln:>4} {n_safe:>4}  {_fmt(c.precision)} {_fmt(c.recall)} {_fmt(c.f1)}"
        f"  {_fmt(c.safe_flag_rate)}"
    )


def format_code_table(report: CodeReport) -> str:
    """The human-readable report."""
    header = f"  {'':<20} {'vuln':>4} {'safe':>4}  {'  P':>6} {'  R':>6} {'  F1':>6}  {'safe FP':>7}"
    lines = [
        f"insecure-code benchmark: {len(report.outcomes)} answers, detector {report.detector!r}, "
        f"threshold {report.threshold}",
        "",
        header,
        _row("overall", report.overall),
        *(_row(f"split {k}", v) for k, v in sorted(report.by_split.items())),
        "",
        "  per language",
        *(_row(k, v) for k, v in sorted(report.by_language.items())),
        "",
        "  per category",
        *(_row(k, v) for k, v in sorted(report.by_category.items())),
        "",
    ]
    for label, values in (
        ("detector per answer", report.detector_ms),
        (f"detector, answers of {LONG_ANSWER_LINES}+ lines", report.long_detector_ms),
        ("whole scan per answer", report.scan_ms),
    ):
        stats = report.latency(values)
        lines.append(
            f"  latency {label:<34} n={stats['n']:<5} p50 {stats['p50_ms']:7.2f} ms  "
            f"p95 {stats['p95_ms']:7.2f} ms  p99 {stats['p99_ms']:7.2f} ms"
        )
    lines.append("")
    if report.misses:
        lines.append(f"  missed ({len(report.misses)}): {', '.join(report.misses)}")
    if report.false_positives:
        fps = ", ".join(f"{i} [{' '.join(r)}]" for i, r in report.false_positives)
        lines.append(f"  safe look-alikes flagged ({len(report.false_positives)}): {fps}")
    if report.errors:
        lines.append(f"  errors: {report.errors}")
    lines.append(f"  elapsed {report.elapsed_seconds:.1f} s")
    return "\n".join(lines) + "\n"
