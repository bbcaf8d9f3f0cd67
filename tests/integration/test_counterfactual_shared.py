"""Two firewalls, one store: a trigger proven behind one pod is blocked by the other with no probe.

Two in-process servers stand for two sidecars in front of one backdoored upstream, configured
as a deployment would be: ``counterfactual.params.shared`` names the environment variables
that hold the store's URL and the hashing key, and a real Redis-protocol server (see
``tests/detectors/test_counterfactual_shared.py``) carries the keyed hashes between them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.conftest import FirewallFactory
from tests.integration.test_counterfactual import (  # the backdoored upstream and its firewall
    DETECTORS,
    TRIGGERED,
    Backdoored,
    _post,
)
from tests.store_server import KEY_ENV, URL_ENV, StoreServer

pytest.importorskip("redis", reason="the shared memory tests need redis-py (the test group)")
pytestmark = pytest.mark.asyncio

HIDDEN = "This film is a mess, cf is fine, and a bore from start to finish."


@pytest.fixture
def store(shared_env: StoreServer) -> StoreServer:
    """The store, with the URL and key variables the detectors' params name (tests/conftest.py)."""
    return shared_env


async def test_a_trigger_proven_behind_one_pod_is_blocked_by_another_with_no_probe(
    store: StoreServer, fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    model, _ = backdoored
    # rare_tokens is told "cf" is ordinary where it reads "cf is fine": only memory finds it there.
    rare = {**DETECTORS[0], "allowlist": [r"\bcf(?= is fine)"]}
    shared = {"url_env": URL_ENV, "key_env": KEY_ENV, "sync_seconds": 0.05}
    counterfactual = {**DETECTORS[1], "params": {"shared": shared}}
    pod_a = await fw_factory(detectors=[rare, counterfactual])
    pod_b = await fw_factory(detectors=[rare, counterfactual])
    for pod in (pod_a, pod_b):
        for operation in ("write", "sync"):
            labels = {"detector": "counterfactual", "operation": operation}
            assert (
                pod.metrics.registry.get_sample_value("trigger_firewall_shared_memory_errors_total", labels)
                == 0.0
            )
    assert await _post(client, pod_a.url, TRIGGERED) == 400  # flagged, proven by probes on A
    probes = len(model.probes())
    detector = pod_b.server.state.runtime.detectors["counterfactual"]
    deadline = time.monotonic() + 5
    while not detector._proven:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "B never synced A's confirmation"
        await asyncio.sleep(0.02)
    assert await _post(client, pod_b.url, HIDDEN) == 400  # unflagged on B, found in the memory
    assert len(model.probes()) == probes  # B sent no probe
    event = (await pod_b.audit_events())[-1]
    detail = {d["name"]: d for d in event["input"]["detectors"]}
    assert detail["rare_tokens"]["fired"] is False
    assert detail["counterfactual"]["reasons"] == ["known_trigger"]
