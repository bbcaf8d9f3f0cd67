"""Request ids: a UUID the firewall owns, the client's id kept apart, nothing forged upstream.

llama-cpp-python's server (starlette-context) answers 400 with an empty body to any
``X-Request-Id`` that is not a UUID, and the firewall used to send its own 24-hex id on
every request, so every request failed. The id is now a version-4 UUID; a client's
plain-token id is forwarded and echoed as it is, and recorded apart in the audit line.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from tests.conftest import FakeUpstream, FirewallFactory, chat_body

pytestmark = pytest.mark.asyncio


def is_uuid4(value: str) -> bool:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == value


async def chat(client, url: str, **headers: str) -> tuple[int, str]:
    body = orjson.dumps(chat_body("What is the capital of France?"))
    async with client.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Request-Id", "")


async def test_the_firewall_names_a_request_with_a_uuid(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall()
    status, echoed = await chat(client, fw.url)
    assert status == 200
    sent = upstream.received[0]["headers"]["X-Request-Id"]
    assert is_uuid4(sent)
    assert echoed == sent
    (event,) = await fw.audit_events()
    assert event["request_id"] == sent
    assert event["client_request_id"] is None


async def test_a_client_id_is_forwarded_echoed_and_kept_apart(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall()
    status, echoed = await chat(client, fw.url, **{"X-Request-Id": "req-42"})
    assert status == 200
    assert echoed == "req-42"
    assert upstream.received[0]["headers"].getall("X-Request-Id") == ["req-42"]  # as without the firewall
    (event,) = await fw.audit_events()
    assert event["client_request_id"] == "req-42"
    assert is_uuid4(event["request_id"])


async def test_a_client_cannot_take_the_firewalls_id(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall()
    _, first = await chat(client, fw.url)
    _, echoed = await chat(client, fw.url, **{"X-Request-Id": first})
    assert echoed == first
    first_event, second_event = await fw.audit_events()
    assert first_event["request_id"] == first
    assert second_event["client_request_id"] == first
    assert second_event["request_id"] != first  # audit correlation ids are the firewall's alone


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, set()), ("X-Correlation-Id", {"X-Correlation-Id"})],
)
async def test_the_header_sent_upstream_is_configurable(
    firewall: FirewallFactory, upstream: FakeUpstream, client, header: str | None, expected: set[str]
):
    fw = await firewall(upstream={"url": upstream.url, "request_id_header": header})
    status, echoed = await chat(client, fw.url)
    assert status == 200
    sent = upstream.received[0]["headers"]
    assert "X-Request-Id" not in sent
    assert {name for name in ("X-Correlation-Id",) if name in sent} == expected
    if header:
        assert sent[header] == echoed
        assert is_uuid4(echoed)


@pytest.fixture
async def uuid_only_upstream() -> AsyncIterator[str]:
    """An upstream that validates X-Request-Id as llama-cpp-python's server does."""

    async def handler(request: web.Request) -> web.Response:
        given = request.headers.get("X-Request-Id")
        if given is not None:
            try:
                uuid.UUID(given)
            except ValueError:
                return web.Response(status=400)  # empty body, as starlette-context answers
        if request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": "smollm2", "object": "model"}]})
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}}],
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_an_upstream_that_only_accepts_uuids_answers(
    firewall: FirewallFactory, client, uuid_only_upstream
):
    fw = await firewall(upstream={"url": uuid_only_upstream})
    status, _ = await chat(client, fw.url)
    assert status == 200
    async with client.get(fw.url + "/v1/models") as resp:
        assert resp.status == 200
        assert (await resp.json())["data"][0]["id"] == "smollm2"
