"""The demo upstream reports real usage, and usage chunks pass through the firewall's relay.

Clients (the openai SDK, LangChain, cost dashboards) read ``usage``; with
``stream_options.include_usage`` the last chunk before ``[DONE]`` has empty ``choices``
and carries it. The demo counts tokens as whitespace-separated words.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from firewall.demo.upstream import make_demo_app
from tests.conftest import FirewallFactory

pytestmark = pytest.mark.asyncio

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": [{"type": "text", "text": "how long is the river Nile"}]},
]


@pytest.fixture
async def demo() -> AsyncIterator[str]:
    runner = web.AppRunner(make_demo_app(stream_delay=0.0))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def stream_events(client, url: str, body: dict) -> list[bytes]:
    async with client.post(url + "/v1/chat/completions", data=orjson.dumps(body)) as resp:
        assert resp.status == 200
        return [line.strip() for line in (await resp.read()).split(b"\n") if line.startswith(b"data: ")]


async def test_usage_counts_the_prompt_and_the_answer(demo: str, client):
    async with client.post(demo + "/v1/chat/completions", data=orjson.dumps({"messages": MESSAGES})) as resp:
        data = await resp.json()
    answer = data["choices"][0]["message"]["content"]
    usage = data["usage"]
    assert usage["prompt_tokens"] == 9  # "You are terse." + "how long is the river Nile"
    assert usage["completion_tokens"] == len(answer.split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("through_firewall", [False, True])
async def test_include_usage_ends_the_stream_with_a_usage_chunk(
    demo: str, client, firewall: FirewallFactory, through_firewall: bool
):
    url = (await firewall(upstream={"url": demo})).url if through_firewall else demo
    body = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    events = await stream_events(client, url, body)
    assert events[-1] == b"data: [DONE]"
    last = orjson.loads(events[-2][6:])
    assert last["choices"] == []
    text = "".join(
        orjson.loads(e[6:])["choices"][0]["delta"].get("content", "")
        for e in events[:-2]
        if e != b"data: [DONE]"
    )
    assert last["usage"]["completion_tokens"] == len(text.split())
    assert last["usage"]["prompt_tokens"] == 9
    plain = await stream_events(client, url, {"messages": MESSAGES, "stream": True})
    assert all(b'"usage"' not in e for e in plain)  # only when asked for
