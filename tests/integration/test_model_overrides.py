"""Per-model overrides: the body's model picks a stricter or looser policy on the same route."""

from __future__ import annotations

import orjson
import pytest

from firewall.config.schema import build_config
from firewall.core.errors import ConfigError
from tests.conftest import TRIGGER, FakeUpstream, FirewallFactory

ROUTES = {
    "routes": [
        {
            "name": "chat",
            "path": "/v1/chat/completions",
            "protocol": "openai_chat",
            "models": {
                "shadow-model": {"mode": "monitor"},
                "legacy-model": {"mode": "off"},
                "lenient-model": {"detectors": {"invisible_chars": {"action": "log"}}},
            },
        }
    ]
}


async def send(client, url: str, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": TRIGGER}]}
    async with client.post(url + "/v1/chat/completions", data=orjson.dumps(body)) as resp:
        await resp.read()
        return resp.status


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("model", "status", "action", "mode"),
    [
        ("gpt-x", 400, "block", "enforce"),  # no override: the route's policy
        ("shadow-model", 200, "log", "monitor"),
        ("legacy-model", 200, "allow", "off"),
        ("lenient-model", 200, "log", "enforce"),
    ],
)
async def test_model_override_picks_the_policy(
    firewall: FirewallFactory, upstream: FakeUpstream, client, model, status, action, mode
):
    fw = await firewall(routing=ROUTES)
    assert await send(client, fw.url, model) == status
    labels = {"route": "chat", "action": action, "mode": mode}
    assert fw.sample("trigger_firewall_requests_total", labels) == 1
    if mode == "off":
        assert await fw.audit_events() == []  # not screened, so no audit line
    else:
        (event,) = await fw.audit_events()
        assert event["mode"] == mode
        assert event["gen_ai.request.model"] == model


def test_override_for_unknown_detector_is_rejected() -> None:
    bad = {
        "routes": [
            {
                "name": "c",
                "path": "/x",
                "protocol": "openai_chat",
                "models": {"m": {"detectors": {"nope": {}}}},
            }
        ]
    }
    with pytest.raises(ConfigError, match="model 'm': override for unknown detector 'nope'"):
        build_config({"routing": bad})


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["enforce", "monitor"])
async def test_a_route_serves_only_its_allowed_models(
    firewall: FirewallFactory, upstream: FakeUpstream, client, mode: str
) -> None:
    # A pinned deployment: the vetted model and its shadow twin, nothing a client names instead.
    route = {**ROUTES["routes"][0], "mode": mode, "allowed_models": ["gpt-x", "shadow-model"]}
    fw = await firewall(routing={"routes": [route]})
    ok = {"model": "gpt-x", "messages": [{"role": "user", "content": "Hello there."}]}
    async with client.post(fw.url + "/v1/chat/completions", data=orjson.dumps(ok)) as resp:
        assert resp.status == 200
    for model in ("gpt-x-backdoored", "GPT-X", None):
        body = {"messages": [{"role": "user", "content": "Hello there."}]}
        if model is not None:
            body["model"] = model
        async with client.post(fw.url + "/v1/chat/completions", data=orjson.dumps(body)) as resp:
            assert resp.status == 403
            error = (await resp.json())["error"]
        assert error["code"] == "model_not_allowed"
        assert "backdoored" not in error["message"]  # the request's bytes are not echoed
    assert len(upstream.received) == 1  # only the allowed one reached the model
    assert (
        fw.sample(
            "trigger_firewall_rejected_requests_total", {"route": "chat", "reason": "model_not_allowed"}
        )
        == 3
    )
