"""``eval --suite real-traffic``: block and flag rates on real user traffic, and the trigger
families planted into it.

Why two rates: a sidecar that blocks one request in 25 is switched off, but one that logs
a few percent for a security team to read is doing its job. So each is reported on its
own, for the whole config and per detector:

* **block rate**: the share of turns the policy refuses (a detector fired under a rule
  whose action is ``block``, or ``sanitize`` with nothing it could remove, in a route
  that enforces);
* **flag rate**: the share it blocks or logs;
* **sanitize rate**, apart: the share forwarded without the characters a ``sanitize``
  rule removed (neither refused nor left for a person to read).

Input phase: the split's human turns, as one user message each, and then every trigger
family of the suite planted into the same turns at random word or sentence boundaries
(:meth:`TriggerFamily.apply`, the movie suite's inserter): per family, how many the policy
flags and blocks. Output phase: the split's assistant answers that hold code, scanned as
answers (the ``insecure_code`` case). Everything goes through the proxy's own screening
path (:class:`~firewall.offline.scanning.Scanner`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firewall.config.schema import FirewallConfig, config_hash
from firewall.core.types import Action, Mode, Phase, Segment, Verdict
from firewall.evaluation.clustered import ClusteredRate, clustered_rate
from firewall.evaluation.code_labels import LABELS_PATH, LabelReport, label_precision, load_labels
from firewall.evaluation.real_traffic import (
    Turn,
    code_answers,
    conversation_of,
    human_turns,
    load_conversations,
)
from firewall.evaluation.triggers import TriggerFamily
from firewall.offline.scanning import Scanner
from firewall.screening.policy import DetectorRule, removable

__all__ = ["RateRow", "RealTrafficReport", "format_real_traffic", "run_real_traffic"]

DEFAULT_REAL_LIMIT = 2000


@dataclass(slots=True)
class RateRow:
    """Counts over ``n`` scanned texts: blocked, flagged (block or log), and sanitized."""

    name: str
    n: int = 0
    blocked: int = 0
    flagged: int = 0
    sanitized: int = 0

    @property
    def block_rate(self) -> float:
        return self.blocked / self.n if self.n else 0.0

    @property
    def flag_rate(self) -> float:
        return self.flagged / self.n if self.n else 0.0

    @property
    def sanitize_rate(self) -> float:
        return self.sanitized / self.n if self.n else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": self.n,
            "blocked": self.blocked,
            "flagged": self.flagged,
            "block_rate": round(self.block_rate, 5),
            "flag_rate": round(self.flag_rate, 5),
            "sanitized": self.sanitized,
            "sanitize_rate": round(self.sanitize_rate, 5),
        }


@dataclass(slots=True)
class RealTrafficReport:
    split: str
    phase: str
    seed: int
    route: str
    config_hash: str
    policy: RateRow
    detectors: list[RateRow]
    families: list[RateRow] = field(default_factory=list)
    #: Output phase: precision on the hand-labelled findings of the development split.
    labelled: LabelReport | None = None
    #: The whole config's flag and block rates on clean traffic, by conversation
    #: (:mod:`firewall.evaluation.clustered`): texts of one conversation are not independent.
    flagged_by_conversation: ClusteredRate | None = None
    blocked_by_conversation: ClusteredRate | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": "real-traffic",
            "split": self.split,
            "phase": self.phase,
            "seed": self.seed,
            "route": self.route,
            "config_hash": self.config_hash,
            "policy": self.policy.to_json(),
            "detectors": [d.to_json() for d in self.detectors],
            "families": [f.to_json() for f in self.families],
            "labelled": self.labelled.to_json() if self.labelled is not None else None,
            "flagged_by_conversation": _json_or_none(self.flagged_by_conversation),
            "blocked_by_conversation": _json_or_none(self.blocked_by_conversation),
        }


def _json_or_none(rate: ClusteredRate | None) -> dict[str, Any] | None:
    return rate.to_json() if rate is not None else None


def _tally(row: RateRow, verdict: Verdict) -> None:
    row.n += 1
    action = verdict.effective_action
    if action is Action.SANITIZE:
        row.sanitized += 1
    elif action is not Action.ALLOW:
        row.flagged += 1
        row.blocked += action is Action.BLOCK


def _tally_detectors(
    rows: dict[str, RateRow], rules: dict[str, DetectorRule], verdict: Verdict, enforce: bool
) -> None:
    """Each detector's own outcome: what its rule did with its finding."""
    findings = {f.detector: f for f in verdict.findings}
    for name, row in rows.items():
        row.n += 1
        if name not in verdict.fired:
            continue
        rule, finding = rules[name], findings[name]
        if rule.action is Action.SANITIZE and removable(verdict.phase, finding, rule.threshold):
            row.sanitized += enforce
            row.flagged += not enforce  # shadow mode logs what it would have removed
            continue
        row.flagged += 1
        row.blocked += enforce and rule.action in (Action.BLOCK, Action.SANITIZE)


async def _scan_all(
    scanner: Scanner,
    texts: Sequence[Turn],
    phase: Phase,
    concurrency: int,
    progress: Callable[[int], None] | None,
) -> list[Verdict]:
    role = "user" if phase is Phase.INPUT else "assistant"
    verdicts: list[Verdict] = []
    for start in range(0, len(texts), concurrency):
        chunk = texts[start : start + concurrency]
        outcomes = await asyncio.gather(
            *(scanner.scan_segments([Segment(role, t.text, "/text")], phase, t.id) for t in chunk)
        )
        verdicts.extend(o.verdict for o in outcomes)
        if progress is not None:
            progress(len(chunk))
    return verdicts


async def run_real_traffic_async(
    config: FirewallConfig,
    *,
    split: str = "dev",
    limit: int = DEFAULT_REAL_LIMIT,
    seed: int = 0,
    families: Sequence[TriggerFamily] = (),
    route: str | None = None,
    phase: Phase = Phase.INPUT,
    concurrency: int = 64,
    progress: Callable[[int], None] | None = None,
    data_path: Any = None,
    min_conversations: int | None = None,
    labels_path: Path | None = LABELS_PATH,
) -> RealTrafficReport:
    """Scan ``limit`` texts of ``split`` (and, on input, each family planted in them).

    On the output phase, with ``labels_path``, also the precision of the config's
    ``insecure_code`` detectors on the hand-labelled development answers (whatever the split).
    """
    kwargs: dict[str, Any] = {"splits": (split,)}
    if min_conversations is not None:
        kwargs["min_conversations"] = min_conversations
    conversations = load_conversations(data_path, **kwargs)
    texts = (human_turns if phase is Phase.INPUT else code_answers)(conversations, limit, seed)
    async with Scanner(config, route=route) as scanner:
        rules = scanner.route.policy.rules(phase)
        if not rules:
            raise ValueError(
                f"route {scanner.route.config.name!r} screens nothing in the {phase.value} phase "
                "with this config"
            )
        enforce = scanner.route.policy.mode is Mode.ENFORCE
        policy = RateRow("policy")
        per_detector = {r.detector: RateRow(r.detector) for r in rules}
        by_name = {r.detector: r for r in rules}
        flagged: list[tuple[str, bool]] = []
        blocked: list[tuple[str, bool]] = []
        for text, verdict in zip(
            texts, await _scan_all(scanner, texts, phase, concurrency, progress), strict=True
        ):
            before = policy.flagged, policy.blocked
            _tally(policy, verdict)
            _tally_detectors(per_detector, by_name, verdict, enforce)
            conversation = conversation_of(text.id)
            flagged.append((conversation, policy.flagged > before[0]))
            blocked.append((conversation, policy.blocked > before[1]))
        family_rows: list[RateRow] = []
        if phase is Phase.INPUT:
            for family in families:
                planted = [Turn(t.id, family.apply(t.text, seed, t.id)) for t in texts]
                row = RateRow(family.name)
                for verdict in await _scan_all(scanner, planted, phase, concurrency, progress):
                    _tally(row, verdict)
                family_rows.append(row)
        labelled = None
        code_detectors = [d.name for d in config.detectors if d.kind == "insecure_code"]
        if phase is Phase.OUTPUT and labels_path is not None and code_detectors:
            dev = (
                conversations
                if split == "dev"
                else load_conversations(data_path, **{**kwargs, "splits": ("dev",)})
            )
            labelled = await label_precision(
                scanner, code_answers(dev), load_labels(labels_path), code_detectors
            )
        return RealTrafficReport(
            split=split,
            phase=phase.value,
            seed=seed,
            route=scanner.route.config.name,
            config_hash=config_hash(config),
            policy=policy,
            detectors=list(per_detector.values()),
            families=family_rows,
            labelled=labelled,
            flagged_by_conversation=clustered_rate(flagged, seed=seed),
            blocked_by_conversation=clustered_rate(blocked, seed=seed),
        )


def run_real_traffic(config: FirewallConfig, **kwargs: Any) -> RealTrafficReport:
    return asyncio.run(run_real_traffic_async(config, **kwargs))


def _row(label: str, row: RateRow) -> str:
    return (
        f"{label:32s} {row.n:6d} {row.blocked:8d} {row.block_rate:11.2%} "
        f"{row.flagged:8d} {row.flag_rate:10.2%} {row.sanitized:10d} {row.sanitize_rate:9.2%}"
    )


def _head(title: str) -> str:
    return (
        f"{title:32s} {'n':>6s} {'blocked':>8s} {'block rate':>11s} {'flagged':>8s} {'flag rate':>10s} "
        f"{'sanitized':>10s} {'san. rate':>9s}"
    )


def format_real_traffic(report: RealTrafficReport) -> str:
    what = "human turns" if report.phase == "input" else "assistant answers with code"
    lines = [
        f"real traffic: ShareGPT split {report.split!r}, {report.policy.n} {what} (seed {report.seed}), "
        f"route {report.route}, config {report.config_hash[:12]}",
        "",
        _head("clean traffic"),
        _row("policy (whole config)", report.policy),
        *(_row(f"  {row.name}", row) for row in report.detectors),
    ]
    for label, clustered in (
        ("flagged", report.flagged_by_conversation),
        ("blocked", report.blocked_by_conversation),
    ):
        if clustered is not None:
            lines.append(
                f"  {label} {clustered.rate:.2%} (95% interval {clustered.low:.2%}-{clustered.high:.2%}, "
                f"resampling conversations): {clustered.hits} text{'' if clustered.hits == 1 else 's'} "
                f"in {clustered.conversations_hit} "
                f"of {clustered.conversations} conversations ({clustered.conversation_rate:.2%})"
            )
    if report.families:
        lines += ["", _head("planted in the same turns"), *(_row(f"  {r.name}", r) for r in report.families)]
    if report.labelled is not None:
        lab = report.labelled
        lines += [
            "",
            f"hand-labelled findings ({lab.answers} flagged development answers): "
            f"precision {lab.precision:.3f} "
            f"({lab.tp} true, {lab.fp} false); {lab.unlabelled} findings not in the labelled set, "
            f"{lab.lost_tp} labelled true findings no longer made, {lab.fixed_fp} labelled false ones gone",
        ]
    lines += [
        "",
        "block rate: share of texts the policy refuses; flag rate: share it blocks or logs; "
        "sanitize rate: share forwarded without the characters a sanitize rule removed. A "
        "detector's block rate counts the texts it fired on under a blocking rule (or a sanitize "
        "rule with nothing it could remove). Planted rows: each family's trigger inserted into "
        "every turn above (detection, not false positives; a sanitized trigger never reaches the "
        "model).",
        "",
    ]
    return "\n".join(lines)
