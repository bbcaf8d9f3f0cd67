"""The metric declaration table: every row becomes a typed attribute and an exported family."""

from __future__ import annotations

import typing

from prometheus_client import generate_latest

from firewall.observability import metrics as metrics_module
from firewall.observability.metrics import METRICS, PREFIX, Metrics


def test_every_row_is_an_annotated_attribute_of_its_kind() -> None:
    hints = typing.get_type_hints(Metrics, vars(metrics_module))
    declared = {d.attr for d in METRICS}
    assert len(declared) == len(METRICS), "two rows write one attribute"
    metric_hints = {name for name, kind in hints.items() if kind in {d.kind for d in METRICS}}
    assert metric_hints == declared, "an annotation without a row, or a row without an annotation"
    m = Metrics()
    for d in METRICS:
        assert isinstance(getattr(m, d.attr), d.kind), d.attr
        assert hints[d.attr] is d.kind, d.attr


def test_every_row_is_exported_under_its_name() -> None:
    m = Metrics()
    m.prepare(["chat"], [("invisible_chars", ["input"])], "up", "enforce")
    text = generate_latest(m.registry).decode()
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    for d in METRICS:
        name = PREFIX + d.name
        assert {name, name + "_total"} & exported, d.name
