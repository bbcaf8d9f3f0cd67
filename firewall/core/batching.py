"""Micro-batching for model detectors: many concurrent requests, one forward pass.

A language-model forward pass has a fixed cost per call (framework dispatch,
weight reads, kernel launches) on top of its per-token cost, and a model
instance is generally not safe to call from several threads at once. So model
detectors do not run one forward pass per request: they hand single items to a
:class:`MicroBatcher`, which groups the items that arrive close together, runs
one synchronous batch call in its own thread, and routes each result back to
the caller that submitted it. This is the "dynamic batching" that inference
servers do in front of a model (NVIDIA Triton's dynamic batcher, TorchServe's
``batch_size`` with ``max_batch_delay``): the first item of a batch is held for
at most a short delay so that later arrivals can join it, and a batch that is
already full leaves at once. The delay is latency traded for throughput; under
load, batches fill up while the model is busy and the delay costs nothing. How
much a batch saves depends on the hardware: a GPU batch of 32 costs little
more than a batch of 1, while on CPU (docs/models.md: ~0.1 s at 1x64 tokens,
~2.9 s at 32x64) the main wins are one model call at a time and bounded,
off-loop inference.

The batcher owns grouping, off-loop execution, result routing, bounded
queueing and metrics. Padding items into tensors is the batch function's job.

Policy, in full:

* **Buckets.** With ``bucket_key`` (e.g. token length, a non-negative int),
  items only share a batch with items of the same bucket, which bounds padding
  waste. By default buckets are powers of two: keys in ``[2**(b-1), 2**b)``
  share bucket ``b`` (0 and 1 share the first), so the longest item in a batch
  is less than twice the shortest. With ``bucket_width=w``, bucket ``key // w``:
  keys in one batch differ by less than ``w``. Without ``bucket_key`` every item
  shares one bucket.
* **Size and cost.** A batch takes items from its bucket's head in arrival
  order, at most ``max_batch_size`` of them and, with ``max_batch_cost``, only
  while ``len(batch) * max(key)`` (the padded token count) stays within the
  budget. A single item over the budget still runs, alone.
* **When a batch leaves.** When a bucket can fill a batch (no further item
  would fit), or when its oldest item has waited ``max_wait_ms``, whichever
  comes first, and a batch slot is free (``max_inflight_batches``, default 1).
  Among ready buckets the one with the oldest item goes first, so no bucket
  starves.
* **Bounded queue.** At most ``max_queue`` items wait (items in flight not
  counted). Beyond that, ``submit`` raises :class:`BatcherOverloaded` at once
  and counts ``batch_shed_total``; the detector's fail mode then applies.
* **Cancellation.** A caller cancelled before its batch starts (request timeout,
  client gone) takes its item out of the queue: the batch function never sees
  it. Once started, the item runs and its result is discarded.
* **Errors.** An exception from the batch function goes to every caller of that
  batch, and the batcher carries on. A wrong number of results is a
  :class:`BatchResultError` for the whole batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from firewall.core.errors import DetectorError, DetectorUnavailable
from firewall.core.telemetry import DetectorTelemetry

__all__ = ["BatchResultError", "BatcherClosed", "BatcherOverloaded", "MicroBatcher"]

log = logging.getLogger("trigger_firewall.batching")

T = TypeVar("T")
R = TypeVar("R")


class BatcherOverloaded(DetectorUnavailable):
    """The queue was full, so the item was refused without waiting (load shedding)."""


class BatcherClosed(DetectorUnavailable):
    """The batcher is closed or closing; the item did not run."""


class BatchResultError(DetectorError):
    """The batch function broke its contract: not one result per item."""


@dataclass(slots=True, eq=False)
class _Entry(Generic[T, R]):
    """One submitted item. ``queued`` is true exactly while it sits in a bucket queue."""

    item: T
    key: int
    bucket: int
    future: asyncio.Future[R]
    enqueued: float
    queued: bool = True


class MicroBatcher(Generic[T, R]):
    """Groups concurrently submitted items into calls of a synchronous batch function.

    Invariants: ``run_batch`` only ever runs in this batcher's own threads, at
    most ``max_inflight_batches`` calls at a time; it always receives between 1
    and ``max_batch_size`` items from one bucket; every submitted item ends in
    exactly one way (its result, its batch's exception, :class:`BatcherClosed`, or
    removal because its caller was cancelled); at most ``max_queue`` items wait.
    """

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        bucket_key: Callable[[T], int] | None = None,
        bucket_width: int | None = None,
        max_batch_cost: int | None = None,
        max_inflight_batches: int = 1,
        metrics: DetectorTelemetry | None = None,
    ) -> None:
        """``name`` is the detector name (the metric label); ``max_wait_ms`` is in milliseconds;
        ``bucket_key`` returns a non-negative size (e.g. tokens); ``max_batch_cost`` is in the
        same unit, times the batch size (e.g. a padded-token budget)."""
        if max_batch_size < 1 or max_queue < 1 or max_inflight_batches < 1:
            raise ValueError("max_batch_size, max_queue and max_inflight_batches must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")
        if bucket_key is None and (bucket_width is not None or max_batch_cost is not None):
            raise ValueError("bucket_width and max_batch_cost need a bucket_key")
        if any(v is not None and v < 1 for v in (bucket_width, max_batch_cost)):
            raise ValueError("bucket_width and max_batch_cost must be at least 1")
        self.name = name
        self._run_batch = run_batch
        self._max_size = max_batch_size
        self._max_wait = max_wait_ms / 1000.0
        self._max_queue = max_queue
        self._key = bucket_key
        self._width = bucket_width
        self._max_cost = max_batch_cost
        self._metrics = metrics
        self._queues: dict[int, deque[_Entry[T, R]]] = {}
        self._depth = 0
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max_inflight_batches)
        self._executor = ThreadPoolExecutor(max_inflight_batches, thread_name_prefix=f"batcher-{name}")
        self._worker: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._closed = False
        if metrics is not None:
            metrics.prepare_batcher(name)

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (not counting those in flight)."""
        return self._depth

    @property
    def closed(self) -> bool:
        return self._closed

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker task (``submit`` also starts it on first use). Idempotent."""
        if self._closed:
            raise BatcherClosed(self.name, "batcher is closed")
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name=f"batcher-{self.name}")

    async def close(self) -> None:
        """Refuse new items, fail waiting ones, let the batch in flight finish, stop the threads.

        Idempotent. It waits as long as the in-flight batch runs: bound it with a timeout.
        """
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.wait([self._worker])
        for queue in self._queues.values():
            for entry in queue:
                entry.queued = False
                if not entry.future.done():
                    entry.future.set_exception(BatcherClosed(self.name, "batcher closed"))
        self._queues.clear()
        self._set_depth(0)
        if self._inflight:
            await asyncio.wait(set(self._inflight))
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- submitting ------------------------------------------------------------

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result from the next batch it joins.

        Raises :class:`BatcherOverloaded` at once when the queue is full,
        :class:`BatcherClosed` when closed, or whatever the batch function raised.
        """
        if self._closed:
            raise BatcherClosed(self.name, "batcher is closed")
        if self._depth >= self._max_queue:
            if self._metrics is not None:
                self._metrics.count_batch_shed(self.name)
            raise BatcherOverloaded(self.name, f"batch queue full ({self._max_queue} items)")
        if self._worker is None:
            await self.start()
        key = self._key(item) if self._key is not None else 0
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        entry = _Entry(item, key, self._bucket_of(key), future, time.monotonic())
        self._queues.setdefault(entry.bucket, deque()).append(entry)
        self._set_depth(self._depth + 1)
        self._wake.set()
        try:
            return await future
        finally:
            if entry.queued:  # our caller was cancelled before the batch started
                self._discard(entry)

    def _bucket_of(self, key: int) -> int:
        if self._width is not None:
            return key // self._width
        return max(key, 1).bit_length()

    def _discard(self, entry: _Entry[T, R]) -> None:
        queue = self._queues[entry.bucket]
        queue.remove(entry)
        if not queue:
            del self._queues[entry.bucket]
        entry.queued = False
        self._set_depth(self._depth - 1)

    # -- scheduling ------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            await self._slots.acquire()
            batch = await self._next_batch()
            self._launch(batch)

    async def _next_batch(self) -> list[_Entry[T, R]]:
        while True:
            batch, wake_at = self._take_ready(time.monotonic())
            if batch:
                return batch
            self._wake.clear()
            delay = None if wake_at is None else max(wake_at - time.monotonic(), 0.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _take_ready(self, now: float) -> tuple[list[_Entry[T, R]], float | None]:
        """Pop the next batch that may leave now, or return when one might (monotonic s)."""
        best: deque[_Entry[T, R]] | None = None
        best_count = 0
        wake_at: float | None = None
        for queue in self._queues.values():
            count, full = self._plan(queue)
            due = queue[0].enqueued + self._max_wait
            if full or due <= now:
                if best is None or queue[0].enqueued < best[0].enqueued:
                    best, best_count = queue, count
            elif wake_at is None or due < wake_at:
                wake_at = due
        if best is None:
            return [], wake_at
        batch = [best.popleft() for _ in range(best_count)]
        if not best:
            del self._queues[batch[0].bucket]
        for entry in batch:
            entry.queued = False
        self._set_depth(self._depth - len(batch))
        return batch, None

    def _plan(self, queue: deque[_Entry[T, R]]) -> tuple[int, bool]:
        """How many head items the next batch from ``queue`` takes, and whether it is full."""
        count = longest = 0
        for entry in queue:
            longer = max(longest, entry.key, 1)
            if count == self._max_size or (
                count and self._max_cost is not None and (count + 1) * longer > self._max_cost
            ):
                return count, True
            count, longest = count + 1, longer
        full = count == self._max_size or (
            self._max_cost is not None and (count + 1) * longest > self._max_cost
        )
        return count, full

    # -- running ---------------------------------------------------------------

    def _launch(self, batch: list[_Entry[T, R]]) -> None:
        """Hand the batch to the executor now, so no caller can be cancelled in between."""
        started = time.monotonic()
        if self._metrics is not None:
            self._metrics.observe_batch_start(self.name, len(batch), (started - e.enqueued for e in batch))
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self._executor, self._run_batch, [e.item for e in batch])
        task = loop.create_task(self._deliver(batch, running, started), name=f"batch-{self.name}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _deliver(
        self, batch: list[_Entry[T, R]], running: asyncio.Future[Sequence[R]], started: float
    ) -> None:
        try:
            results = await running
            if not isinstance(results, Sized) or len(results) != len(batch):
                count = len(results) if isinstance(results, Sized) else type(results).__name__
                raise BatchResultError(self.name, f"run_batch returned {count} results for {len(batch)}")
        except Exception as exc:
            log.warning("micro-batch of %d for %s failed: %s", len(batch), self.name, type(exc).__name__)
            for entry in batch:
                if not entry.future.done():  # done = its caller was cancelled
                    entry.future.set_exception(exc)
        else:
            for entry, result in zip(batch, results, strict=True):
                if not entry.future.done():
                    entry.future.set_result(result)
        finally:
            for entry in batch:  # still undone only if this task was cancelled or a BaseException hit
                if not entry.future.done():
                    entry.future.set_exception(BatcherClosed(self.name, "batch abandoned"))
            if self._metrics is not None:
                self._metrics.observe_batch_run(self.name, time.monotonic() - started)
            self._slots.release()

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        if self._metrics is not None:
            self._metrics.set_batch_queue_depth(self.name, depth)
