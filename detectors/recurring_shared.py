"""``recurring_sentences``' counts shared across replicas, through Redis or Valkey.

Why this exists
---------------
The detector scores a sentence by the number of distinct contexts it has been seen in. Per
replica, an attacker who sends a trigger sentence once to each of N pods meets N tables that
have each seen it once, and never reaches ``fire_after``. Sharing the *sightings* closes that:
every replica folds the others' into its own table, so each one counts what the whole
deployment has seen.

What stays where
----------------
The hot path does not change: every request is scored synchronously against the replica's own
table and never waits on the store. A request that gave a sentence a new distinct context
(its first one included) is queued as a *sighting* (:meth:`SharedSightings.record`, no I/O, safe
from the worker thread a long sample is scored in); a background task writes the queue and pulls
the other replicas' sightings every ``sync_seconds``, and the detector merges them under its
``inline_lock`` in small chunks (:meth:`RecurringSentencesDetector.merge`), never holding the
event loop for long.

What a sighting holds
---------------------
Only keyed hashes, never text, and only what a replica needs to decide "distinct context" as
the sighting's own replica did:

* the request's context sketch: the bottom-``sketch_size`` 32-bit keyed hashes of its context
  elements (other sentences, word pairs of short segments), shared by its sentences;
* per sentence that counted: its 64-bit keyed hash, its neighbours' hashes (or the segment's
  start or end: the fixed-place rule), and which of the sketch's hashes are the sentence's own
  (its own hash, its word pairs), which a comparison must leave out as the local one does;
* the sketch size, the sighting's age when written, and a random id of the writing replica
  (so it skips its own sightings when it pulls them back).

Every replica hashes with the key derived from the deployment's secret (``params.shared.key_env``),
so the same sentence has the same hash on every replica, and whoever reads the store without
the secret cannot test the hashes against guessed sentences. What the store does show is which
hashed sentences arrived together in one request, and when.

Distinct contexts across replicas
---------------------------------
A pulled sighting is counted as the replica's own would be: against every stored sketch of the
sentence, an identical sketch (a resent prompt: same text, same key, same hashes) is the same
context, and otherwise the two sketches' containment both ways is compared (see
``_same_sketches`` in the detector: over the hash range both bottom-k sketches cover, with the
sentence's own hashes removed). Only new distinct contexts are published, so a prompt resent to
N replicas is one context everywhere, and a sentence sent once to each of N replicas in N
unrelated prompts is N contexts everywhere, after one sync. The counts may differ from a single
replica's in the order of sightings (containment is not transitive) and in the precision of the
comparison (a local occurrence is compared with its full context, a pulled one by its sketch).

Store layout and bounds
-----------------------
One stream per detector, ``<prefix>:{recurring_sentences:<name>}:sightings``, one entry a
request. Its ids are the store's clock, so replicas whose clocks differ agree on ages. At every
write it is cut to ``max_entries`` entries (enough to rebuild a full table) and to
``ttl_seconds`` of history, and the key expires ``ttl_seconds`` after the last write. A replica
reads it from where it stopped; a new replica (a restart, a changed config) reads it from the
start, so it does not start from an empty table.

When the store is down or slow
------------------------------
Each replica scores from its own table. Sightings wait in a bounded queue (``MAX_OUTBOX``
requests; past it the oldest are dropped and counted in :attr:`SharedSightings.dropped`) and are
written when the store is back; the pull resumes from where it stopped. Errors are counted and
logged as for every shared memory (:class:`detectors.shared_store.SharedStoreTask`).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import struct
import sys
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from detectors.shared_store import SharedMemoryParams, SharedStoreTask
from firewall.core.telemetry import DetectorTelemetry

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "MAX_OUTBOX",
    "PERSON",
    "LocalUnit",
    "RemoteSighting",
    "RemoteUnit",
    "SharedSightings",
    "decode",
    "encode",
]

log = logging.getLogger("trigger_firewall.detectors.recurring_sentences.shared")

#: BLAKE2 personalisation of the sentence key (see :func:`detectors.shared_store.shared_key`).
PERSON = b"tf-rs-units"
#: Requests' sightings waiting to be written while the store is down; past it the oldest go.
MAX_OUTBOX = 8192
#: Sightings written in one round trip, and pulled in one.
WRITE_BATCH = 256
PULL_BATCH = 512
#: Pulls in one tick; a replica further behind (a new one reading the history) goes on at once.
PULLS_PER_TICK = 16
_VERSION = b"1"
_MAX_SKETCH = 4096  # RecurringSentencesParams.sketch_size's bound
_MAX_UNITS = 4096
_UNIT = struct.Struct("<QQQBBH")  # key, left, right, left marker, right marker, own positions
_POSITION = struct.Struct("<H")

#: A sentence of a local sighting: its hash, its neighbours (a hash, or a negative marker for the
#: segment's start or end), and its own context elements (its hash, its word pairs).
LocalUnit = tuple[int, int, int, frozenset[int]]


@dataclass(frozen=True, slots=True)
class RemoteUnit:
    """A sentence of another replica's sighting."""

    key: int
    left: int
    right: int
    own: frozenset[int]  # the sentence's own elements among the sketch's


@dataclass(frozen=True, slots=True)
class RemoteSighting:
    """Another replica's request that gave sentences a new distinct context."""

    age: float  # seconds from the sighting to the pull that brought it
    sketch: array[int]  # the request's context sketch, sorted, as the detector stores it
    units: tuple[RemoteUnit, ...]


def _sketch_bytes(sketch: array[int]) -> bytes:
    packed = array("I", sketch)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _marker(value: int) -> tuple[int, int]:
    """A neighbour as (hash, marker): a negative neighbour is a marker (1, 2), stored as such."""
    return (0, -value) if value < 0 else (value, 0)


def encode(
    replica: bytes, sketch_size: int, age_ms: int, sketch: array[int], units: Sequence[LocalUnit]
) -> dict[bytes, bytes]:
    """One stream entry's fields: packed hashes only."""
    packed = bytearray()
    for key, left, right, own in units:
        positions = [i for i, e in enumerate(sketch) if e in own]
        (lhash, lmark), (rhash, rmark) = _marker(left), _marker(right)
        packed += _UNIT.pack(key, lhash, rhash, lmark, rmark, len(positions))
        for i in positions:
            packed += _POSITION.pack(i)
    return {
        b"v": _VERSION,
        b"r": replica,
        b"k": str(sketch_size).encode(),
        b"a": str(max(0, age_ms)).encode(),
        b"s": _sketch_bytes(sketch),
        b"u": bytes(packed),
    }


def decode(
    fields: Mapping[bytes, bytes], sketch_size: int
) -> tuple[bytes, int, array[int], tuple[RemoteUnit, ...]] | None:
    """``(replica, age_ms, sketch, units)`` of an entry; ``None`` for anything this module did not
    write, or wrote with another ``sketch_size`` (sketches of different sizes do not compare)."""
    try:
        if fields.get(b"v") != _VERSION or int(fields[b"k"]) != sketch_size:
            return None
        replica, age_ms, raw, packed = fields[b"r"], int(fields[b"a"]), fields[b"s"], fields[b"u"]
        if age_ms < 0 or not raw or len(raw) % 4 or len(raw) // 4 > _MAX_SKETCH:
            return None
        sketch = array("I")
        sketch.frombytes(raw)
        if sys.byteorder == "big":
            sketch.byteswap()
        if any(a >= b for a, b in itertools.pairwise(sketch)):
            return None  # a sketch is sorted and distinct: the comparisons rely on it
        units: list[RemoteUnit] = []
        offset = 0
        while offset < len(packed) and len(units) < _MAX_UNITS:
            key, lhash, rhash, lmark, rmark, n = _UNIT.unpack_from(packed, offset)
            offset += _UNIT.size
            if lmark > 2 or rmark > 2:
                return None
            own = {key & 0xFFFFFFFF}  # its own hash is an element whenever it has 3+ words
            for _ in range(n):
                (i,) = _POSITION.unpack_from(packed, offset)
                offset += _POSITION.size
                if i >= len(sketch):
                    return None
                own.add(sketch[i])
            units.append(
                RemoteUnit(key, -lmark if lmark else lhash, -rmark if rmark else rhash, frozenset(own))
            )
        if offset != len(packed) or not units:
            return None
    except (KeyError, ValueError, struct.error):
        return None
    return bytes(replica), age_ms, sketch, tuple(units)


class SharedSightings(SharedStoreTask):
    """Carries one detector's new distinct contexts between replicas; the local table stays the truth."""

    def __init__(
        self,
        detector: str,
        params: SharedMemoryParams,
        client: Redis,
        *,
        sketch_size: int,
        ttl_seconds: float,
        limit: int,
        clock: Callable[[], float],
        merge: Callable[[Sequence[RemoteSighting]], Awaitable[None]],
        metrics: DetectorTelemetry | None = None,
    ) -> None:
        super().__init__(detector, params, client, log=log, metrics=metrics)
        self._sketch_size = sketch_size
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._limit = max(1, limit)
        self._clock = clock
        self._merge = merge
        # One hash tag: a cluster-mode store keeps the detector's keys in one slot.
        self.key = f"{params.prefix}:{{recurring_sentences:{detector}}}:sightings"
        self.replica = secrets.token_bytes(8)
        #: Filled by the scoring thread (deque appends are atomic), emptied by the task.
        self._inbox: deque[tuple[float, array[int], tuple[LocalUnit, ...]]] = deque()
        #: The task's own: taken from the inbox, not yet written (a failed write keeps them).
        self._pending: deque[tuple[float, array[int], tuple[LocalUnit, ...]]] = deque()
        self._cursor = b"-"
        #: Store clock minus this process's wall clock, in ms, as of the last pull.
        self._offset_ms = 0
        #: Sightings dropped because the queue was full (the store down for long).
        self.dropped = 0
        #: Sightings pulled from other replicas and handed to the detector.
        self.merged = 0

    # ------------------------------------------------------------------ detector side

    def record(self, when: float, sketch: array[int], units: tuple[LocalUnit, ...]) -> None:
        """Queue one request's new distinct contexts (``when`` on the detector's clock). No I/O."""
        self._inbox.append((when, sketch, units))

    @property
    def queued(self) -> int:
        """Requests' sightings not yet written."""
        return len(self._inbox) + len(self._pending)

    # ------------------------------------------------------------------ the task

    async def _sync(self) -> None:
        await self._flush()
        for _ in range(PULLS_PER_TICK):
            fetched = await self.operation("sync", self._fetch)
            if fetched is None:
                return
            sightings, cursor, more = fetched
            if sightings:
                await self._merge(sightings)
                self.merged += len(sightings)
            self._cursor = cursor
            if not more:
                return
        self.wake()  # still behind (a new replica reading the history): the next tick at once

    async def _flush(self) -> None:
        """Write everything queued, batch by batch, while the store answers."""
        while self._inbox:
            self._pending.append(self._inbox.popleft())
        overflow = len(self._pending) - MAX_OUTBOX
        for _ in range(max(0, overflow)):
            self._pending.popleft()
            self.dropped += 1
        while self._pending:
            if await self.operation("write", self._write) is None:
                return

    async def _write(self) -> bool:
        batch = list(itertools.islice(self._pending, WRITE_BATCH))
        now = self._clock()
        async with self._client.pipeline(transaction=True) as pipe:
            for when, sketch, units in batch:
                age_ms = round((now - when) * 1000)
                pipe.xadd(self.key, encode(self.replica, self._sketch_size, age_ms, sketch, units))  # type: ignore[arg-type]
            pipe.xtrim(self.key, maxlen=self._limit, approximate=False)
            oldest = int(time.time() * 1000) + self._offset_ms - self._ttl_ms
            if oldest > 0:
                pipe.xtrim(self.key, minid=oldest, approximate=False)
            pipe.pexpire(self.key, self._ttl_ms)
            await pipe.execute()
        for _ in batch:  # only now: a failed write keeps them for the next tick
            self._pending.popleft()
        return True

    async def _fetch(self) -> tuple[list[RemoteSighting], bytes, bool]:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.xrange(self.key, min=self._cursor, max="+", count=PULL_BATCH)
            (seconds, micros), rows = await pipe.execute()
        store_ms = int(seconds) * 1000 + int(micros) // 1000
        self._offset_ms = store_ms - int(time.time() * 1000)
        sightings: list[RemoteSighting] = []
        cursor = self._cursor
        for entry_id, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], rows):
            cursor = b"(" + entry_id
            decoded = decode(fields, self._sketch_size)
            if decoded is None:
                continue
            replica, age_ms, sketch, units = decoded
            if replica == self.replica:
                continue  # its own, pulled back
            written_ms = int(entry_id.split(b"-", 1)[0])
            age = max(0, store_ms - written_ms + age_ms) / 1000
            sightings.append(RemoteSighting(age, sketch, units))
        return sightings, cursor, len(rows) >= PULL_BATCH
