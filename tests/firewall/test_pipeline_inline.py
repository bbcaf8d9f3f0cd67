"""Inline (synchronous) detectors in the pipeline: same contract, no task or timer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from detectors.base import Finding, FindingStatus, InlineDetector, Phase, Sample, Segment
from firewall.core.types import Action, Cost
from firewall.observability.metrics import Metrics
from firewall.screening.pipeline import Pipeline
from firewall.screening.policy import DetectorRule


class Inline(InlineDetector):
    kind = "test_inline"
    phases = frozenset({Phase.INPUT})

    def __init__(self, name: str, result: object = None, raises: bool = False) -> None:
        super().__init__(name)
        self.result = result
        self.raises = raises
        self.calls = 0

    def score_inline(self, batch: Sequence[Sample]) -> list[Finding]:
        self.calls += 1
        if self.raises:
            raise ValueError("bad input")
        if self.result is not None:
            return self.result  # type: ignore[return-value]
        return [Finding(self.name, 0.75, reasons=("x",)) for _ in batch]


def rule(name: str, timeout: float = 0.1) -> DetectorRule:
    return DetectorRule(
        detector=name,
        threshold=0.5,
        action=Action.BLOCK,
        timeout_seconds=timeout,
        fail_closed=False,
        cost=Cost.CHEAP,
    )


SAMPLE = Sample("r1", Phase.INPUT, "chat", (Segment("user", "hello"),))


async def start(det: Inline) -> Inline:
    await det.start()
    return det


async def test_inline_detector_scores_and_records_metrics() -> None:
    metrics = Metrics()
    det = await start(Inline("a"))
    (finding,) = await Pipeline({"a": det}, metrics).run((rule("a"),), SAMPLE)
    assert finding.status is FindingStatus.OK
    assert finding.score == 0.75
    assert finding.detector == "a"
    assert finding.duration_seconds > 0
    assert det.calls == 1
    count = metrics.registry.get_sample_value(
        "trigger_firewall_detector_duration_seconds_count", {"detector": "a", "phase": "input"}
    )
    assert count == 1


async def test_inline_detector_raising_is_an_error_finding() -> None:
    metrics = Metrics()
    det = await start(Inline("a", raises=True))
    (finding,) = await Pipeline({"a": det}, metrics).run((rule("a"),), SAMPLE)
    assert finding.status is FindingStatus.ERROR
    assert finding.error == "ValueError"
    assert (
        metrics.registry.get_sample_value(
            "trigger_firewall_detector_errors_total", {"detector": "a", "kind": "exception"}
        )
        == 1
    )


@pytest.mark.parametrize(
    "result",
    [[], [Finding("a", 1.5)], [Finding("a", float("nan"))], "nope", [Finding("a", 0.1), Finding("a", 0.2)]],
)
async def test_inline_detector_breaking_the_contract_is_an_error(result: object) -> None:
    det = await start(Inline("a", result=result))
    (finding,) = await Pipeline({"a": det}).run((rule("a"),), SAMPLE)
    assert finding.status is FindingStatus.ERROR


async def test_inline_detector_async_score_matches_inline() -> None:
    det = await start(Inline("a"))
    assert await det.score((SAMPLE,)) == det.score_inline((SAMPLE,))


# ---------------------------------------------------------------- long samples leave the event loop


class Where(InlineDetector):
    """Records which thread scored each sample; can hold a call until released."""

    kind = "test_where"
    phases = frozenset({Phase.INPUT})

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.threads: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def score_inline(self, batch: Sequence[Sample]) -> list[Finding]:
        self.entered.set()
        self.hold.wait(5)
        self.threads.append(threading.get_ident())
        return [Finding(self.name, 0.1) for _ in batch]


LONG = Sample("r2", Phase.INPUT, "chat", (Segment("user", "word " * 20),))


async def test_a_sample_over_the_inline_limit_is_scored_off_the_event_loop() -> None:
    det = await start(Where("w"))  # type: ignore[arg-type]
    pipeline = Pipeline({"w": det}, Metrics(), inline_max_chars=50)
    loop_thread = threading.get_ident()
    (short,) = await pipeline.run((rule("w", timeout=5),), SAMPLE)
    (long,) = await pipeline.run((rule("w", timeout=5),), LONG)
    assert short.status is long.status is FindingStatus.OK
    assert det.threads[0] == loop_thread
    assert det.threads[1] != loop_thread


async def test_while_a_worker_scores_a_long_sample_short_ones_wait_off_the_loop() -> None:
    det = await start(Where("w"))  # type: ignore[arg-type]
    pipeline = Pipeline({"w": det}, Metrics(), inline_max_chars=50)
    det.hold.clear()
    long_task = asyncio.create_task(pipeline.run((rule("w", timeout=5),), LONG))
    await asyncio.to_thread(det.entered.wait, 5)  # the worker holds the detector now
    short_task = asyncio.create_task(pipeline.run((rule("w", timeout=5),), SAMPLE))
    await asyncio.sleep(0.05)
    assert not short_task.done()  # queued behind the long one, and the loop still runs
    det.hold.set()
    await asyncio.gather(long_task, short_task)
    assert len(det.threads) == 2
    assert threading.get_ident() not in det.threads  # neither ran on the event loop


class ConcurrentWhere(Where):
    """Holds only long samples, so a short one can run while a long one is held."""

    concurrent_safe = True

    def score_inline(self, batch: Sequence[Sample]) -> list[Finding]:
        if batch[0].chars > 50:
            return super().score_inline(batch)
        self.threads.append(threading.get_ident())
        return [Finding(self.name, 0.1) for _ in batch]


async def test_a_concurrent_safe_detector_scores_short_samples_on_the_loop_meanwhile() -> None:
    det = await start(ConcurrentWhere("w"))  # type: ignore[arg-type]
    pipeline = Pipeline({"w": det}, Metrics(), inline_max_chars=50)
    det.hold.clear()
    long_task = asyncio.create_task(pipeline.run((rule("w", timeout=5),), LONG))
    await asyncio.to_thread(det.entered.wait, 5)  # a worker is inside the long call now
    (short,) = await pipeline.run((rule("w", timeout=5),), SAMPLE)
    assert not long_task.done()
    assert short.status is FindingStatus.OK
    assert det.threads == [threading.get_ident()]  # on the event loop, not behind the long one
    det.hold.set()
    await long_task
    assert len(det.threads) == 2


def test_the_built_in_cheap_detectors_declare_whether_they_are_concurrent_safe() -> None:
    from detectors.context_tags import ContextTagsDetector
    from detectors.invisible_chars.detector import InvisibleCharsDetector
    from detectors.rare_tokens.detector import RareTokensDetector
    from detectors.recurring_sentences import RecurringSentencesDetector

    assert InvisibleCharsDetector.concurrent_safe
    assert ContextTagsDetector.concurrent_safe
    assert RareTokensDetector.concurrent_safe
    assert not RecurringSentencesDetector.concurrent_safe  # its memory is an ordered LRU


class Slow(Inline):
    """Spins for ``per_char`` seconds a character, and notes which thread it ran on."""

    def __init__(self, name: str, per_char: float) -> None:
        super().__init__(name)
        self.per_char = per_char
        self.threads: list[int] = []

    def score_inline(self, batch: Sequence[Sample]) -> list[Finding]:
        self.threads.append(threading.get_ident())
        end = time.perf_counter() + self.per_char * batch[0].chars
        while time.perf_counter() < end:
            pass
        return super().score_inline(batch)


def sized(chars: int) -> Sample:
    return Sample("r", Phase.INPUT, "chat", (Segment("user", "x" * chars),))


async def test_a_call_over_the_inline_budget_moves_that_size_off_the_loop() -> None:
    # 4 us a character: 10,000 characters hold the loop 40 ms, past a 20 ms budget.
    det = await start(Slow("a", 4e-6))
    other = await start(Inline("b"))
    pipeline = Pipeline({"a": det, "b": other}, inline_budget_seconds=0.02)
    loop_thread = threading.get_ident()
    rules = (rule("a", timeout=5), rule("b"))
    await pipeline.run(rules, sized(10_000))
    assert det.threads == [loop_thread]  # the first one could not be known in advance
    await pipeline.run(rules, sized(6000))  # 5,000 and more: a worker thread now
    assert det.threads[-1] != loop_thread
    await pipeline.run(rules, sized(1500))  # smaller: on the loop still (6 ms, in budget)
    assert det.threads[-1] == loop_thread
    assert other.calls == 3  # the other detector stays inline throughout
