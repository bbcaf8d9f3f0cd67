"""A fast, fixed-answer OpenAI-compatible upstream for load benchmarks.

The benchmark wants to measure what a *proxy* costs, so the upstream must be as
cheap and as predictable as possible: every response body is serialised once at
start-up and reused, no model is called, no per-request state is kept, and
access logging is off. It answers ``POST /v1/chat/completions`` with a small
``chat.completion`` object, or, when the request carries ``"stream": true``, with
a handful of ``chat.completion.chunk`` server-sent events ending in
``data: [DONE]`` -- enough for a proxy to exercise both of its response paths.

Run it as ``python loadtests/mock_upstream.py --port 18001``. It binds
``127.0.0.1`` only: the benchmark never leaves loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from typing import Any

import orjson
import uvloop
from aiohttp import web

HOST = "127.0.0.1"
MODEL = "mock-model-1"
CREATED = 1_700_000_000
REPLY = "Sure. Here is a short, fixed answer from the mock upstream."


def _completion_body() -> bytes:
    """Serialise the non-streaming answer once; the handler just reuses the bytes."""
    doc: dict[str, Any] = {
        "id": "chatcmpl-mock-0001",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": REPLY},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 260, "completion_tokens": 14, "total_tokens": 274},
        "system_fingerprint": "fp_mock",
    }
    return orjson.dumps(doc)


def _stream_events() -> list[bytes]:
    """Pre-build the SSE frames: a role delta, a few content deltas, a stop, [DONE]."""

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        doc = {
            "id": "chatcmpl-mock-0001",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    words = REPLY.split(" ")
    pieces = [" ".join(words[i : i + 3]) + " " for i in range(0, len(words), 3)]
    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": piece}, None) for piece in pieces]
    events.append(chunk({}, "stop"))
    events.append(b"data: [DONE]\n\n")
    return events


COMPLETION = _completion_body()
STREAM_EVENTS = _stream_events()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Answer a chat request; parse the body only to learn whether to stream.

    A malformed body gets a 400 in OpenAI's error shape so that a proxy that
    mangles bodies shows up as errors in the benchmark instead of passing silently.
    """
    raw = await request.read()
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        err = {"error": {"message": "invalid JSON body", "type": "invalid_request_error"}}
        return web.Response(status=400, body=orjson.dumps(err), content_type="application/json")
    if isinstance(doc, dict) and doc.get("stream") is True:
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        await resp.prepare(request)
        for event in STREAM_EVENTS:
            await resp.write(event)
        await resp.write_eof()
        return resp
    return web.Response(body=COMPLETION, content_type="application/json")


async def models(_request: web.Request) -> web.Response:
    """List the one mock model, so that clients probing ``/v1/models`` get a sane answer."""
    body = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "mock"}]}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def build_app() -> web.Application:
    """Build the application; kept separate so tests could mount it in-process."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    return app


async def serve(port: int, app_factory: Callable[[], web.Application] = build_app) -> None:
    """Serve until SIGTERM/SIGINT, then shut down cleanly so the runner can reap us."""
    runner = web.AppRunner(app_factory(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(
    argv: list[str] | None = None,
    app_factory: Callable[[], web.Application] = build_app,
    description: str | None = None,
) -> None:
    """Parse ``--port`` and run the server (``app_factory``'s app) on uvloop."""
    doc = description or __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, app_factory))


if __name__ == "__main__":
    main()
