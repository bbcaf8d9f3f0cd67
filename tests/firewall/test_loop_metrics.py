"""Loop metric families expose exactly what prometheus-client's own objects would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from firewall.observability.loop_metrics import LoopCollector, LoopCounter, LoopGauge, LoopHistogram
from firewall.observability.metrics import Metrics

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)
VALUES = (0.0005, 0.001, 0.002, 0.05, 0.5, 3.0, 99.0, 0.01)


def test_histogram_and_counter_exposition_match_prometheus_client() -> None:
    ours = CollectorRegistry()
    hist = LoopHistogram("x_seconds", "doc", ["route"], BUCKETS)
    count = LoopCounter("x_events", "doc", ["route", "action"])
    ours.register(LoopCollector([hist, count]))
    ref = CollectorRegistry()
    ref_hist = Histogram("x_seconds", "doc", ["route"], buckets=BUCKETS, registry=ref)
    ref_count = Counter("x_events_total", "doc", ["route", "action"], registry=ref)
    for v in VALUES:
        hist.observe(("chat",), v)
        ref_hist.labels("chat").observe(v)
    count.inc(("chat", "allow"))
    count.inc(("chat", "allow"), 2)
    ref_count.labels("chat", "allow").inc(3)
    ours_text = generate_latest(ours).decode().splitlines()
    ref_text = [line for line in generate_latest(ref).decode().splitlines() if "_created" not in line]
    assert sorted(ours_text) == sorted(ref_text)


def test_touched_series_exist_at_zero_and_gauge_reports_value() -> None:
    reg = CollectorRegistry()
    count = LoopCounter("y", "doc", ["k"])
    gauge = LoopGauge("g", "doc")
    reg.register(LoopCollector([count, gauge]))
    count.touch(("a",))
    gauge.value = 3
    assert reg.get_sample_value("y_total", {"k": "a"}) == 0.0
    assert reg.get_sample_value("g") == 3.0


def test_metrics_prepare_pre_initialises_request_series() -> None:
    m = Metrics()
    m.prepare(routes=["chat"], detectors=[("inv", ["input"])], upstream="default", mode="enforce")
    for action in ("allow", "log", "block", "error", "rejected"):
        labels = {"route": "chat", "action": action, "mode": "enforce"}
        assert m.registry.get_sample_value("trigger_firewall_requests_total", labels) == 0.0
    fired = {"detector": "inv", "phase": "input", "outcome": "fired"}
    assert m.registry.get_sample_value("trigger_firewall_detector_findings_total", fired) == 0.0
    m.observe_overhead("chat", "input", 0.0003)
    overhead = {"route": "chat", "phase": "input", "le": "0.0005"}
    assert m.registry.get_sample_value("trigger_firewall_overhead_seconds_bucket", overhead) == 1.0
