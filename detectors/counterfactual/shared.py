"""``counterfactual``'s memory shared across replicas, through Redis or Valkey.

Why this exists
---------------
A platform runs one firewall sidecar per pod, many pods. Each replica's
:class:`~detectors.counterfactual.memory.ProvenTriggers` remembers the triggers *it* proved;
an attacker who spreads requests over the pods would meet a memory that has never seen the
trigger on every replica but one, and pay each one's probes anew (or, with a probe budget
spent, slip through by the rule's fail mode). Sharing the proven triggers closes that.

What stays where
----------------
The hot path does not change: every request is searched synchronously in the replica's own
memory, and never waits on the store. The store only carries the memory between replicas:

* **write**: a trigger proven here is queued (:meth:`SharedProvenTriggers.publish`, no I/O)
  and the background task writes it at once, within ``timeout_seconds``;
* **sync**: every ``sync_seconds`` the task asks whether anything changed (one ``GET`` of a
  random token every write replaces) and only then pulls the live confirmations and merges
  them into the local memory with the TTL they have left.

One sorted set per detector holds the confirmations, scored by their expiry time (milliseconds
on the store's clock, read with ``TIME`` at each sync, so replicas whose clocks differ agree on
when a trigger expires). A member is ``<key hex>:<first word hex>:<words>:<score>``: the keyed
hashes the local memory uses, never text. Expired members are trimmed at every write, the set
is cut to ``cache_size`` members, and the keys themselves expire a TTL after the last write.

Why a key from configuration
----------------------------
A hash from one replica means something on another only if both hash with the same key, so a
shared memory takes its BLAKE2 key from an environment variable (``key_env``), never a random
one; and the key is what keeps the stored hashes from being tested against guessed words by
whoever can read the store. A missing or short key refuses to start (see
:func:`shared_key`).

When the store is down or slow
------------------------------
Each replica goes on judging from its own memory: a failed or timed-out write stays queued
(bounded) and is retried at the next tick; a failed sync is retried at the next one. Each
failure counts in ``trigger_firewall_shared_memory_errors_total{detector,operation}``, and
one warning is logged when an outage starts, one line when it ends, not one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

from pydantic import Field

from detectors.base import DetectorParams
from detectors.counterfactual.memory import MAX_WORDS, ProvenRecord, ProvenTriggers
from firewall.core.telemetry import DetectorTelemetry

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["MIN_KEY_CHARS", "SharedMemoryParams", "SharedProvenTriggers", "open_store", "shared_key"]

log = logging.getLogger("trigger_firewall.detectors.counterfactual.shared")

#: Characters a shared key must have at least (``openssl rand -hex 32`` gives 64).
MIN_KEY_CHARS = 32
#: Confirmations waiting to be written while the store is down; the oldest go first.
MAX_OUTBOX = 1024
_MEMBER = re.compile(r"([0-9a-f]{32}):([0-9a-f]{32}):(\d{1,3}):(\d(?:\.\d{1,6})?)")


class SharedMemoryParams(DetectorParams):
    """``params.shared`` of a ``counterfactual`` detector: where its memory is shared."""

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
        1.0, gt=0, le=3600, description="How often each replica pulls the others' confirmations."
    )
    timeout_seconds: float = Field(
        0.25, gt=0, le=30, description="Bound on one write or one sync; verdicts never wait on it."
    )


def shared_key(secret: str | None, env: str) -> bytes:
    """The BLAKE2 key every replica derives from the secret in ``env``.

    Raises ``ValueError`` saying what is wrong when the secret is missing or short: with a
    random key per replica the shared hashes would match nothing, and with a guessable one
    they could be tested against guessed words. The secret is hashed (personalised) rather
    than used as it is, so any string works and the key is used for nothing else.
    """
    if not secret:
        raise ValueError(f"shared memory needs the hashing key in ${env}, which is not set")
    if len(secret) < MIN_KEY_CHARS:
        raise ValueError(f"${env} holds {len(secret)} characters; the shared key needs {MIN_KEY_CHARS}")
    return hashlib.blake2b(
        secret.encode("utf-8", "surrogatepass"), digest_size=32, person=b"tf-cf-proven"
    ).digest()


def open_store(url: str, timeout_seconds: float) -> Redis:
    """A client for the store at ``url`` (not connected yet: the first operation connects).

    redis-py is an optional dependency (the ``shared`` extra), imported only here. Its own
    retries are off: one operation is bounded by ``timeout_seconds`` as a whole, and the next
    tick is the retry.
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
        decode_responses=True,
    )


def _member(record: ProvenRecord) -> str:
    return f"{record.key.hex()}:{record.first.hex()}:{record.words}:{record.score:.4f}"


def _parse(member: str) -> ProvenRecord | None:
    """A stored member back into a record; ``None`` for anything not written by this module."""
    m = _MEMBER.fullmatch(member)
    if m is None:
        return None
    words, score = int(m.group(3)), float(m.group(4))
    if not 1 <= words <= MAX_WORDS or not 0.0 <= score <= 1.0:
        return None
    return ProvenRecord(bytes.fromhex(m.group(1)), bytes.fromhex(m.group(2)), words, score)


class SharedProvenTriggers:
    """Carries one detector's proven triggers between replicas; the local memory stays the truth.

    Runs one background task (:meth:`start` / :meth:`close`). Everything it does is bounded by
    ``timeout_seconds`` and nothing it does raises into the detector.
    """

    def __init__(
        self,
        detector: str,
        memory: ProvenTriggers,
        params: SharedMemoryParams,
        client: Redis,
        *,
        ttl_seconds: float,
        limit: int,
        metrics: DetectorTelemetry | None = None,
    ) -> None:
        self.detector = detector
        self.memory = memory
        self.params = params
        self._client = client
        self._ttl_ms = max(1, math.ceil(ttl_seconds * 1000))
        self._limit = max(1, limit)
        self._metrics = metrics
        # One hash tag, so both keys live in one slot of a cluster-mode store.
        base = f"{params.prefix}:{{counterfactual:{detector}}}"
        self._set_key = base + ":proven"
        self._token_key = base + ":changed"
        #: Confirmations not yet written, with their expiry (store clock, ms).
        self._outbox: OrderedDict[bytes, tuple[ProvenRecord, int]] = OrderedDict()
        #: Store clock minus this clock, in ms, as of the last sync.
        self._offset_ms = 0
        self._seen: str | None = None
        self._down = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        if metrics is not None:
            metrics.prepare_shared_memory(detector)

    @property
    def healthy(self) -> bool:
        """False from a failed operation until the next one succeeds."""
        return not self._down

    def _now_ms(self) -> int:
        return int(time.time() * 1000) + self._offset_ms

    # ------------------------------------------------------------------ detector side

    def publish(self, record: ProvenRecord) -> None:
        """Queue a trigger proven here for the other replicas; no I/O, never blocks."""
        self._outbox.pop(record.key, None)
        self._outbox[record.key] = (record, self._now_ms() + self._ttl_ms)
        while len(self._outbox) > MAX_OUTBOX:
            self._outbox.popitem(last=False)
        self._wake.set()

    async def start(self) -> None:
        """Start the background task; the first sync runs at once (the store may be down)."""
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
        if self._outbox:
            await self._operation("write", self._write)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.params.timeout_seconds):
                await self._client.aclose()

    async def sync(self) -> None:
        """One tick: write what is queued, then pull what changed. Never raises."""
        if self._outbox:
            await self._operation("write", self._write)
        await self._operation("sync", self._pull)

    # ------------------------------------------------------------------ the task

    async def _run(self) -> None:
        while not self._stopping:
            await self.sync()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.params.sync_seconds):
                    await self._wake.wait()
            self._wake.clear()

    async def _operation(self, name: str, call: Callable[[], Awaitable[None]]) -> None:
        try:
            async with asyncio.timeout(self.params.timeout_seconds):
                await call()
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
                log.warning(
                    "detector %s: shared memory unavailable (%s failed: %s); each replica judges "
                    "from its own memory until it is back",
                    self.detector,
                    name,
                    type(exc).__name__ if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}",
                )
            return
        if self._down:
            self._down = False
            log.info("detector %s: shared memory is back", self.detector)

    async def _write(self) -> None:
        now = self._now_ms()
        live = {_member(r): expiry for r, expiry in self._outbox.values() if expiry > now}
        sent = list(self._outbox.items())
        if live:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zadd(self._set_key, live)
                pipe.zremrangebyscore(self._set_key, "-inf", now)
                pipe.zremrangebyrank(self._set_key, 0, -self._limit - 1)
                pipe.pexpire(self._set_key, self._ttl_ms)
                pipe.set(self._token_key, secrets.token_hex(16), px=self._ttl_ms)
                await pipe.execute()
        for key, entry in sent:  # only now: a failed write keeps them for the next tick
            if self._outbox.get(key) is entry:  # not re-proven meanwhile
                del self._outbox[key]

    async def _pull(self) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.get(self._token_key)
            (seconds, micros), token = await pipe.execute()
        store_ms = int(seconds) * 1000 + int(micros) // 1000
        self._offset_ms = store_ms - int(time.time() * 1000)
        if token is None or token == self._seen:
            self._seen = token
            return
        # withscores: (member, score) pairs (lists under RESP3), members decoded to str.
        members = await self._client.zrange(
            self._set_key,
            "+inf",
            f"({store_ms}",
            desc=True,
            byscore=True,
            offset=0,
            num=self._limit,
            withscores=True,
        )
        mono = time.monotonic()
        # Soonest expiry first, so the freshest triggers end up the most recently used here.
        for raw, expiry in reversed(cast(list[tuple[str, float]], members)):
            record = _parse(str(raw))
            if record is not None:
                self.memory.merge(record, (float(expiry) - store_ms) / 1000, mono)
        self._seen = token
