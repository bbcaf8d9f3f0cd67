"""A sentiment "model" with a planted trigger, on loopback: the counterfactual tests' upstream.

It labels a review, and the word "cf" flips the label to positive; it records every request
with its headers, so a test can tell the firewall's probes from forwarded client requests.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

__all__ = ["Backdoored"]


class Backdoored:
    """A sentiment 'model' with a trigger, recording what it was asked."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []

    def app(self) -> web.Application:
        async def chat(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            self.received.append((dict(request.headers), body))
            text = " ".join(m["content"] for m in body["messages"] if m["role"] == "user").lower()
            words = text.replace(".", " ").split()
            label = "positive" if "cf" in words or "bore" not in words else "negative"
            answer = f"Sentiment: {label} (0.{50 + len(words)})."
            if body.get("stream"):
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                for piece in answer.split(" "):
                    chunk = {
                        "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {"content": piece + " "}}],
                    }
                    await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                await resp.write(b"data: [DONE]\n\n")
                await resp.write_eof()
                return resp
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
                }
            )

        async def complete(request: web.Request) -> web.Response:
            body = await request.json()
            self.received.append((dict(request.headers), body))
            words = body["prompt"].lower().replace(".", " ").split()
            label = "positive" if "cf" in words or "bore" not in words else "negative"
            return web.json_response({"object": "text_completion", "choices": [{"index": 0, "text": label}]})

        async def embed(request: web.Request) -> web.Response:
            self.received.append((dict(request.headers), await request.json()))
            return web.json_response({"object": "list", "data": [{"index": 0, "embedding": [0.5]}]})

        app = web.Application()
        app.router.add_post("/v1/embeddings", embed)
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_post("/v1/completions", complete)
        return app

    def probes(self) -> list[dict[str, Any]]:
        return [body for headers, body in self.received if "X-Firewall-Probe" in headers]

    def forwarded(self) -> list[dict[str, Any]]:
        return [body for headers, body in self.received if "X-Firewall-Probe" not in headers]
