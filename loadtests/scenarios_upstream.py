"""The mock upstream with knobs for the load scenarios: delays and long streams.

``scenarios.py`` needs an upstream that can be slow (to push the firewall past
its concurrency limit) and streams that last (to hold connections open). The
knobs travel in the query string, which the firewall relays untouched while it
matches routes on the path alone, so one upstream process serves every
scenario:

* ``delay_ms``: wait this long before answering (time to response headers);
* ``tokens``: stream this many content events instead of the fixed few;
* ``token_delay_ms``: pause between streamed events.

A request without knobs is answered by ``mock_upstream.chat_completions``, the
benchmark's fixed fast answer, byte for byte.

Run it as ``python loadtests/scenarios_upstream.py --port 18001`` (loopback only).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

import mock_upstream

HOST = "127.0.0.1"


def _chunk(delta: dict[str, Any], finish: str | None) -> bytes:
    doc = {
        "id": "chatcmpl-scenario",
        "object": "chat.completion.chunk",
        "created": mock_upstream.CREATED,
        "model": mock_upstream.MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def _knob(request: web.Request, name: str) -> float:
    try:
        return max(0.0, float(request.query.get(name, "0")))
    except ValueError:
        return 0.0


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Apply the knobs, or hand the request to the benchmark's fixed answer."""
    delay = _knob(request, "delay_ms") / 1000
    tokens = int(_knob(request, "tokens"))
    token_delay = _knob(request, "token_delay_ms") / 1000
    if not (delay or tokens):
        return await mock_upstream.chat_completions(request)
    raw = await request.read()
    if delay:
        await asyncio.sleep(delay)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if not (isinstance(doc, dict) and doc.get("stream") is True and tokens):
        return web.Response(body=mock_upstream.COMPLETION, content_type="application/json")
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    await resp.write(_chunk({"role": "assistant", "content": ""}, None))
    for i in range(tokens):
        if token_delay:
            await asyncio.sleep(token_delay)
        await resp.write(_chunk({"content": f"word{i} "}, None))
    await resp.write(_chunk({}, "stop"))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", mock_upstream.models)
    return app


def main(argv: list[str] | None = None) -> None:
    mock_upstream.main(argv, build_app, __doc__)


if __name__ == "__main__":
    main()
