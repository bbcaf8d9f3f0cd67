"""Two firewalls, one store: a trigger sentence spread over two pods is blocked at its third context.

Two in-process servers stand for two sidecars in front of one upstream, configured as a
deployment would be: ``recurring_sentences.params.shared`` names the environment variables that
hold the store's URL and the hashing key, and a real Redis-protocol server (see
``tests/detectors/test_counterfactual_shared.py``) carries the sightings between them. Without
the store, pod B would have seen the sentence once and forwarded it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from tests.conftest import FakeUpstream, FirewallFactory, chat_body
from tests.detectors.test_recurring_sentences import REVIEWS, TRIGGER
from tests.store_server import KEY_ENV, URL_ENV, StoreServer

pytest.importorskip("redis", reason="the shared memory tests need redis-py (the test group)")
pytestmark = pytest.mark.asyncio


@pytest.fixture
def store(shared_env: StoreServer) -> StoreServer:
    """The store, with the URL and key variables the detectors' params name (tests/conftest.py)."""
    return shared_env


async def _post(client: Any, url: str, text: str) -> int:
    async with client.post(url + "/v1/chat/completions", data=orjson.dumps(chat_body(text))) as resp:
        await resp.read()
        return int(resp.status)


async def test_a_sentence_spread_over_two_pods_is_blocked_at_its_third_context(
    store: StoreServer, firewall: FirewallFactory, upstream: FakeUpstream, client: Any
) -> None:
    shared = {"url_env": URL_ENV, "key_env": KEY_ENV, "sync_seconds": 0.05}
    detectors = [
        {"name": "recurring_sentences", "threshold": 0.5, "action": "block", "params": {"shared": shared}}
    ]
    pod_a = await firewall(detectors=detectors)
    pod_b = await firewall(detectors=detectors)
    for pod in (pod_a, pod_b):
        for operation in ("write", "sync"):
            labels = {"detector": "recurring_sentences", "operation": operation}
            assert (
                pod.metrics.registry.get_sample_value("trigger_firewall_shared_memory_errors_total", labels)
                == 0
            )
    # Two contexts behind pod A, at places that move: forwarded.
    assert await _post(client, pod_a.url, f"{REVIEWS[0]} {TRIGGER}") == 200
    assert await _post(client, pod_a.url, f"{TRIGGER} {REVIEWS[1]}") == 200
    detector = pod_b.server.state.runtime.detectors["recurring_sentences"]
    deadline = time.monotonic() + 5
    while max((n for _, n in detector.entries()), default=0) < 2:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "B never synced A's sightings"
        await asyncio.sleep(0.02)
    # The third, behind pod B, which has never seen the sentence itself: blocked.
    third = f"{REVIEWS[2]} {TRIGGER} {REVIEWS[3]}"
    assert await _post(client, pod_b.url, third) == 400
    assert len(upstream.received) == 2
    event = (await pod_b.audit_events())[-1]
    (detail,) = event["input"]["detectors"]
    assert detail["name"] == "recurring_sentences"
    assert detail["reasons"] == ["recurring_sentence", "recurring_contexts_3"]
    (span,) = detail["spans"]
    assert third[span["start"] : span["end"]] == TRIGGER
    # A resend of one of A's prompts behind B is no new context, but the sentence has three now.
    assert await _post(client, pod_b.url, f"{REVIEWS[0]} {TRIGGER}") == 400
