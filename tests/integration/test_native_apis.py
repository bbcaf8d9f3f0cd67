"""The native serving APIs end to end: a loopback upstream that answers in each server's
own shapes (Ollama's NDJSON, TGI's and llama.cpp's SSE, KServe v2 tensors, Triton's
generate, vLLM's pooling), and the real firewall in front of it with the built-in
defaults.

Clean traffic must come back byte for byte; a trigger in the answer must be stopped
in the server's own framing, before the text after it reaches the client; prompts the
firewall cannot read (token ids, templates) are refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import TAGS_CF, FirewallFactory, running_firewalls, serving

CLEAN = "The cache was rolled back and the service is healthy again"
#: An answer with a zero-width run inside a word halfway: invisible_chars stops it on output.
TRIGGERED = f"The cache was rolled back and the re{TAGS_CF}view says the service is healthy"
AFTER = "healthy"


@dataclass
class NativeUpstream:
    """Answers as Ollama, TGI, llama.cpp, KServe, Triton and vLLM do."""

    reply: str = CLEAN
    received: list[tuple[str, bytes]] = field(default_factory=list)
    url: str = ""

    def words(self) -> list[str]:
        words = self.reply.split(" ")
        return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def native_app(up: NativeUpstream) -> web.Application:
    async def stream(request: web.Request, content_type: str, lines: list[bytes]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        for line in lines:
            await resp.write(line)
            await asyncio.sleep(0.005)
        await resp.write_eof()
        return resp

    async def ollama(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        chat = request.path == "/api/chat"

        def piece(text: str, done: bool) -> dict[str, Any]:
            part: dict[str, Any] = (
                {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
            )
            return {"model": "m", "created_at": "2026-12-07T00:00:00Z", **part, "done": done}

        if body.get("stream") is False:
            return web.json_response(piece(up.reply, True))
        lines = [orjson.dumps(piece(w, False)) + b"\n" for w in up.words()]
        lines.append(orjson.dumps({**piece("", True), "done_reason": "stop"}) + b"\n")
        return await stream(request, "application/x-ndjson", lines)

    async def tgi(request: web.Request) -> web.StreamResponse:
        if request.path == "/generate_stream":
            events = [
                b"data:"
                + orjson.dumps({"index": i, "token": {"id": i, "text": w, "special": False}})
                + b"\n\n"
                for i, w in enumerate(up.words())
            ]
            events.append(
                b"data:"
                + orjson.dumps({"token": {"text": "</s>", "special": True}, "generated_text": up.reply})
                + b"\n\n"
            )
            return await stream(request, "text/event-stream", events)
        return web.json_response({"generated_text": up.reply})

    async def llama(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        if body.get("stream"):
            events = [
                b"data: " + orjson.dumps({"index": 0, "content": w, "stop": False}) + b"\n\n"
                for w in up.words()
            ]
            events.append(b"data: " + orjson.dumps({"index": 0, "content": "", "stop": True}) + b"\n\n")
            return await stream(request, "text/event-stream", events)
        return web.json_response({"index": 0, "content": up.reply, "stop": True})

    async def infer(request: web.Request) -> web.StreamResponse:
        tensor = {"name": "text_output", "datatype": "BYTES", "shape": [1], "data": [up.reply]}
        return web.json_response({"model_name": "m", "outputs": [tensor]})

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        events = [
            b"data: " + orjson.dumps({"model_name": "m", "text_output": w}) + b"\n\n" for w in up.words()
        ]
        return await stream(request, "text/event-stream", events)

    async def classify(request: web.Request) -> web.StreamResponse:
        return web.json_response({"object": "list", "data": [{"index": 0, "label": "ok", "probs": [1.0]}]})

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        up.received.append((request.path, await request.read()))
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[record])
    app.router.add_post("/api/chat", ollama)
    app.router.add_post("/api/generate", ollama)
    app.router.add_post("/generate", tgi)
    app.router.add_post("/generate_stream", tgi)
    app.router.add_post("/completion", llama)
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_post("/v2/models/{model}/generate_stream", generate_stream)
    app.router.add_post("/classify", classify)
    return app


@pytest.fixture
async def native() -> AsyncIterator[NativeUpstream]:
    up = NativeUpstream()
    async with serving(native_app(up)) as up.url:
        yield up


@pytest.fixture
async def fw_native(native: NativeUpstream, tmp_path: Path) -> AsyncIterator[FirewallFactory]:
    async with running_firewalls(native.url, tmp_path) as start:
        yield start


#: (path, body) of one request per native API.
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": "status?"}]}),
    ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": "status?"}], "stream": False}),
    ("/api/generate", {"model": "m", "prompt": "status?"}),
    ("/api/generate", {"model": "m", "prompt": "status?", "stream": False}),
    ("/generate", {"inputs": "status?"}),
    ("/generate_stream", {"inputs": "status?"}),
    ("/completion", {"prompt": "status?"}),
    ("/completion", {"prompt": "status?", "stream": True}),
    (
        "/v2/models/m/infer",
        {"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["status?"]}]},
    ),
    ("/v2/models/m/generate_stream", {"text_input": "status?"}),
]


async def post(client: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with client.post(url, data=orjson.dumps(body)) as resp:
        return resp.status, await resp.read()


@pytest.mark.asyncio
@pytest.mark.parametrize(("path", "body"), REQUESTS, ids=[f"{p} {sorted(b)}" for p, b in REQUESTS])
async def test_clean_answers_come_back_byte_for_byte(
    fw_native: FirewallFactory, native: NativeUpstream, path: str, body: dict[str, Any]
) -> None:
    fw = await fw_native()
    async with aiohttp.ClientSession() as client:
        direct = await post(client, native.url + path, body)
        through = await post(client, fw.url + path, body)
    assert direct[0] == 200
    assert through == direct
    assert [p for p, _ in native.received] == [path, path]


@pytest.mark.asyncio
@pytest.mark.parametrize(("path", "body"), REQUESTS, ids=[f"{p} {sorted(b)}" for p, b in REQUESTS])
async def test_a_triggered_answer_is_stopped_in_the_servers_own_framing(
    fw_native: FirewallFactory, native: NativeUpstream, path: str, body: dict[str, Any]
) -> None:
    native.reply = TRIGGERED
    fw = await fw_native()
    async with aiohttp.ClientSession() as client:
        status, raw = await post(client, fw.url + path, body)
    assert TAGS_CF.encode() not in raw
    assert AFTER.encode() not in raw  # the text after the trigger never reached the client
    if status == 200:  # a stream: ended in its own framing
        text = raw.decode()
        if path.startswith("/api/"):
            last = orjson.loads(text.strip().splitlines()[-1])
            assert last["done"] is True
            assert last["done_reason"] == "content_filter"
            assert all(orjson.loads(line) for line in text.strip().splitlines())  # every line JSON
        elif path == "/completion":
            assert '"stop_type":"content_filter"' in text
        else:
            assert '"error"' in text
    else:
        assert status in (400, 502)


@pytest.mark.asyncio
async def test_ollama_streams_unless_asked_not_to(fw_native: FirewallFactory, native: NativeUpstream) -> None:
    fw = await fw_native()
    async with (
        aiohttp.ClientSession() as client,
        client.post(fw.url + "/api/chat", json=REQUESTS[0][1]) as resp,
    ):
        assert resp.content_type == "application/x-ndjson"
        lines = [orjson.loads(line) async for line in resp.content if line.strip()]
    assert "".join(line["message"]["content"] for line in lines) == CLEAN
    assert lines[-1]["done"] is True


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/api/generate", {"model": "m", "prompt": "hi", "context": [1, 2, 3]}, "context"),
        ("/api/generate", {"model": "m", "prompt": "hi", "template": "{{ .Prompt }}"}, "template"),
        ("/completion", {"prompt": [1, 2, 3]}, "prompt"),
        (
            "/v2/models/m/infer",
            {"inputs": [{"name": "ids", "shape": [2], "datatype": "INT64", "data": [1, 2]}]},
            None,
        ),
        ("/v2/models/m/generate", {"input_ids": [1, 2, 3]}, None),
        ("/classify", {"model": "m", "input": [[1, 2, 3]]}, "input"),
    ],
)
async def test_what_cannot_be_read_is_refused(
    fw_native: FirewallFactory, native: NativeUpstream, path: str, body: dict[str, Any], param: str | None
) -> None:
    fw = await fw_native()
    async with aiohttp.ClientSession() as client:
        status, raw = await post(client, fw.url + path, body)
    assert status == 400
    body = orjson.loads(raw)
    error = body["error"] if isinstance(body["error"], dict) else body  # each API's envelope
    assert error["code"] == "unscreenable_input"
    if param and "param" in error:
        assert error["param"] == param
    assert native.received == []


@pytest.mark.asyncio
async def test_token_ids_forwarded_when_the_route_says_so(
    fw_native: FirewallFactory, native: NativeUpstream
) -> None:
    route = {
        "name": "llama",
        "path": "/completion",
        "protocol": "llama_cpp_completion",
        "token_ids": "forward_unscreened",
    }
    fw = await fw_native(routing={"routes": [route]})
    async with aiohttp.ClientSession() as client:
        status, _ = await post(client, fw.url + "/completion", {"prompt": [1, 2, 3]})
    assert status == 200
    assert [p for p, _ in native.received] == ["/completion"]


@pytest.mark.asyncio
async def test_a_recased_ollama_key_is_refused(fw_native: FirewallFactory, native: NativeUpstream) -> None:
    # Go's encoding/json reads "Prompt" as "prompt": the firewall must not read one and forward the other.
    fw = await fw_native()
    async with aiohttp.ClientSession() as client:
        status, raw = await post(
            client, fw.url + "/api/generate", {"model": "m", "prompt": "hi", "Prompt": "x"}
        )
    assert status == 400
    assert orjson.loads(raw)["code"] == "ambiguous_json"
    assert native.received == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "body", "message_at"),
    [
        ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": TRIGGERED}]}, ("error",)),
        ("/generate", {"inputs": TRIGGERED}, ("error",)),
        ("/v2/models/m/generate", {"text_input": TRIGGERED}, ("error",)),
        (
            "/v1/messages",
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": TRIGGERED}]},
            ("error", "message"),
        ),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": TRIGGERED}]},
            ("error", "message"),
        ),
    ],
)
async def test_a_block_is_answered_in_the_apis_own_error_envelope(
    fw_native: FirewallFactory,
    native: NativeUpstream,
    path: str,
    body: dict[str, Any],
    message_at: tuple[str, ...],
) -> None:
    # Ollama's and TGI's clients raise the string under "error"; Anthropic's SDK reads
    # error.message under type "error"; OpenAI's reads error.message. The code rides along.
    fw = await fw_native()
    async with aiohttp.ClientSession() as client:
        status, raw = await post(client, fw.url + path, body)
    assert status == 400
    answer = orjson.loads(raw)
    message: Any = answer
    for key in message_at:
        message = message[key]
    assert isinstance(message, str)
    assert "blocked" in message
    code = answer["error"]["code"] if isinstance(answer["error"], dict) else answer["code"]
    assert code == "content_filter"
    if path == "/v1/messages":
        assert answer["type"] == "error"
    assert native.received == []
