"""Streams go out as the model writes them: each chunk's words reach the client before the next.

The relay used to screen a stream every ``scan_every_chars`` (64) characters, so with any
output detector on (the defaults screen output with ``invisible_chars``) nothing reached
the client until the model had generated 64 characters: +240 ms in front of a real
server. Now the relay screens at every chunk until text has gone out, and detectors that
judge with little look-ahead release it at once.

After the first words it rescanned every 64 characters, so the rest came in bursts of
about 16 tokens. Now it screens after every upstream read (``stream.scan_interval_ms: 0``).

The upstream here sends one chunk at a time and waits until the *client* says it has
seen that chunk's text. If the firewall held it, the upstream would wait in vain (and
give up after a few seconds): the test checks who opened each gate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from tests.conftest import FirewallFactory, chat_body, sse_chunk

pytestmark = pytest.mark.asyncio


class GatedUpstream:
    def __init__(self) -> None:
        self.words = ["Sure", " thing:", " here", " is", " the", " answer."]
        self.seen = 0  # words the client has seen so far
        self.changed = asyncio.Event()
        self.gave_up: list[int] = []

    def client_saw(self, text: str) -> None:
        while self.seen < len(self.words) and text.endswith("".join(self.words[: self.seen + 1])):
            self.seen += 1
        self.changed.set()

    async def handler(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for index, word in enumerate(self.words):
            await resp.write(sse_chunk(word))
            try:
                async with asyncio.timeout(3):
                    while self.seen <= index:
                        self.changed.clear()
                        await self.changed.wait()
            except TimeoutError:
                self.gave_up.append(index)
        await resp.write(sse_chunk(None, "stop"))
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
async def test_each_chunk_goes_out_before_the_model_sends_more(
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
                upstream.client_saw(text)
    assert upstream.gave_up == [], "chunks were held until the upstream sent more"
    assert text == "".join(upstream.words)
