"""Every Prometheus metric the firewall exports, defined once on an injected registry.

Names follow the catalogue in ``shared/STYLE.md`` (B.1): the
``trigger_firewall_`` prefix, base units, ``_total`` counters, histograms with
buckets chosen per metric, and bounded labels only. Labels carry route names,
detector names, phases, actions, modes and reason codes from config, never
prompt text, request ids, client addresses or raw paths.

Label children are cached: ``Counter.labels()`` takes a lock and builds a tuple
on every call, which matters at thousands of requests a second on two cores.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator
from typing import Final, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from firewall import __version__
from firewall.observability.loop_metrics import LoopCollector, LoopCounter, LoopGauge, LoopHistogram

__all__ = ["PREFIX", "Metrics"]

_M = TypeVar("_M", Counter, Histogram, Gauge)

PREFIX: Final = "trigger_firewall_"

_LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_OVERHEAD_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
_SCORE_BUCKETS: Final = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_STREAM_BUCKETS: Final = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
_BATCH_SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128)
# A CPU forward pass costs ~0.1 s at batch 1 and several seconds at batch 32 (shared/FACTS.md).
_BATCH_SECONDS_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

REQUEST_ACTIONS: Final = ("allow", "log", "block", "error", "rejected")
REJECT_REASONS: Final = (
    "body_too_large",
    "invalid_json",
    "invalid_utf8",
    "invalid_request",
    "unsupported_encoding",
    "overloaded",
    "unknown_route",
    "draining",
    "expectation_failed",
)
UPSTREAM_CLASSES: Final = ("2xx", "3xx", "4xx", "5xx", "timeout", "connect_error", "error")
#: ok: scored; error: bad status or answer; timeout; unavailable: no connection;
#: cancelled: sent, but the request stopped waiting (detector timeout, another probe failed);
#: over_budget: not sent because the request's probe budget was spent.
PROBE_OUTCOMES: Final = ("ok", "error", "timeout", "unavailable", "cancelled", "over_budget")
STREAM_OUTCOMES: Final = (
    "completed",
    "terminated",
    "client_disconnected",
    "upstream_error",
    "incomplete",
)


#: ``(detector, entries, evictions)`` for each detector that keeps state across requests.
StateSource = Callable[[], Iterable[tuple[str, int, int]]]


class DetectorStateCollector(Collector):
    """Stateful detectors' table sizes and evictions, read from the live detectors at scrape time.

    Read at scrape rather than counted on the request path: the numbers live in the
    detector already, and a reload that swaps detectors needs no bookkeeping here.
    """

    def __init__(self) -> None:
        self.source: StateSource | None = None

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        entries = GaugeMetricFamily(
            PREFIX + "detector_state_entries",
            "Entries a stateful detector holds across requests (bounded by its max_entries).",
            labels=["detector"],
        )
        evictions = CounterMetricFamily(
            PREFIX + "detector_state_evictions",
            "Entries a stateful detector dropped to stay within its bound (since it was loaded).",
            labels=["detector"],
        )
        for name, held, evicted in self.source() if self.source is not None else ():
            entries.add_metric([name], held)
            evictions.add_metric([name], evicted)
        yield entries
        yield evictions


class Metrics:
    """Holds the metric objects; components receive it instead of using globals."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = PREFIX
        self.requests = LoopCounter(
            p + "requests",
            "Requests received, by outcome (allow/log/block/error/rejected).",
            ["route", "action", "mode"],
        )
        self.rejected = LoopCounter(
            p + "rejected_requests",
            "Requests answered by the firewall before screening, by reason.",
            ["route", "reason"],
        )
        self.request_duration = LoopHistogram(
            p + "request_duration_seconds",
            "End-to-end time through the proxy (streams: until the last byte).",
            ["route"],
            _LATENCY_BUCKETS,
        )
        self.overhead = LoopHistogram(
            p + "overhead_seconds",
            "Time the firewall added for screening, excluding upstream time.",
            ["route", "phase"],
            _OVERHEAD_BUCKETS,
        )
        self.verdicts = LoopCounter(
            p + "verdicts",
            "Policy decisions per phase, with the bounded reason code.",
            ["phase", "action", "mode", "reason"],
        )
        self.detector_duration = LoopHistogram(
            p + "detector_duration_seconds",
            "Time one detector took for one sample.",
            ["detector", "phase"],
            _OVERHEAD_BUCKETS,
        )
        self.detector_score = LoopHistogram(
            p + "detector_score",
            "Distribution of detector scores in [0, 1] (higher is more suspicious).",
            ["detector", "phase"],
            _SCORE_BUCKETS,
        )
        self.detector_findings = LoopCounter(
            p + "detector_findings",
            "Detector outcomes: fired, not_fired, skipped_by_gate, error.",
            ["detector", "phase", "outcome"],
        )
        self.detector_errors = LoopCounter(
            p + "detector_errors",
            "Detector failures by kind (timeout, exception, unavailable).",
            ["detector", "kind"],
        )
        self.detector_fail_open = LoopCounter(
            p + "detector_fail_open",
            "Requests let through only because a failing detector is configured fail_open.",
            ["detector", "phase"],
        )
        self.detector_ready = Gauge(
            p + "detector_ready", "1 when the detector is loaded and warmed.", ["detector"], registry=r
        )
        self.batch_size = Histogram(
            p + "batch_size",
            "Items per micro-batch handed to a model detector's batch function.",
            ["detector"],
            buckets=_BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_queue_wait = Histogram(
            p + "batch_queue_wait_seconds",
            "Time an item waited in a micro-batcher queue, from submit to the start of its batch.",
            ["detector"],
            buckets=_BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_run = Histogram(
            p + "batch_run_seconds",
            "Time one micro-batch took to run (the model forward pass, off the event loop).",
            ["detector"],
            buckets=_BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_queue_depth = Gauge(
            p + "batch_queue_depth",
            "Items waiting in a micro-batcher queue (not counting the batch in flight).",
            ["detector"],
            registry=r,
        )
        self.batch_shed = Counter(
            p + "batch_shed_total",
            "Items a micro-batcher refused at once because its queue was full (load shedding).",
            ["detector"],
            registry=r,
        )
        self.stream_terminations = LoopCounter(
            p + "stream_terminations",
            "Streams stopped mid-way by an output detector.",
            ["detector"],
        )
        self.streams = LoopCounter(
            p + "streams",
            "Streamed responses by how they ended.",
            ["route", "outcome"],
        )
        self.stream_duration = LoopHistogram(
            p + "stream_duration_seconds",
            "Duration of streamed responses.",
            ["route"],
            _STREAM_BUCKETS,
        )
        self.upstream_requests = LoopCounter(
            p + "upstream_requests",
            "Requests sent upstream, by status class or failure.",
            ["upstream", "code_class"],
        )
        self.upstream_duration = LoopHistogram(
            p + "upstream_duration_seconds",
            "Upstream time to response headers.",
            ["upstream"],
            _LATENCY_BUCKETS,
        )
        self.strip_probes = LoopCounter(
            p + "strip_probes",
            "Perturbed copies a STRIP detector sent to the upstream (each one a billed call), by outcome.",
            ["detector", "outcome"],
        )
        self.draining = Gauge(p + "draining", "1 while shutting down.", registry=r)
        self.inflight = LoopGauge(p + "inflight_requests", "Requests in flight.")
        self.audit_events = LoopCounter(p + "audit_events", "Audit log lines written.", [])
        self.audit_dropped = LoopCounter(
            p + "audit_dropped",
            "Audit log lines dropped because the writer fell behind (buffer full or I/O error).",
            [],
        )
        self.reload_ok = Gauge(
            p + "config_last_reload_successful",
            "1 if the last config load or reload succeeded.",
            registry=r,
        )
        self.reloads = Counter(
            p + "config_reloads_total",
            "Config reload attempts by result (success, failure).",
            ["result"],
            registry=r,
        )
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self.reload_ts = Gauge(
            p + "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load or reload.",
            registry=r,
        )
        self.config_info = Gauge(p + "config_info", "The live config (value 1).", ["config_hash"], registry=r)
        self.build_info = Gauge(
            p + "build_info",
            "Build and runtime versions (value 1).",
            ["version", "python_version"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        r.register(
            LoopCollector(
                [
                    self.requests,
                    self.rejected,
                    self.request_duration,
                    self.overhead,
                    self.verdicts,
                    self.detector_duration,
                    self.detector_score,
                    self.detector_findings,
                    self.detector_errors,
                    self.detector_fail_open,
                    self.stream_terminations,
                    self.streams,
                    self.stream_duration,
                    self.upstream_requests,
                    self.strip_probes,
                    self.upstream_duration,
                    self.inflight,
                    self.audit_events,
                    self.audit_dropped,
                ]
            )
        )
        #: Set by the server to read the live runtime's stateful detectors (see DetectorStateCollector).
        self.detector_state = DetectorStateCollector()
        r.register(self.detector_state)
        self.audit_events.touch(())
        self.audit_dropped.touch(())
        self._cache: dict[tuple[object, ...], object] = {}
        self._live_hash: str | None = None

    # -- pre-initialisation -------------------------------------------------

    def prepare(
        self,
        routes: Iterable[str],
        detectors: Iterable[tuple[str, Iterable[str]]],
        upstream: str,
        mode: str,
    ) -> None:
        """Touch expected label sets so their series exist at 0 before the first event."""
        for route in routes:
            for action in REQUEST_ACTIONS:
                self.requests.touch((route, action, mode))
            for outcome in STREAM_OUTCOMES:
                self.streams.touch((route, outcome))
        for name, phases in detectors:
            self.detector_ready.labels(name)
            for kind in ("timeout", "exception", "unavailable"):
                self.detector_errors.touch((name, kind))
            self.stream_terminations.touch((name,))
            for phase in phases:
                self.detector_fail_open.touch((name, phase))
                for outcome in ("fired", "not_fired", "skipped_by_gate", "error"):
                    self.detector_findings.touch((name, phase, outcome))
        for code_class in UPSTREAM_CLASSES:
            self.upstream_requests.touch((upstream, code_class))

    def prepare_batcher(self, detector: str) -> None:
        """Touch one micro-batcher's series so they exist at 0 before its first batch."""
        for metric in (self.batch_size, self.batch_queue_wait, self.batch_run):
            self._child(metric, detector)
        self._child(self.batch_queue_depth, detector).set(0)
        self._child(self.batch_shed, detector)

    def set_config(self, config_hash: str) -> None:
        """Point the info metric at the live config (one series at a time)."""
        if self._live_hash is not None and self._live_hash != config_hash:
            self.config_info.remove(self._live_hash)
        self.config_info.labels(config_hash).set(1)
        self._live_hash = config_hash

    # -- cached children for the hot path ------------------------------------

    def _child(self, metric: _M, *labels: str) -> _M:
        key = (id(metric), *labels)
        child = self._cache.get(key)
        if child is None:
            child = metric.labels(*labels)
            self._cache[key] = child
        return cast(_M, child)

    # -- request path (event loop thread only) --------------------------------

    def count_request(self, route: str, action: str, mode: str) -> None:
        self.requests.inc((route, action, mode))

    def count_rejected(self, route: str, reason: str, mode: str) -> None:
        self.rejected.inc((route, reason))
        self.requests.inc((route, "rejected", mode))

    def observe_request(self, route: str, seconds: float) -> None:
        self.request_duration.observe((route,), seconds)

    def observe_overhead(self, route: str, phase: str, seconds: float) -> None:
        self.overhead.observe((route, phase), seconds)

    def count_verdict(self, phase: str, action: str, mode: str, reason: str) -> None:
        self.verdicts.inc((phase, action, mode, reason))

    def observe_detector(self, detector: str, phase: str, seconds: float, score: float | None) -> None:
        self.detector_duration.observe((detector, phase), seconds)
        if score is not None:
            self.detector_score.observe((detector, phase), score)

    def count_finding(self, detector: str, phase: str, outcome: str) -> None:
        self.detector_findings.inc((detector, phase, outcome))

    def count_detector_error(self, detector: str, kind: str) -> None:
        self.detector_errors.inc((detector, kind))

    def count_fail_open(self, detector: str, phase: str) -> None:
        self.detector_fail_open.inc((detector, phase))

    def prepare_probes(self, detector: str) -> None:
        """Touch one probing detector's series so they exist at 0 before its first probe."""
        for outcome in PROBE_OUTCOMES:
            self.strip_probes.touch((detector, outcome))

    def count_probes(self, detector: str, outcome: str, n: int = 1) -> None:
        self.strip_probes.inc((detector, outcome), n)

    def count_stream_termination(self, detector: str) -> None:
        self.stream_terminations.inc((detector,))

    def count_audit(self, written: int = 1, dropped: int = 0) -> None:
        if written:
            self.audit_events.inc((), written)
        if dropped:
            self.audit_dropped.inc((), dropped)

    def observe_batch_start(self, detector: str, size: int, waits: Iterable[float]) -> None:
        """A batch of ``size`` items started; ``waits`` are their queueing delays in seconds."""
        self._child(self.batch_size, detector).observe(size)
        wait = self._child(self.batch_queue_wait, detector)
        for seconds in waits:
            wait.observe(seconds)

    def observe_batch_run(self, detector: str, seconds: float) -> None:
        self._child(self.batch_run, detector).observe(seconds)

    def set_batch_queue_depth(self, detector: str, depth: int) -> None:
        self._child(self.batch_queue_depth, detector).set(depth)

    def count_batch_shed(self, detector: str) -> None:
        self._child(self.batch_shed, detector).inc()

    def count_reload(self, result: str) -> None:
        self.reloads.labels(result).inc()

    def count_upstream(self, upstream: str, code_class: str, seconds: float | None) -> None:
        self.upstream_requests.inc((upstream, code_class))
        if seconds is not None:
            self.upstream_duration.observe((upstream,), seconds)

    def count_stream(self, route: str, outcome: str, seconds: float) -> None:
        self.streams.inc((route, outcome))
        self.stream_duration.observe((route,), seconds)
