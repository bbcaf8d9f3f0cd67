"""Counters and histograms for the request path, read by Prometheus at scrape time.

prometheus-client's metric objects take a lock, resolve a label child and walk
bucket objects on every update: a few microseconds each, and a request updates
about fifteen of them. These families keep plain numbers in dicts keyed by the
label tuple instead, and a collector turns them into metric families only when
``/metrics`` is scraped, which is the moment the cost belongs to.

They must be updated from one thread only: the event loop's. (prometheus-client
objects remain in use for metrics set from other threads or rarely.) Names,
types, buckets and exposition are those of ordinary Prometheus counters and
histograms, so dashboards and alerts cannot tell the difference.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["LoopCollector", "LoopCounter", "LoopGauge", "LoopHistogram"]

Labels = tuple[str, ...]


def _go_float(value: float) -> str:
    """The bucket bound as prometheus-client writes it (``le="0.005"``, ``le="1.0"``)."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


class LoopCounter:
    """A counter family; ``name`` is given without the ``_total`` suffix."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def inc_each(self, labelled: Iterable[Labels]) -> None:
        """Add one to each series named: one call for many (the request path counts a
        phase's findings at once)."""
        values = self.values
        for labels in labelled:
            values[labels] = values.get(labels, 0.0) + 1.0

    def touch(self, labels: Labels) -> None:
        self.values.setdefault(labels, 0.0)

    def collect(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in self.values.items():
            family.add_metric(list(labels), value)
        return family


class LoopGauge:
    """A gauge without labels (e.g. requests in flight)."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0.0

    def collect(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, value=self.value)


class LoopHistogram:
    """A histogram family with fixed upper bounds (``+Inf`` is added)."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = sorted(float(b) for b in buckets)
        # Per series: a count per bucket (the last one is +Inf), then the sum.
        self.series: dict[Labels, list[float]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        counts = self.series.get(labels)
        if counts is None:
            counts = self.series[labels] = [0.0] * (len(self.bounds) + 2)
        counts[bisect_left(self.bounds, value)] += 1.0
        counts[-1] += value

    def touch(self, labels: Labels) -> None:
        if labels not in self.series:
            self.series[labels] = [0.0] * (len(self.bounds) + 2)

    def counts(self, labels: Labels) -> list[float]:
        """The live counts of one series (created at zero): a caller that observes the same
        series on every request keeps the list and adds to it as :meth:`observe` does,
        without a call or a dict lookup per observation."""
        counts = self.series.get(labels)
        if counts is None:
            counts = self.series[labels] = [0.0] * (len(self.bounds) + 2)
        return counts

    def collect(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        names = [_go_float(b) for b in self.bounds] + ["+Inf"]
        for labels, counts in self.series.items():
            cumulative = 0.0
            buckets = []
            for name, count in zip(names, counts[:-1], strict=True):
                cumulative += count
                buckets.append((name, cumulative))
            family.add_metric(list(labels), buckets, counts[-1])
        return family


class LoopCollector(Collector):
    """Exposes a set of loop metric families through a prometheus-client registry."""

    def __init__(self, families: Sequence[LoopCounter | LoopHistogram | LoopGauge]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        for family in self.families:
            yield family.collect()
