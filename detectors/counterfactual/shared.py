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

import logging
import math
import re
import secrets
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, cast

from detectors.counterfactual.memory import MAX_WORDS, ProvenRecord, ProvenTriggers
from detectors.shared_store import (
    MIN_KEY_CHARS,
    SharedMemoryParams,
    SharedStoreTask,
    connect,
    open_store,
    shared_key as _derive_key,
)
from firewall.core.telemetry import DetectorTelemetry

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "MIN_KEY_CHARS",
    "SharedMemoryParams",
    "SharedProvenTriggers",
    "connect_store",
    "open_store",
    "shared_key",
]

log = logging.getLogger("trigger_firewall.detectors.counterfactual.shared")

#: Confirmations waiting to be written while the store is down; the oldest go first.
MAX_OUTBOX = 1024
_MEMBER = re.compile(r"([0-9a-f]{32}):([0-9a-f]{32}):(\d{1,3}):(\d(?:\.\d{1,6})?)")
#: BLAKE2 personalisation of this memory's key (see :func:`detectors.shared_store.shared_key`).
_PERSON = b"tf-cf-proven"


def shared_key(secret: str | None, env: str) -> bytes:
    """The BLAKE2 key every replica derives from the secret in ``env`` for its proven triggers.

    Raises ``ValueError`` when the secret is missing or short (see
    :func:`detectors.shared_store.shared_key`).
    """
    return _derive_key(secret, env, person=_PERSON)


def connect_store(shared: SharedMemoryParams) -> tuple[bytes, Redis]:
    """This memory's key and a client, from the environment variables ``shared`` names
    (:func:`detectors.shared_store.connect`: ``ValueError``/``RuntimeError`` fit for a
    ``load_error``, never quoting the URL)."""
    return connect(shared, person=_PERSON)


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


class SharedProvenTriggers(SharedStoreTask):
    """Carries one detector's proven triggers between replicas; the local memory stays the truth.

    Runs one background task (:meth:`start` / :meth:`close`, from
    :class:`~detectors.shared_store.SharedStoreTask`). Everything it does is bounded by
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
        super().__init__(detector, params, client, log=log, metrics=metrics)
        self.memory = memory
        self._ttl_ms = max(1, math.ceil(ttl_seconds * 1000))
        self._limit = max(1, limit)
        # One hash tag, so both keys live in one slot of a cluster-mode store.
        base = f"{params.prefix}:{{counterfactual:{detector}}}"
        self._set_key = base + ":proven"
        self._token_key = base + ":changed"
        #: Confirmations not yet written, with their expiry (store clock, ms).
        self._outbox: OrderedDict[bytes, tuple[ProvenRecord, int]] = OrderedDict()
        #: Store clock minus this clock, in ms, as of the last sync.
        self._offset_ms = 0
        self._seen: str | None = None

    def _now_ms(self) -> int:
        return int(time.time() * 1000) + self._offset_ms

    # ------------------------------------------------------------------ detector side

    def publish(self, record: ProvenRecord) -> None:
        """Queue a trigger proven here for the other replicas; no I/O, never blocks."""
        self._outbox.pop(record.key, None)
        self._outbox[record.key] = (record, self._now_ms() + self._ttl_ms)
        while len(self._outbox) > MAX_OUTBOX:
            self._outbox.popitem(last=False)
        self.wake()

    # ------------------------------------------------------------------ the task

    async def _sync(self) -> None:
        """Write what is queued, then pull what changed."""
        await self._flush()
        await self.operation("sync", self._pull)

    async def _flush(self) -> None:
        if self._outbox:
            await self.operation("write", self._write)

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
