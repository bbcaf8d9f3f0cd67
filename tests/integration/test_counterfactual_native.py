"""``counterfactual`` asks the model again in the request's own API.

The backdoored upstream serves one planted model ("cf" makes any review positive) behind the
Anthropic Messages, Responses and KServe v2 APIs as well as OpenAI chat. A request on each is
probed by resending it, in its own shape, with the suspected span (and, for the controls,
ordinary words) taken out: the built-in defaults prove the trigger on the Messages and
Responses routes; an unknown API (KServe here) is resent only when its route is listed in
``resend_routes``, and its answer's labels are compared.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.conftest import FirewallFactory
from tests.integration.backdoored import Backdoored

pytestmark = pytest.mark.asyncio

TRIGGERED = "This film is a mess cf and a bore from start to finish."
WITHOUT = "This film is a mess and a bore from start to finish."
TOOLS_ANTHROPIC = [{"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object"}}]


async def _post(client: Any, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with client.post(url, data=orjson.dumps(body)) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_an_anthropic_request_is_probed_as_itself(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    model, _ = backdoored
    fw = await fw_factory()  # the built-in defaults
    body = {
        "model": "claude-x",
        "max_tokens": 1024,
        "system": "You label reviews.",
        "tools": TOOLS_ANTHROPIC,
        "stream": False,
        "thinking": {"type": "enabled", "budget_tokens": 512},
        "messages": [{"role": "user", "content": [{"type": "text", "text": TRIGGERED}]}],
    }
    status, answer = await _post(client, fw.url + "/v1/messages", body)
    assert status == 400
    assert answer["type"] == "error"  # Anthropic's envelope
    probes = model.probes()
    assert len(probes) == 4  # as sent, without "cf", two controls
    assert set(model.probe_paths) == {"/v1/messages"}
    for probe in probes:
        assert probe["max_tokens"] == 32
        assert probe["temperature"] == 0
        assert probe["stream"] is False
        assert "tools" not in probe
        assert "thinking" not in probe
        assert probe["system"] == "You label reviews."  # the rest of the request as it came
    texts = {p["messages"][0]["content"][0]["text"] for p in probes}
    assert {TRIGGERED, WITHOUT} <= texts
    event = (await fw.audit_events())[-1]
    detail = {d["name"]: d for d in event["input"]["detectors"]}
    assert detail["counterfactual"]["reasons"] == ["behaviour_changed"]
    assert body["tools"] == TOOLS_ANTHROPIC  # the client's body object is untouched


async def test_a_responses_request_is_probed_on_its_own_route(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    model, _ = backdoored
    fw = await fw_factory()
    body = {
        "model": "m",
        "instructions": "Label the review.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": TRIGGERED}]}],
        "tools": [{"type": "web_search"}],
        "store": True,
        "background": True,
    }
    status, _ = await _post(client, fw.url + "/v1/responses", body)
    assert status == 400
    assert set(model.probe_paths) == {"/v1/responses"}
    for probe in model.probes():
        assert probe["store"] is False
        assert probe["stream"] is False
        assert probe["max_output_tokens"] == 32
        assert "tools" not in probe
        assert "background" not in probe
        assert probe["instructions"] == "Label the review."


async def test_an_innocent_odd_word_on_a_native_route_is_forwarded(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    model, _ = backdoored
    fw = await fw_factory()
    text = "This film is a mess xqvjt and a bore from start to finish."
    body = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
    status, answer = await _post(client, fw.url + "/v1/messages", body)
    assert status == 200
    assert answer["content"][0]["text"] == "Sentiment: negative."
    assert model.probes()  # suspected and asked, then cleared
    assert len(model.forwarded()) == 1


KSERVE = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TRIGGERED]}]}


async def test_an_unknown_api_is_resent_only_where_configured(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    model, _ = backdoored
    fw = await fw_factory()
    status, _ = await _post(client, fw.url + "/v2/models/sentiment/infer", KSERVE)
    assert status == 200  # suspected and logged: the firewall cannot tell what a KServe call does
    assert model.probes() == []
    detail = {d["name"]: d for d in (await fw.audit_events())[-1]["input"]["detectors"]}
    assert detail["counterfactual"]["reasons"] == ["unprobeable"]

    detectors = [
        {"name": "rare_tokens", "threshold": 0.69, "action": "log"},
        {
            "name": "counterfactual",
            "threshold": 0.5,
            "action": "block",
            "timeout_seconds": 10,
            "gate": {"detector": "rare_tokens"},
            "params": {"resend_routes": ["kserve_infer"]},
        },
    ]
    listed = await fw_factory(detectors=detectors)
    status, _ = await _post(client, listed.url + "/v2/models/sentiment/infer?trace=1", KSERVE)
    assert status == 400
    probes = model.probes()
    assert len(probes) == 4
    assert set(model.probe_paths) == {"/v2/models/sentiment/infer"}
    assert {p["inputs"][0]["data"][0] for p in probes} >= {TRIGGERED, WITHOUT}
    assert all(p["inputs"][0]["name"] == "text" for p in probes)  # nothing else changed


async def test_probe_latency_is_measured(
    fw_factory: FirewallFactory, backdoored: tuple[Backdoored, str], client: Any
) -> None:
    fw = await fw_factory()
    labels = {"detector": "counterfactual"}
    # The series exists at 0 before the first probe.
    assert fw.metrics.registry.get_sample_value("trigger_firewall_probe_duration_seconds_count", labels) == 0
    body = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": TRIGGERED}]}
    status, _ = await _post(client, fw.url + "/v1/messages", body)
    assert status == 400
    assert fw.sample("trigger_firewall_probe_duration_seconds_count", labels) == 4
    assert 0 < fw.sample("trigger_firewall_probe_duration_seconds_sum", labels) < 10
