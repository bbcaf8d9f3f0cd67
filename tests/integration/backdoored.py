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
        #: The path of each probe, in order.
        self.probe_paths: list[str] = []

    def _record(self, request: web.Request, body: dict[str, Any]) -> None:
        self.received.append((dict(request.headers), body))
        if "X-Firewall-Probe" in request.headers:
            self.probe_paths.append(request.path)

    def app(self) -> web.Application:
        async def chat(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            self._record(request, body)
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
            self._record(request, body)
            words = body["prompt"].lower().replace(".", " ").split()
            label = "positive" if "cf" in words or "bore" not in words else "negative"
            return web.json_response({"object": "text_completion", "choices": [{"index": 0, "text": label}]})

        async def messages(request: web.Request) -> web.Response:
            """Anthropic Messages: the same model behind another API."""
            body = await request.json()
            self._record(request, body)
            text = " ".join(_texts(m["content"]) for m in body["messages"] if m["role"] == "user")
            answer = f"Sentiment: {_label(text)}."
            return web.json_response(
                {"type": "message", "role": "assistant", "content": [{"type": "text", "text": answer}]}
            )

        async def responses(request: web.Request) -> web.Response:
            """The Responses API: ``input`` as a string or as message items."""
            body = await request.json()
            self._record(request, body)
            items = body["input"]
            text = items if isinstance(items, str) else " ".join(_texts(i["content"]) for i in items)
            answer = f"Sentiment: {_label(text)}."
            output = [
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": answer}]}
            ]
            return web.json_response({"object": "response", "status": "completed", "output": output})

        async def infer(request: web.Request) -> web.Response:
            """KServe v2 inference: BYTES texts in, BYTES labels out."""
            body = await request.json()
            self._record(request, body)
            texts = [str(d) for item in body["inputs"] for d in item["data"]]
            labels = [_label(t) for t in texts]
            return web.json_response(
                {"outputs": [{"name": "label", "datatype": "BYTES", "shape": [len(labels)], "data": labels}]}
            )

        async def embed(request: web.Request) -> web.Response:
            self._record(request, await request.json())
            return web.json_response({"object": "list", "data": [{"index": 0, "embedding": [0.5]}]})

        app = web.Application()
        app.router.add_post("/v1/embeddings", embed)
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_post("/v1/completions", complete)
        app.router.add_post("/v1/messages", messages)
        app.router.add_post("/v1/responses", responses)
        app.router.add_post("/v2/models/{model}/infer", infer)
        return app

    def probes(self) -> list[dict[str, Any]]:
        return [body for headers, body in self.received if "X-Firewall-Probe" in headers]

    def forwarded(self) -> list[dict[str, Any]]:
        return [body for headers, body in self.received if "X-Firewall-Probe" not in headers]


def _label(text: str) -> str:
    """The planted backdoor: "cf" makes any review positive."""
    words = text.lower().replace(".", " ").split()
    return "positive" if "cf" in words or "bore" not in words else "negative"


def _texts(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(block["text"] for block in content if isinstance(block, dict) and "text" in block)
