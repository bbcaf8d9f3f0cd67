"""Unit tests for firewall/screening/pipeline.py: errors as findings, timeouts, gating, metrics."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

import pytest

from detectors.base import Detector, Finding, FindingStatus, Phase, Sample, Segment
from firewall.core.types import Action, Cost
from firewall.observability.metrics import Metrics
from firewall.screening.pipeline import Pipeline
from firewall.screening.policy import DetectorRule

Behaviour = Callable[[Sequence[Sample]], Awaitable[object]]


class Scripted(Detector):
    """A detector whose ``score`` runs the coroutine function it was given."""

    kind = "test_scripted"

    def __init__(self, name: str, behaviour: Behaviour, *, ready: bool = True) -> None:
        super().__init__(name)
        self._behaviour = behaviour
        self._ready = ready
        self.calls = 0
        self.batches: list[Sequence[Sample]] = []

    async def score(self, batch: Sequence[Sample]) -> list[Finding]:
        self.calls += 1
        self.batches.append(batch)
        return await self._behaviour(batch)  # type: ignore[return-value]


def returns(*findings: object) -> Behaviour:
    async def behaviour(batch: Sequence[Sample]) -> object:
        return list(findings)

    return behaviour


def scores(value: float, *reasons: str) -> Behaviour:
    return returns(Finding(detector="", score=value, reasons=reasons))


def raises(exc: BaseException) -> Behaviour:
    async def behaviour(batch: Sequence[Sample]) -> object:
        raise exc

    return behaviour


def sleeps(seconds: float) -> Behaviour:
    async def behaviour(batch: Sequence[Sample]) -> object:
        await asyncio.sleep(seconds)
        return [Finding(detector="", score=0.0)]

    return behaviour


def rule(
    name: str, *, timeout: float = 0.25, gate: tuple[str, float] | None = None, cost: Cost = Cost.CHEAP
) -> DetectorRule:
    """A rule; ``gate`` is one gate detector and the score that opens it."""
    return DetectorRule(
        detector=name,
        threshold=0.5,
        action=Action.BLOCK,
        timeout_seconds=timeout,
        fail_closed=False,
        cost=cost,
        gates=(gate,) if gate is not None else None,
    )


def sample(phase: Phase = Phase.INPUT) -> Sample:
    return Sample(
        request_id="req-1",
        phase=phase,
        route="chat",
        segments=(Segment("user", "hello there", "/messages/0/content"),),
        model="m",
    )


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def errors(metrics: Metrics, detector: str, kind: str) -> float:
    value = metrics.registry.get_sample_value(
        "trigger_firewall_detector_errors_total", {"detector": detector, "kind": kind}
    )
    return value or 0.0


def score_count(metrics: Metrics, detector: str, phase: str = "input") -> float:
    value = metrics.registry.get_sample_value(
        "trigger_firewall_detector_score_count", {"detector": detector, "phase": phase}
    )
    return value or 0.0


def duration_count(metrics: Metrics, detector: str, phase: str = "input") -> float:
    value = metrics.registry.get_sample_value(
        "trigger_firewall_detector_duration_seconds_count", {"detector": detector, "phase": phase}
    )
    return value or 0.0


# --------------------------------------------------------------------------- single detector


async def test_no_rules_no_findings(metrics: Metrics) -> None:
    assert await Pipeline({}, metrics).run([], sample()) == []


async def test_ok_finding_is_normalised(metrics: Metrics) -> None:
    det = Scripted("a", scores(0.7, "zero_width"))
    s = sample()
    (finding,) = await Pipeline({"a": det}, metrics).run([rule("a")], s)
    assert finding.detector == "a"  # filled in from the rule when the detector leaves it empty
    assert finding.status is FindingStatus.OK
    assert finding.score == 0.7
    assert finding.reasons == ("zero_width",)
    assert finding.error is None
    assert finding.duration_seconds >= 0.0
    assert det.calls == 1
    assert list(det.batches[0]) == [s]
    assert score_count(metrics, "a") == 1
    assert duration_count(metrics, "a") == 1
    assert errors(metrics, "a", "exception") == 0


async def test_detector_name_is_overwritten_with_the_configured_name() -> None:
    det = Scripted("configured", returns(Finding(detector="some_kind", score=0.2)))
    (finding,) = await Pipeline({"configured": det}).run([rule("configured")], sample())
    assert finding.detector == "configured"
    assert finding.score == 0.2


@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0])
async def test_boundary_scores_are_valid(value: float) -> None:
    det = Scripted("a", scores(value))
    (finding,) = await Pipeline({"a": det}).run([rule("a")], sample())
    assert finding.status is FindingStatus.OK
    assert finding.score == float(value)
    assert isinstance(finding.score, float)


@pytest.mark.parametrize(
    ("exc", "name"),
    [
        (RuntimeError("model exploded"), "RuntimeError"),
        (ValueError("bad"), "ValueError"),
        (KeyError("k"), "KeyError"),
        (ZeroDivisionError(), "ZeroDivisionError"),
    ],
)
async def test_raising_detector_becomes_error_finding(metrics: Metrics, exc: Exception, name: str) -> None:
    det = Scripted("a", raises(exc))
    (finding,) = await Pipeline({"a": det}, metrics).run([rule("a")], sample())
    assert finding.detector == "a"
    assert finding.status is FindingStatus.ERROR
    assert finding.error == name
    assert finding.score == 0.0
    assert errors(metrics, "a", "exception") == 1
    assert errors(metrics, "a", "timeout") == 0
    assert score_count(metrics, "a") == 0
    assert duration_count(metrics, "a") == 1


async def test_raised_message_is_not_copied_into_the_finding() -> None:
    # The message may quote the prompt; only the exception's type is kept.
    det = Scripted("a", raises(RuntimeError("secret prompt text")))
    (finding,) = await Pipeline({"a": det}).run([rule("a")], sample())
    assert "secret" not in (finding.error or "")


async def test_detector_raising_cancelled_error_itself_is_an_error_finding() -> None:
    # E.g. a micro-batcher that cancels its pending futures on close(): the request
    # itself was not cancelled, so this must not escape the pipeline.
    det = Scripted("a", raises(asyncio.CancelledError()))
    (finding,) = await Pipeline({"a": det}).run([rule("a")], sample())
    assert finding.status is FindingStatus.ERROR


async def test_outer_cancellation_still_propagates() -> None:
    det = Scripted("a", sleeps(5))
    task = asyncio.ensure_future(Pipeline({"a": det}).run([rule("a", timeout=5)], sample()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_slow_detector_times_out(metrics: Metrics) -> None:
    loop = asyncio.get_running_loop()
    det = Scripted("slow", sleeps(5))
    started = loop.time()
    (finding,) = await Pipeline({"slow": det}, metrics).run([rule("slow", timeout=0.05)], sample())
    elapsed = loop.time() - started
    assert finding.status is FindingStatus.TIMEOUT
    assert finding.error == "timeout"
    assert finding.detector == "slow"
    assert elapsed < 0.5
    assert errors(metrics, "slow", "timeout") == 1
    assert errors(metrics, "slow", "exception") == 0


async def test_detector_within_timeout_is_ok() -> None:
    det = Scripted("a", sleeps(0.01))
    (finding,) = await Pipeline({"a": det}).run([rule("a", timeout=0.4)], sample())
    assert finding.status is FindingStatus.OK
    assert finding.duration_seconds >= 0.005


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        pytest.param(scores(1.5), "score outside [0, 1]", id="score-1.5"),
        pytest.param(scores(-0.01), "score outside [0, 1]", id="score-negative"),
        pytest.param(scores(math.nan), "score outside [0, 1]", id="score-nan"),
        pytest.param(scores(math.inf), "score outside [0, 1]", id="score-inf"),
        pytest.param(returns(), "detector returned a malformed result", id="no-findings"),
        pytest.param(
            returns(Finding("", 0.1), Finding("", 0.2)),
            "detector returned a malformed result",
            id="two-findings",
        ),
        pytest.param(returns("not a finding"), "detector returned a malformed result", id="wrong-type"),
        pytest.param(returns(None), "detector returned a malformed result", id="none-item"),
    ],
)
async def test_broken_results_become_error_findings(
    metrics: Metrics, behaviour: Behaviour, error: str
) -> None:
    det = Scripted("a", behaviour)
    (finding,) = await Pipeline({"a": det}, metrics).run([rule("a")], sample())
    assert finding.status is FindingStatus.ERROR
    assert finding.error == error
    assert finding.score == 0.0
    assert errors(metrics, "a", "exception") == 1
    assert score_count(metrics, "a") == 0


@pytest.mark.parametrize("result", [None, (Finding("", 0.1),), {"score": 0.1}, Finding("", 0.1)])
async def test_non_list_results_are_malformed(result: object) -> None:
    async def behaviour(batch: Sequence[Sample]) -> object:
        return result

    det = Scripted("a", behaviour)
    (finding,) = await Pipeline({"a": det}).run([rule("a")], sample())
    assert finding.status is FindingStatus.ERROR
    assert finding.error == "detector returned a malformed result"


async def test_detector_reporting_its_own_error(metrics: Metrics) -> None:
    det = Scripted("a", returns(Finding.failed("", FindingStatus.ERROR, "tokenizer_failed")))
    (finding,) = await Pipeline({"a": det}, metrics).run([rule("a")], sample())
    assert finding.status is FindingStatus.ERROR
    assert finding.error == "tokenizer_failed"
    assert finding.detector == "a"
    assert errors(metrics, "a", "exception") == 1


async def test_not_ready_detector(metrics: Metrics) -> None:
    det = Scripted("a", scores(0.9), ready=False)
    (finding,) = await Pipeline({"a": det}, metrics).run([rule("a")], sample())
    assert finding.status is FindingStatus.ERROR
    assert finding.error == "detector not ready"
    assert det.calls == 0
    assert errors(metrics, "a", "unavailable") == 1


async def test_a_model_refused_by_its_pins_says_so(metrics: Metrics) -> None:
    det = Scripted("a", scores(0.9), ready=False)
    det.load_reason = "artefact_mismatch"  # type: ignore[attr-defined]  # as STRIP and perplexity set it
    (finding,) = await Pipeline({"a": det}, metrics).run([rule("a")], sample())
    assert finding.error == "detector not ready: artefact_mismatch"
    assert errors(metrics, "a", "artefact_mismatch") == 1


async def test_missing_detector(metrics: Metrics) -> None:
    (finding,) = await Pipeline({}, metrics).run([rule("ghost")], sample())
    assert finding.detector == "ghost"
    assert finding.status is FindingStatus.ERROR
    assert finding.error == "detector not ready"
    assert errors(metrics, "ghost", "unavailable") == 1


async def test_started_then_closed_detector_is_not_ready() -> None:
    det = Scripted("a", scores(0.1), ready=False)
    await det.start()
    (finding,) = await Pipeline({"a": det}).run([rule("a")], sample())
    assert finding.status is FindingStatus.OK
    await det.close()
    (finding,) = await Pipeline({"a": det}).run([rule("a")], sample())
    assert finding.error == "detector not ready"


async def test_without_metrics_nothing_breaks() -> None:
    det = Scripted("a", raises(RuntimeError()))
    (finding,) = await Pipeline({"a": det}).run([rule("a")], sample())
    assert finding.status is FindingStatus.ERROR


async def test_output_phase_metrics_label(metrics: Metrics) -> None:
    det = Scripted("a", scores(0.3))
    await Pipeline({"a": det}, metrics).run([rule("a")], sample(Phase.OUTPUT))
    assert score_count(metrics, "a", "output") == 1
    assert score_count(metrics, "a", "input") == 0


# --------------------------------------------------------------------------- several detectors


async def test_one_finding_per_rule_in_rule_order(metrics: Metrics) -> None:
    dets = {
        "a": Scripted("a", scores(0.1)),
        "b": Scripted("b", raises(RuntimeError())),
        "c": Scripted("c", sleeps(5)),
        "d": Scripted("d", scores(0.9)),
    }
    rules = [rule("a"), rule("b"), rule("c", timeout=0.05), rule("d")]
    findings = await Pipeline(dets, metrics).run(rules, sample())
    assert [f.detector for f in findings] == ["a", "b", "c", "d"]
    assert [f.status for f in findings] == [
        FindingStatus.OK,
        FindingStatus.ERROR,
        FindingStatus.TIMEOUT,
        FindingStatus.OK,
    ]


async def test_ungated_detectors_run_concurrently() -> None:
    # Each detector waits for the other to have started: only possible if they run together.
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    def meet(me: str, other: str) -> Behaviour:
        async def behaviour(batch: Sequence[Sample]) -> object:
            started[me].set()
            await started[other].wait()
            return [Finding("", 0.0)]

        return behaviour

    dets = {"a": Scripted("a", meet("a", "b")), "b": Scripted("b", meet("b", "a"))}
    findings = await Pipeline(dets).run([rule("a", timeout=0.3), rule("b", timeout=0.3)], sample())
    assert [f.status for f in findings] == [FindingStatus.OK, FindingStatus.OK]


# --------------------------------------------------------------------------- gating


def gate_skips(metrics: Metrics, detector: str) -> float:
    value = metrics.registry.get_sample_value(
        "trigger_firewall_detector_findings_total",
        {"detector": detector, "phase": "input", "outcome": "skipped_by_gate"},
    )
    return value or 0.0


GATED_RULES = [rule("cheap"), rule("heavy", gate=("cheap", 0.5), cost=Cost.EXPENSIVE)]


@pytest.mark.parametrize(
    ("gate_behaviour", "runs"),
    [
        pytest.param(scores(0.0), False, id="gate-zero"),
        pytest.param(scores(0.49), False, id="gate-below"),
        pytest.param(scores(0.5), True, id="gate-at-min-score"),
        pytest.param(scores(0.95), True, id="gate-high"),
        pytest.param(raises(RuntimeError()), True, id="gate-raised"),
        pytest.param(sleeps(5), True, id="gate-timeout"),
        pytest.param(scores(1.5), True, id="gate-bad-score"),
    ],
)
async def test_gate(metrics: Metrics, gate_behaviour: Behaviour, runs: bool) -> None:
    cheap = Scripted("cheap", gate_behaviour)
    heavy = Scripted("heavy", scores(0.8))
    rules = [rule("cheap", timeout=0.05), GATED_RULES[1]]
    findings = await Pipeline({"cheap": cheap, "heavy": heavy}, metrics).run(rules, sample())
    assert [f.detector for f in findings] == ["cheap", "heavy"]
    heavy_finding = findings[1]
    if runs:
        assert heavy.calls == 1
        assert heavy_finding.status is FindingStatus.OK
        assert heavy_finding.score == 0.8
        assert gate_skips(metrics, "heavy") == 0
    else:
        assert heavy.calls == 0
        assert heavy_finding.status is FindingStatus.SKIPPED
        assert heavy_finding.score == 0.0
        assert gate_skips(metrics, "heavy") == 1
        assert duration_count(metrics, "heavy") == 0


async def test_gate_not_in_this_phase_runs_the_gated_detector() -> None:
    heavy = Scripted("heavy", scores(0.8))
    findings = await Pipeline({"heavy": heavy}).run([GATED_RULES[1]], sample())
    assert heavy.calls == 1
    assert [f.status for f in findings] == [FindingStatus.OK]


async def test_gate_not_ready_runs_the_gated_detector() -> None:
    cheap = Scripted("cheap", scores(0.0), ready=False)
    heavy = Scripted("heavy", scores(0.8))
    findings = await Pipeline({"cheap": cheap, "heavy": heavy}).run(GATED_RULES, sample())
    assert heavy.calls == 1
    assert [f.status for f in findings] == [FindingStatus.ERROR, FindingStatus.OK]


async def test_gated_detector_runs_after_its_gate() -> None:
    order: list[str] = []

    def record(name: str, value: float) -> Behaviour:
        async def behaviour(batch: Sequence[Sample]) -> object:
            order.append(name)
            return [Finding("", value)]

        return behaviour

    dets = {
        "cheap": Scripted("cheap", record("cheap", 0.9)),
        "heavy": Scripted("heavy", record("heavy", 0.1)),
    }
    # Gated rule listed first: the pipeline must still wait for the gate's score.
    await Pipeline(dets).run([GATED_RULES[1], GATED_RULES[0]], sample())
    assert order == ["cheap", "heavy"]


async def test_mixed_gated_results() -> None:
    dets = {
        "cheap": Scripted("cheap", scores(0.2)),
        "skipped": Scripted("skipped", scores(0.9)),
        "ran": Scripted("ran", scores(0.9)),
    }
    rules = [rule("cheap"), rule("skipped", gate=("cheap", 0.5)), rule("ran", gate=("cheap", 0.1))]
    findings = await Pipeline(dets).run(rules, sample())
    by_name = {f.detector: f for f in findings}
    assert len(findings) == 3
    assert by_name["skipped"].status is FindingStatus.SKIPPED
    assert by_name["ran"].status is FindingStatus.OK
    assert dets["skipped"].calls == 0
    assert dets["ran"].calls == 1


@pytest.mark.parametrize(
    ("scores_of", "runs"),
    [
        pytest.param({"rare": 0.1, "tags": 0.9}, True, id="the-second-gate-opens-it"),
        pytest.param({"rare": 0.9, "tags": 0.1}, True, id="the-first-gate-opens-it"),
        pytest.param({"rare": 0.1, "tags": 0.1}, False, id="neither"),
        pytest.param({"rare": 0.1}, False, id="a-gate-missing-here-does-not-open-it"),
    ],
)
async def test_a_gate_of_several_detectors_opens_on_any(scores_of: dict[str, float], runs: bool) -> None:
    dets: dict[str, Scripted] = {name: Scripted(name, scores(v)) for name, v in scores_of.items()}
    dets["proof"] = Scripted("proof", scores(0.8))
    gated = replace(rule("proof", cost=Cost.EXPENSIVE), gates=(("rare", 0.5), ("tags", 0.5)))
    rules = [rule(name) for name in scores_of] + [gated]
    findings = await Pipeline(dets).run(rules, sample())
    assert dets["proof"].calls == (1 if runs else 0)
    proof = next(f for f in findings if f.detector == "proof")
    if runs:
        # What the first stage found goes along to the gated detector.
        ((seen,),) = dets["proof"].batches
        assert {f.detector for f in seen.evidence} == set(scores_of)
    else:
        assert proof.status is FindingStatus.SKIPPED
