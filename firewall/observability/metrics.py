"""Every Prometheus metric the firewall exports, defined once on an injected registry.

Names follow Prometheus' naming practice: the
``trigger_firewall_`` prefix, base units, ``_total`` counters, histograms with
buckets chosen per metric, and bounded labels only. Labels carry route names,
detector names, phases, actions, modes and reason codes from config, never
prompt text, request ids, client addresses or raw paths.

Label children are cached: ``Counter.labels()`` takes a lock and builds a tuple
on every call, which matters at thousands of requests a second on two cores.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from firewall import __version__
from firewall.observability.loop_metrics import LoopCollector, LoopCounter, LoopGauge, LoopHistogram

__all__ = ["METRICS", "PREFIX", "DetectorSeries", "Metrics"]

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
# A CPU forward pass of the reference LM costs ~0.1 s at batch 1 and several seconds at batch 32
# (docs/models.md).
_BATCH_SECONDS_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

REQUEST_ACTIONS: Final = ("allow", "log", "sanitize", "block", "error", "rejected")
REJECT_REASONS: Final = (
    "body_too_large",
    "invalid_json",
    "ambiguous_json",
    "unsafe_path",
    "unscreenable_input",
    "invalid_utf8",
    "invalid_request",
    "unsupported_encoding",
    "overloaded",
    "unknown_route",
    "model_not_allowed",
    "draining",
    "expectation_failed",
)
UPSTREAM_CLASSES: Final = ("2xx", "3xx", "4xx", "5xx", "timeout", "connect_error", "error")
#: ok: scored; error: bad status or answer; timeout; unavailable: no connection;
#: cancelled: sent, but the request stopped waiting (detector timeout, another probe failed);
#: over_budget: not sent because the request's probe budget was spent.
PROBE_OUTCOMES: Final = ("ok", "error", "timeout", "unavailable", "cancelled", "over_budget")
#: What a behavioural detector concluded about one suspected span.
CANDIDATE_OUTCOMES: Final = ("confirmed", "cleared", "known_trigger", "known_clear", "unprobeable")
#: What a detector does with a memory shared across replicas (Redis or Valkey).
SHARED_MEMORY_OPERATIONS: Final = ("write", "sync")
STREAM_OUTCOMES: Final = (
    "completed",
    "terminated",
    "client_disconnected",
    "upstream_error",
    "incomplete",
)


#: ``(detector, entries, evictions)`` for each detector that keeps state across requests.
StateSource = Callable[[], Iterable[tuple[str, int, int]]]


class DetectorSeries:
    """One detector's duration and score histograms for one phase, held by the pipeline.

    Every screened request observes both for each detector that ran; resolving the two
    series once and adding to their counts here costs one call per detector instead of
    three calls and two label lookups. Event loop thread only, like the families.
    """

    __slots__ = ("_duration", "_duration_bounds", "_score", "_score_bounds")

    def __init__(
        self,
        duration_bounds: list[float],
        duration: list[float],
        score_bounds: list[float],
        score: list[float],
    ) -> None:
        self._duration_bounds = duration_bounds
        self._duration = duration
        self._score_bounds = score_bounds
        self._score = score

    def observe(self, seconds: float, score: float) -> None:
        duration = self._duration
        duration[bisect_left(self._duration_bounds, seconds)] += 1.0
        duration[-1] += seconds
        scores = self._score
        scores[bisect_left(self._score_bounds, score)] += 1.0
        scores[-1] += score


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


_Family = LoopCounter | LoopHistogram | LoopGauge | Counter | Gauge | Histogram


@dataclass(frozen=True, slots=True)
class _Declared:
    """One metric: the :class:`Metrics` attribute it lives in, its kind, name, help and labels.

    ``Loop*`` kinds are the event-loop-only fast metrics (no locks, see
    :mod:`firewall.observability.loop_metrics`) for the request path; the
    prometheus-client kinds are for metrics written from other threads (batchers).
    """

    attr: str
    kind: type[_Family]
    name: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None

    def build(self, registry: CollectorRegistry) -> _Family:
        name = PREFIX + self.name
        if self.kind is LoopCounter:
            return LoopCounter(name, self.help, self.labels)
        if self.kind is LoopHistogram:
            assert self.buckets is not None  # noqa: S101 - the table below gives every histogram buckets
            return LoopHistogram(name, self.help, self.labels, self.buckets)
        if self.kind is LoopGauge:
            return LoopGauge(name, self.help)
        if self.kind is Histogram:
            assert self.buckets is not None  # noqa: S101
            return Histogram(name, self.help, self.labels, buckets=self.buckets, registry=registry)
        if self.kind is Counter:
            return Counter(name, self.help, self.labels, registry=registry)
        return Gauge(name, self.help, self.labels, registry=registry)


#: Every metric the firewall exports, in exposition order. The README's metric list and the
#: dashboard (tests/deploy checks both) name these.
METRICS: Final[tuple[_Declared, ...]] = (
    _Declared(
        "requests",
        LoopCounter,
        "requests",
        "Requests received, by outcome (allow/log/block/error/rejected).",
        ("route", "action", "mode"),
    ),
    _Declared(
        "rejected",
        LoopCounter,
        "rejected_requests",
        "Requests answered by the firewall before screening, by reason.",
        ("route", "reason"),
    ),
    _Declared(
        "request_duration",
        LoopHistogram,
        "request_duration_seconds",
        "End-to-end time through the proxy (streams: until the last byte).",
        ("route",),
        _LATENCY_BUCKETS,
    ),
    _Declared(
        "overhead",
        LoopHistogram,
        "overhead_seconds",
        "Time the firewall added for screening, excluding upstream time.",
        ("route", "phase"),
        _OVERHEAD_BUCKETS,
    ),
    _Declared(
        "verdicts",
        LoopCounter,
        "verdicts",
        "Policy decisions per phase, with the bounded reason code.",
        ("phase", "action", "mode", "reason"),
    ),
    _Declared(
        "detector_duration",
        LoopHistogram,
        "detector_duration_seconds",
        "Time one detector took for one sample.",
        ("detector", "phase"),
        _OVERHEAD_BUCKETS,
    ),
    _Declared(
        "detector_score",
        LoopHistogram,
        "detector_score",
        "Distribution of detector scores in [0, 1] (higher is more suspicious).",
        ("detector", "phase"),
        _SCORE_BUCKETS,
    ),
    _Declared(
        "detector_findings",
        LoopCounter,
        "detector_findings",
        "Detector outcomes: fired, not_fired, skipped_by_gate, partial (scored on part of the input, "
        "below threshold: the fail mode decided), error.",
        ("detector", "phase", "outcome"),
    ),
    _Declared(
        "detector_errors",
        LoopCounter,
        "detector_errors",
        "Detector failures by kind (timeout, exception, unavailable, artefact_mismatch: a model that "
        "failed its pinned hashes).",
        ("detector", "kind"),
    ),
    _Declared(
        "detector_fail_open",
        LoopCounter,
        "detector_fail_open",
        "Requests let through only because a failing detector is configured fail_open.",
        ("detector", "phase"),
    ),
    _Declared(
        "detector_ready", Gauge, "detector_ready", "1 when the detector is loaded and warmed.", ("detector",)
    ),
    _Declared(
        "batch_size",
        Histogram,
        "batch_size",
        "Items per micro-batch handed to a model detector's batch function.",
        ("detector",),
        _BATCH_SIZE_BUCKETS,
    ),
    _Declared(
        "batch_queue_wait",
        Histogram,
        "batch_queue_wait_seconds",
        "Time an item waited in a micro-batcher queue, from submit to the start of its batch.",
        ("detector",),
        _BATCH_SECONDS_BUCKETS,
    ),
    _Declared(
        "batch_run",
        Histogram,
        "batch_run_seconds",
        "Time one micro-batch took to run (the model forward pass, off the event loop).",
        ("detector",),
        _BATCH_SECONDS_BUCKETS,
    ),
    _Declared(
        "batch_queue_depth",
        Gauge,
        "batch_queue_depth",
        "Items waiting in a micro-batcher queue (not counting the batch in flight).",
        ("detector",),
    ),
    _Declared(
        "batch_shed",
        Counter,
        "batch_shed_total",
        "Items a micro-batcher refused at once because its queue was full (load shedding).",
        ("detector",),
    ),
    _Declared(
        "stream_terminations",
        LoopCounter,
        "stream_terminations",
        "Streams stopped mid-way by an output detector.",
        ("detector",),
    ),
    _Declared(
        "streams", LoopCounter, "streams", "Streamed responses by how they ended.", ("route", "outcome")
    ),
    _Declared(
        "stream_duration",
        LoopHistogram,
        "stream_duration_seconds",
        "Duration of streamed responses.",
        ("route",),
        _STREAM_BUCKETS,
    ),
    _Declared(
        "upstream_requests",
        LoopCounter,
        "upstream_requests",
        "Requests sent upstream, by status class or failure.",
        ("upstream", "code_class"),
    ),
    _Declared(
        "upstream_duration",
        LoopHistogram,
        "upstream_duration_seconds",
        "Upstream time to response headers.",
        ("upstream",),
        _LATENCY_BUCKETS,
    ),
    _Declared(
        "strip_probes",
        LoopCounter,
        "strip_probes",
        "Perturbed copies a STRIP detector sent to the upstream (each one a billed call), by outcome.",
        ("detector", "outcome"),
    ),
    _Declared(
        "probe_duration",
        LoopHistogram,
        "probe_duration_seconds",
        "Time from sending one upstream probe (STRIP, counterfactual) to reading its answer or its "
        "failure: what a suspected request waits for.",
        ("detector",),
        _LATENCY_BUCKETS,
    ),
    _Declared(
        "behaviour_candidates",
        LoopCounter,
        "behaviour_candidates",
        "Suspected spans a behavioural detector (counterfactual) judged, by outcome: confirmed or "
        "cleared by probes, known_trigger or known_clear from its memory, unprobeable.",
        ("detector", "outcome"),
    ),
    _Declared(
        "shared_memory_errors",
        LoopCounter,
        "shared_memory_errors",
        "Writes to and syncs from a detector's memory shared across replicas (Redis or Valkey) that "
        "failed or timed out; meanwhile each replica judges from its own memory.",
        ("detector", "operation"),
    ),
    _Declared(
        "identity_changes",
        LoopCounter,
        "upstream_identity_changes",
        "Answers whose model or system_fingerprint differed from the last answer to the same route and "
        "requested model: a model swapped behind the endpoint.",
        ("route", "field"),
    ),
    _Declared("draining", Gauge, "draining", "1 while shutting down.", ()),
    _Declared("inflight", LoopGauge, "inflight_requests", "Requests in flight.", ()),
    _Declared("audit_events", LoopCounter, "audit_events", "Audit log lines written.", ()),
    _Declared(
        "audit_dropped",
        LoopCounter,
        "audit_dropped",
        "Audit log lines dropped because the writer fell behind (buffer full or I/O error).",
        (),
    ),
    _Declared(
        "reload_ok",
        Gauge,
        "config_last_reload_successful",
        "1 if the last config load or reload succeeded.",
        (),
    ),
    _Declared(
        "reloads",
        Counter,
        "config_reloads_total",
        "Config reload attempts by result (success, failure).",
        ("result",),
    ),
    _Declared(
        "reload_ts",
        Gauge,
        "config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful config load or reload.",
        (),
    ),
    _Declared("config_info", Gauge, "config_info", "The live config (value 1).", ("config_hash",)),
    _Declared(
        "build_info",
        Gauge,
        "build_info",
        "Build and runtime versions (value 1).",
        ("version", "python_version"),
    ),
)


class Metrics:
    """Holds the metric objects; components receive it instead of using globals.

    The attributes are built from :data:`METRICS`, one per row.
    """

    requests: LoopCounter
    rejected: LoopCounter
    request_duration: LoopHistogram
    overhead: LoopHistogram
    verdicts: LoopCounter
    detector_duration: LoopHistogram
    detector_score: LoopHistogram
    detector_findings: LoopCounter
    detector_errors: LoopCounter
    detector_fail_open: LoopCounter
    detector_ready: Gauge
    batch_size: Histogram
    batch_queue_wait: Histogram
    batch_run: Histogram
    batch_queue_depth: Gauge
    batch_shed: Counter
    stream_terminations: LoopCounter
    streams: LoopCounter
    stream_duration: LoopHistogram
    upstream_requests: LoopCounter
    upstream_duration: LoopHistogram
    strip_probes: LoopCounter
    probe_duration: LoopHistogram
    behaviour_candidates: LoopCounter
    shared_memory_errors: LoopCounter
    identity_changes: LoopCounter
    draining: Gauge
    inflight: LoopGauge
    audit_events: LoopCounter
    audit_dropped: LoopCounter
    reload_ok: Gauge
    reloads: Counter
    reload_ts: Gauge
    config_info: Gauge
    build_info: Gauge

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        on_loop: list[LoopCounter | LoopHistogram | LoopGauge] = []
        for declared in METRICS:
            metric = declared.build(r)
            setattr(self, declared.attr, metric)
            if isinstance(metric, LoopCounter | LoopHistogram | LoopGauge):
                on_loop.append(metric)
        r.register(LoopCollector(on_loop))
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self.build_info.labels(__version__, platform.python_version()).set(1)
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
                for outcome in ("fired", "not_fired", "skipped_by_gate", "partial", "error"):
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

    def detector_series(self, detector: str, phase: str) -> DetectorSeries:
        """One detector's duration and score series for a phase, for :class:`DetectorSeries`."""
        return DetectorSeries(
            self.detector_duration.bounds,
            self.detector_duration.counts((detector, phase)),
            self.detector_score.bounds,
            self.detector_score.counts((detector, phase)),
        )

    def count_finding(self, detector: str, phase: str, outcome: str) -> None:
        self.detector_findings.inc((detector, phase, outcome))

    def count_findings(self, labelled: Iterable[tuple[str, str, str]]) -> None:
        """:meth:`count_finding` for each ``(detector, phase, outcome)``, in one call."""
        self.detector_findings.inc_each(labelled)

    def count_detector_error(self, detector: str, kind: str) -> None:
        self.detector_errors.inc((detector, kind))

    def count_fail_open(self, detector: str, phase: str) -> None:
        self.detector_fail_open.inc((detector, phase))

    def prepare_probes(self, detector: str) -> None:
        """Touch one probing detector's series so they exist at 0 before its first probe."""
        for outcome in PROBE_OUTCOMES:
            self.strip_probes.touch((detector, outcome))
        self.probe_duration.touch((detector,))

    def observe_probe(self, detector: str, seconds: float) -> None:
        self.probe_duration.observe((detector,), seconds)

    def count_probes(self, detector: str, outcome: str, n: int = 1) -> None:
        self.strip_probes.inc((detector, outcome), n)

    def prepare_candidates(self, detector: str) -> None:
        """Touch one behavioural detector's candidate series so they exist at 0."""
        for outcome in CANDIDATE_OUTCOMES:
            self.behaviour_candidates.touch((detector, outcome))

    def count_candidates(self, detector: str, outcome: str, n: int = 1) -> None:
        self.behaviour_candidates.inc((detector, outcome), n)

    def prepare_shared_memory(self, detector: str) -> None:
        """Touch one detector's shared-memory error series so they exist at 0 before an outage."""
        for operation in SHARED_MEMORY_OPERATIONS:
            self.shared_memory_errors.touch((detector, operation))

    def count_shared_memory_error(self, detector: str, operation: str) -> None:
        self.shared_memory_errors.inc((detector, operation))

    def prepare_identity(self, routes: Iterable[str], fields: Iterable[str]) -> None:
        """Touch the identity-change series so they exist at 0 before a swap."""
        watched = tuple(fields)
        for route in routes:
            for name in watched:
                self.identity_changes.touch((route, name))

    def count_identity_change(self, route: str, field: str) -> None:
        self.identity_changes.inc((route, field))

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
