"""The micro-batcher: grouping, routing, waiting, bucketing, shedding, errors, cancellation, close.

Batch functions here are plain synchronous callables that record what they saw
and in which thread; a ``threading.Event`` gate holds a batch "in flight" so a
test can arrange the queue behind it deterministically.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from firewall.core.batching import BatcherClosed, BatcherOverloaded, BatchResultError, MicroBatcher
from firewall.core.errors import DetectorError, DetectorUnavailable
from firewall.observability.metrics import Metrics

Factory = Callable[..., MicroBatcher[int, Any]]


class Recorder:
    """A batch function that doubles its items and records every batch and thread it ran in."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay = delay
        self.gate = gate
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.batches.append(list(items))
            self.threads.add(threading.get_ident())
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if self.gate is not None:
                self.gate.wait(5)
            if self.delay:
                time.sleep(self.delay)
            return [2 * x for x in items]
        finally:
            with self._lock:
                self.active -= 1

    def seen(self) -> list[int]:
        return list(itertools.chain.from_iterable(self.batches))


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    made: list[MicroBatcher[int, Any]] = []

    def factory(run: Callable[[list[int]], Any], name: str = "test", **kwargs: Any) -> MicroBatcher[int, Any]:
        batcher: MicroBatcher[int, Any] = MicroBatcher(name, run, **kwargs)
        made.append(batcher)
        return batcher

    yield factory
    for batcher in made:
        await asyncio.wait_for(batcher.close(), 10)


async def until(condition: Callable[[], object], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


def sample(metrics: Metrics, name: str, detector: str = "test") -> float | None:
    return metrics.registry.get_sample_value(name, {"detector": detector})


# -- grouping and routing -----------------------------------------------------------


async def test_concurrent_submits_are_grouped(make: Factory) -> None:
    rec = Recorder(delay=0.01)
    batcher = make(rec, max_batch_size=8, max_wait_ms=20)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
    assert results == [2 * i for i in range(20)]
    assert [len(b) for b in rec.batches] == [8, 8, 4]
    assert sorted(rec.seen()) == list(range(20))


@settings(max_examples=40, deadline=None)
@given(
    items=st.lists(st.integers(0, 300), max_size=40),
    size=st.integers(1, 9),
    bucketed=st.booleans(),
    inflight=st.integers(1, 2),
)
def test_every_caller_gets_its_own_result(items: list[int], size: int, bucketed: bool, inflight: int) -> None:
    async def scenario() -> list[tuple[int, int]]:
        batcher: MicroBatcher[int, tuple[int, int]] = MicroBatcher(
            "prop",
            lambda xs: [(x, x * x) for x in xs],
            max_batch_size=size,
            max_wait_ms=1,
            bucket_key=(lambda x: x) if bucketed else None,
            max_inflight_batches=inflight,
        )
        try:
            return await asyncio.gather(*(batcher.submit(x) for x in items))
        finally:
            await batcher.close()

    assert asyncio.run(scenario()) == [(x, x * x) for x in items]


# -- waiting --------------------------------------------------------------------------


async def test_lone_item_waits_for_company_at_most_max_wait(make: Factory) -> None:
    batcher = make(Recorder(), max_batch_size=8, max_wait_ms=50)
    start = time.monotonic()
    assert await batcher.submit(3) == 6
    assert 0.045 <= time.monotonic() - start < 0.5


async def test_full_batch_leaves_without_waiting(make: Factory) -> None:
    rec = Recorder()
    batcher = make(rec, max_batch_size=4, max_wait_ms=10_000)
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(4))), 1.0)
    assert results == [0, 2, 4, 6]
    assert rec.batches == [[0, 1, 2, 3]]


# -- bucketing and cost ---------------------------------------------------------------


async def test_power_of_two_buckets_keep_lengths_apart(make: Factory) -> None:
    rec = Recorder()
    batcher = make(rec, max_batch_size=32, max_wait_ms=20, bucket_key=lambda x: x)
    items = [3, 100, 5, 120, 2, 7, 64, 127]
    assert await asyncio.gather(*(batcher.submit(i) for i in items)) == [2 * i for i in items]
    assert {frozenset(b) for b in rec.batches} == {
        frozenset({2, 3}),
        frozenset({5, 7}),
        frozenset({64, 100, 120, 127}),
    }
    assert all(max(b) < 2 * min(b) for b in rec.batches)


async def test_fixed_width_buckets(make: Factory) -> None:
    rec = Recorder()
    batcher = make(rec, max_batch_size=32, max_wait_ms=20, bucket_key=lambda x: x, bucket_width=10)
    await asyncio.gather(*(batcher.submit(i) for i in [1, 9, 10, 19, 25]))
    assert sorted(sorted(b) for b in rec.batches) == [[1, 9], [10, 19], [25]]


async def test_max_batch_cost_splits_long_items(make: Factory) -> None:
    rec = Recorder()
    batcher = make(rec, max_batch_size=32, max_wait_ms=20, bucket_key=lambda x: x, max_batch_cost=256)
    items = [100] * 5 + [5] * 6 + [300]
    await asyncio.gather(*(batcher.submit(i) for i in items))
    assert sorted(len(b) for b in rec.batches if b[0] == 100) == [1, 2, 2]
    assert [b for b in rec.batches if b[0] == 5] == [[5] * 6]
    assert [300] in rec.batches  # over budget on its own: runs alone rather than never
    assert all(len(b) * max(b) <= 256 for b in rec.batches if b != [300])


async def test_batch_full_by_cost_leaves_without_waiting(make: Factory) -> None:
    batcher = make(Recorder(), max_wait_ms=10_000, bucket_key=lambda x: x, max_batch_cost=256)
    both = await asyncio.wait_for(asyncio.gather(batcher.submit(128), batcher.submit(128)), 1.0)
    assert list(both) == [256, 256]


# -- load shedding, errors ------------------------------------------------------------


async def test_full_queue_sheds_and_counts(make: Factory) -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    metrics = Metrics()
    batcher = make(rec, max_batch_size=1, max_wait_ms=0, max_queue=2, metrics=metrics)
    first = asyncio.create_task(batcher.submit(1))
    await until(lambda: rec.batches)
    queued = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
    await until(lambda: batcher.queue_depth == 2)
    with pytest.raises(BatcherOverloaded) as refused:
        await batcher.submit(4)
    assert isinstance(refused.value, DetectorUnavailable)  # the detector's fail mode applies
    assert sample(metrics, "trigger_firewall_batch_shed_total") == 1
    assert sample(metrics, "trigger_firewall_batch_queue_depth") == 2
    gate.set()
    assert await asyncio.gather(first, *queued) == [2, 4, 6]
    assert 4 not in rec.seen()
    assert sample(metrics, "trigger_firewall_batch_queue_depth") == 0


async def test_batch_exception_reaches_only_that_batch(make: Factory) -> None:
    def run(items: list[int]) -> list[int]:
        if 1 in items:
            raise ValueError("poisoned batch")
        return [2 * x for x in items]

    batcher = make(run, max_batch_size=2, max_wait_ms=10)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert [type(r) for r in results[:2]] == [ValueError, ValueError]
    assert list(results[2:]) == [4, 6]
    assert await batcher.submit(5) == 10  # the batcher carries on


@pytest.mark.parametrize(
    "run",
    [lambda xs: xs[:-1], lambda xs: [*xs, 0], lambda xs: None],
    ids=["too_few", "too_many", "none"],
)
async def test_wrong_result_count_fails_the_batch(make: Factory, run: Callable[[list[int]], Any]) -> None:
    batcher = make(run, max_batch_size=3, max_wait_ms=10)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, BatchResultError) and isinstance(r, DetectorError) for r in results)


# -- cancellation ---------------------------------------------------------------------


async def test_cancelled_before_start_never_reaches_the_batch(make: Factory) -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    batcher = make(rec, max_batch_size=4, max_wait_ms=0)
    first = asyncio.create_task(batcher.submit(1))
    await until(lambda: rec.batches)
    doomed = asyncio.create_task(batcher.submit(99))
    kept = asyncio.create_task(batcher.submit(2))
    await until(lambda: batcher.queue_depth == 2)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    with pytest.raises(TimeoutError):  # how the pipeline bounds a detector
        async with asyncio.timeout(0.02):
            await batcher.submit(98)
    assert batcher.queue_depth == 1
    gate.set()
    assert (await first, await kept) == (2, 4)
    assert 99 not in rec.seen()
    assert 98 not in rec.seen()
    assert batcher.queue_depth == 0


async def test_cancelled_after_start_discards_result_quietly(make: Factory) -> None:
    gate = threading.Event()
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(items)
        gate.wait(5)
        if items == [1]:
            raise ValueError("nobody is listening")
        return [2 * x for x in items]

    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    batcher = make(run, max_batch_size=1, max_wait_ms=0)
    waiter = asyncio.create_task(batcher.submit(1))
    await until(lambda: calls)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.set()
    assert await batcher.submit(2) == 4
    del waiter
    await asyncio.sleep(0)
    gc.collect()  # an unretrieved future exception would be reported here
    assert unhandled == []
    assert calls == [[1], [2]]


# -- lifecycle ------------------------------------------------------------------------


async def test_close_fails_waiting_items_finishes_inflight_and_is_idempotent(make: Factory) -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    batcher = make(rec, name="closing", max_batch_size=1, max_wait_ms=0)
    inflight = asyncio.create_task(batcher.submit(1))
    await until(lambda: rec.batches)
    waiting = asyncio.create_task(batcher.submit(2))
    await until(lambda: batcher.queue_depth == 1)
    closing = asyncio.create_task(batcher.close())
    await until(waiting.done)
    with pytest.raises(BatcherClosed):
        await waiting
    await asyncio.sleep(0.02)
    assert not closing.done()  # still waiting for the batch in flight
    gate.set()
    await closing
    assert await inflight == 2
    await batcher.close()
    assert batcher.closed
    with pytest.raises(BatcherClosed):
        await batcher.submit(3)
    assert rec.batches == [[1]]
    await until(lambda: not any(t.name.startswith("batcher-closing") for t in threading.enumerate()))


async def test_close_before_start(make: Factory) -> None:
    batcher = make(Recorder())
    await batcher.close()
    await batcher.close()
    with pytest.raises(BatcherClosed):
        await batcher.submit(1)
    with pytest.raises(BatcherClosed):
        await batcher.start()


# -- off the loop ---------------------------------------------------------------------


async def test_batch_runs_off_the_event_loop_thread(make: Factory) -> None:
    rec = Recorder()
    batcher = make(rec, max_wait_ms=0)
    await batcher.start()
    assert await batcher.submit(1) == 2
    assert rec.threads
    assert threading.get_ident() not in rec.threads


async def test_event_loop_stays_responsive_during_a_slow_batch(make: Factory) -> None:
    batcher = make(Recorder(delay=0.3), max_wait_ms=0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    assert await batcher.submit(1) == 2
    task.cancel()
    assert ticks >= 10  # ~30 expected; a batch run on the loop would allow at most 1


@pytest.mark.parametrize(("inflight", "peak"), [(1, 1), (2, 2)])
async def test_inflight_batches_are_bounded(make: Factory, inflight: int, peak: int) -> None:
    rec = Recorder(delay=0.05)
    batcher = make(rec, max_batch_size=1, max_wait_ms=0, max_inflight_batches=inflight)
    await asyncio.gather(*(batcher.submit(i) for i in range(4)))
    assert rec.peak == peak


# -- metrics and settings -------------------------------------------------------------


async def test_metrics_describe_batches(make: Factory) -> None:
    metrics = Metrics()
    batcher = make(Recorder(delay=0.01), max_batch_size=8, max_wait_ms=10, metrics=metrics)
    assert sample(metrics, "trigger_firewall_batch_shed_total") == 0  # pre-initialised
    assert sample(metrics, "trigger_firewall_batch_size_count") == 0
    await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    assert sample(metrics, "trigger_firewall_batch_size_count") == 1
    assert sample(metrics, "trigger_firewall_batch_size_sum") == 5
    assert sample(metrics, "trigger_firewall_batch_queue_wait_seconds_count") == 5
    assert (sample(metrics, "trigger_firewall_batch_queue_wait_seconds_sum") or 0) >= 5 * 0.009
    assert sample(metrics, "trigger_firewall_batch_run_seconds_count") == 1
    assert (sample(metrics, "trigger_firewall_batch_run_seconds_sum") or 0) >= 0.009
    assert sample(metrics, "trigger_firewall_batch_queue_depth") == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"max_queue": 0},
        {"max_inflight_batches": 0},
        {"max_wait_ms": -1},
        {"bucket_width": 8},
        {"max_batch_cost": 64},
        {"bucket_key": len, "bucket_width": 0},
        {"bucket_key": len, "max_batch_cost": 0},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        MicroBatcher("bad", Recorder(), **kwargs)
