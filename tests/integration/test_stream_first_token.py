"""Time to first content: the first words of a stream reach the client before the next chunk.

The relay used to screen a stream every ``scan_every_chars`` (64) characters, so with any
output detector on (the defaults screen output with ``invisible_chars``) nothing reached
the client until the model had generated 64 characters: +240 ms in front of a real
server. Now the relay screens at every chunk until text has gone out, and detectors that
judge with little look-ahead release it at once.

The upstream here sends one chunk and then waits until the *client* says it has seen
that chunk's text. If the firewall held it, the upstream would wait in vain (and give up
after a few seconds): the test checks who opened the gate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from tests.conftest import FirewallFactory, chat_body

pytestmark = pytest.mark.asyncio


def chunk(text: str | None, finish: str | None = None) -> bytes:
    delta = {"content": text} if text is not None else {}
    event = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


class GatedUpstream:
    def __init__(self) -> None:
        self.seen_by_client = asyncio.Event()
        self.gave_up = False
        self.first = "Sure"
        self.rest = [" thing:", " here", " is", " the", " answer."]

    async def handler(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chunk(self.first))
        try:
            async with asyncio.timeout(3):
                await self.seen_by_client.wait()
        except TimeoutError:
            self.gave_up = True
        for text in self.rest:
            await resp.write(chunk(text))
        await resp.write(chunk(None, "stop"))
        await resp.write(b"data: [DONE]\n\n")
        return resp


@pytest.fixture
async def gated() -> AsyncIterator[tuple[GatedUpstream, str]]:
    upstream = GatedUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield upstream, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.mark.parametrize("with_insecure_code", [False, True])
async def test_first_words_go_out_before_the_model_sends_more(
    firewall: FirewallFactory, gated: tuple[GatedUpstream, str], client, with_insecure_code: bool
):
    upstream, url = gated
    extra = (
        {"detectors": [{"name": "invisible_chars"}, {"name": "insecure_code"}]} if with_insecure_code else {}
    )
    fw = await firewall(upstream={"url": url}, **extra)
    text = ""
    body = orjson.dumps(chat_body("Say something.", stream=True))
    async with client.post(fw.url + "/v1/chat/completions", data=body) as resp:
        assert resp.status == 200
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            delta = orjson.loads(line[6:])["choices"][0]["delta"].get("content")
            if delta:
                text += delta
                upstream.seen_by_client.set()
    assert not upstream.gave_up, "the first chunk was held until the upstream sent more"
    assert text == upstream.first + "".join(upstream.rest)
