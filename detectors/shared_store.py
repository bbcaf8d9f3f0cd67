"""What every detector memory shared across replicas through Redis or Valkey has in common.

Why this exists
---------------
A platform runs one firewall sidecar per pod, many pods. A detector that remembers across
requests (``counterfactual``'s proven triggers, ``recurring_sentences``' sentence counts) would
remember per pod, and an attacker who spreads requests over the pods meets a memory that has
never seen them. Each such detector can carry its memory between replicas through one store;
what the carrying has in common lives here, so the detectors agree on it:

* the ``params.shared`` block (:class:`SharedMemoryParams`): the store's URL and the hashing
  secret come from environment variables, never from the config file;
* the hashing key (:func:`shared_key`): a hash from one replica means something on another only
  if both hash with the same key, so a shared memory derives it from the deployment's secret,
  personalised per detector type so one secret serves several memories without their hashes
  meeting;
* the client (:func:`open_store`): redis-py's asyncio client, its own retries off, every
  operation bounded by ``timeout_seconds``;
* the background task (:class:`SharedStoreTask`): one per detector, started and stopped with it.
  The hot path never waits on the store: it reads and writes the replica's own memory, and the
  task carries changes between that memory and the store. A failed or timed-out operation is
  counted in ``trigger_firewall_shared_memory_errors_total{detector,operation}`` and the outage
  is logged once when it starts and once when it ends, not once a request; meanwhile each
  replica judges from its own memory.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from pydantic import Field

from detectors.base import DetectorParams
from firewall.core.telemetry import DetectorTelemetry

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "MIN_KEY_CHARS",
    "SharedMemoryParams",
    "SharedStoreTask",
    "connect",
    "open_store",
    "shared_key",
]

T = TypeVar("T")

#: Characters a shared key must have at least (``openssl rand -hex 32`` gives 64).
MIN_KEY_CHARS = 32


class SharedMemoryParams(DetectorParams):
    """``params.shared`` of a detector whose memory is shared across replicas: where, and how often."""

    url_env: str = Field(
        min_length=1,
        description="Environment variable holding the store's URL (redis://, rediss:// or unix://), "
        "so its address and password stay out of the config file.",
    )
    key_env: str = Field(
        min_length=1,
        description=f"Environment variable holding the secret every replica hashes with (at least "
        f"{MIN_KEY_CHARS} characters, e.g. `openssl rand -hex 32`): the same on every replica.",
    )
    prefix: str = Field(
        "trigger-firewall",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Prefix of the store's keys (one deployment's replicas share one prefix).",
    )
    sync_seconds: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="How often each replica writes what it learnt and pulls what the others wrote.",
    )
    timeout_seconds: float = Field(
        0.25, gt=0, le=30, description="Bound on one write or one sync; verdicts never wait on it."
    )


def shared_key(secret: str | None, env: str, *, person: bytes) -> bytes:
    """The BLAKE2 key every replica derives from the secret in ``env``.

    Raises ``ValueError`` saying what is wrong when the secret is missing or short: with a
    random key per replica the shared hashes would match nothing, and with a guessable one
    they could be tested against guessed words. The secret is hashed, personalised with
    ``person`` (at most 16 bytes, one per kind of memory), rather than used as it is, so any
    string works and one secret gives each memory a key of its own.
    """
    if not secret:
        raise ValueError(f"shared memory needs the hashing key in ${env}, which is not set")
    if len(secret) < MIN_KEY_CHARS:
        raise ValueError(f"${env} holds {len(secret)} characters; the shared key needs {MIN_KEY_CHARS}")
    return hashlib.blake2b(secret.encode("utf-8", "surrogatepass"), digest_size=32, person=person).digest()


def open_store(url: str, timeout_seconds: float, *, decode_responses: bool = True) -> Redis:
    """A client for the store at ``url`` (not connected yet: the first operation connects).

    redis-py is an optional dependency (the ``shared`` extra), imported only here. Its own
    retries are off: one operation is bounded by ``timeout_seconds`` as a whole, and the next
    tick is the retry. ``decode_responses=False`` for a memory that stores packed bytes.
    """
    try:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError as exc:
        raise RuntimeError("shared memory needs redis-py: pip install 'trigger-firewall[shared]'") from exc
    return Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        decode_responses=decode_responses,
    )


def connect(
    shared: SharedMemoryParams, *, person: bytes, decode_responses: bool = True
) -> tuple[bytes, Redis]:
    """The hashing key and a client, from the environment variables ``shared`` names.

    Raises ``ValueError`` (or ``RuntimeError`` without redis-py) with a message fit for a
    ``load_error``: it names the variables, never their values (the URL may hold a password).
    A store that is merely down is no error here: the first operation finds out.
    """
    key = shared_key(os.environ.get(shared.key_env), shared.key_env, person=person)
    url = os.environ.get(shared.url_env)
    if not url:
        raise ValueError(f"shared memory needs the store's URL in ${shared.url_env}, which is not set")
    try:
        client = open_store(url, shared.timeout_seconds, decode_responses=decode_responses)
    except ValueError:  # not chained: redis-py's message would quote the URL, password and all
        raise ValueError(
            f"${shared.url_env} does not hold a usable store URL (redis://, rediss:// or unix://)"
        ) from None
    return key, client


class SharedStoreTask(abc.ABC):
    """One detector's background task between its local memory and the store.

    A subclass says what one tick does (:meth:`_sync`, each store round trip wrapped in
    :meth:`operation`) and how what is queued is written (:meth:`_flush`, also tried once at
    :meth:`close`). Ticks and flushes run one at a time (a test's or close's call waits for the
    task's), every ``sync_seconds`` or sooner after :meth:`wake`. Nothing here raises into the
    detector.
    """

    def __init__(
        self,
        detector: str,
        params: SharedMemoryParams,
        client: Redis,
        *,
        log: logging.Logger,
        metrics: DetectorTelemetry | None = None,
    ) -> None:
        self.detector = detector
        self.params = params
        self._client = client
        self._log = log
        self._metrics = metrics
        self._down = False
        self._wake = asyncio.Event()
        self._tick = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        if metrics is not None:
            metrics.prepare_shared_memory(detector)

    @property
    def healthy(self) -> bool:
        """False from a failed operation until the next one succeeds."""
        return not self._down

    # ------------------------------------------------------------------ subclass side

    @abc.abstractmethod
    async def _sync(self) -> None:
        """One tick: write what is queued, pull what changed (each round trip via :meth:`operation`)."""

    @abc.abstractmethod
    async def _flush(self) -> None:
        """Write what is queued (each round trip via :meth:`operation`)."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the background task; the first tick runs at once (the store may be down)."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"{self.detector}-shared-memory")

    async def close(self) -> None:
        """Stop the task, try once more to write what is queued, and close the connection."""
        task, self._task = self._task, None
        self._stopping = True
        if task is not None:
            # The flag ends the loop at its next turn whatever an operation did with the cancel
            # (a timeout that fires as the cancel lands can turn it into a TimeoutError).
            task.cancel()
            self._wake.set()
            await asyncio.wait({task}, timeout=self.params.timeout_seconds + self.params.sync_seconds + 1)
        await self.flush()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.params.timeout_seconds):
                await self._client.aclose()

    async def sync(self) -> None:
        """One tick now (after the one in progress, if any). Never raises."""
        async with self._tick:
            await self._sync()

    async def flush(self) -> None:
        """Write what is queued now, without pulling (after the tick in progress). Never raises."""
        async with self._tick:
            await self._flush()

    def wake(self) -> None:
        """Run the next tick without waiting for ``sync_seconds`` (on the event loop's thread)."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            await self.sync()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.params.sync_seconds):
                    await self._wake.wait()
            self._wake.clear()

    async def operation(self, name: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """``call()`` within ``timeout_seconds``, or ``None`` when it failed (counted, and logged
        once per outage): a caller that must tell success apart has ``call`` return non-None.
        ``name`` is the metric's ``operation`` label: ``write`` or ``sync``."""
        try:
            async with asyncio.timeout(self.params.timeout_seconds):
                result = await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store's errors, timeouts, garbage: never the verdict's
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from exc  # a cancel the timeout swallowed
            if self._metrics is not None:
                self._metrics.count_shared_memory_error(self.detector, name)
            if not self._down:
                self._down = True
                self._log.warning(
                    "detector %s: shared memory unavailable (%s failed: %s); each replica judges "
                    "from its own memory until it is back",
                    self.detector,
                    name,
                    type(exc).__name__ if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}",
                )
            return None
        if self._down:
            self._down = False
            self._log.info("detector %s: shared memory is back", self.detector)
        return result
