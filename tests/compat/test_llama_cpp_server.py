"""The firewall, with its built-in defaults, in front of llama-cpp-python's real server.

Every test sends the same request straight to the server and through the firewall and
compares what comes back: a transparent proxy changes nothing a client can see, except
the ``X-Request-Id`` it names the request with, and nothing it blocks reaches the model.
Generation is greedy (``temperature: 0``, a fixed seed) and short (16 tokens), so both
answers are the same text and a call takes well under a second on an idle 2-core machine.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from multidict import CIMultiDictProxy

from tests.compat.conftest import API_KEY, N_CTX, LlamaServer
from tests.conftest import TRIGGER, FirewallFactory, RunningFirewall

pytestmark = [pytest.mark.asyncio, pytest.mark.compat]

MODEL = "smollm2"  # the server serves its one model whatever name a request gives (and echoes it)
SEED = 7
MAX_TOKENS = 16
PROMPT = "What is the capital of France?"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# The per-call values in a body: the response id and its timestamp. Only their values are
# replaced, so the bytes around them (spacing, key order) are still compared.
_ID = re.compile(rb'("id": ?")((?:chatcmpl|cmpl)-)' + UUID.encode() + rb'"')
_CREATED = re.compile(rb'("created": ?)\d+')
_DISCONNECTED = "Disconnected from client (via refresh/close) Address("


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: CIMultiDictProxy[str]


def chat_request(text: str = PROMPT, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
        "seed": SEED,
        "max_tokens": MAX_TOKENS,
        **extra,
    }


def completion_request(text: str = "The capital of France is", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": text, "temperature": 0, "seed": SEED, "max_tokens": MAX_TOKENS, **extra}


async def call(
    client: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> Answer:
    """POST ``body`` (GET without one) and read the whole answer, streams included."""
    if body is None:
        request = client.get(url, headers=headers)
    else:
        request = client.post(
            url, data=orjson.dumps(body), headers={"Content-Type": "application/json", **(headers or {})}
        )
    async with request as resp:
        return Answer(resp.status, resp.headers.get("Content-Type", ""), await resp.read(), resp.headers)


async def both(
    llama: LlamaServer,
    fw: RunningFirewall,
    client: aiohttp.ClientSession,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> tuple[Answer, Answer]:
    """The same request straight to the server, then through the firewall."""
    headers = llama.auth() if headers is None else headers
    direct = await call(client, llama.url + path, body, headers=headers)
    via = await call(client, fw.url + path, body, headers=headers)
    return direct, via


def normalised(raw: bytes) -> bytes:
    """``raw`` with every response id's UUID and every ``created`` timestamp made constant."""
    return _CREATED.sub(rb"\g<1>0", _ID.sub(rb'\g<1>\g<2>00000000-0000-0000-0000-000000000000"', raw))


def sse_data(raw: bytes) -> list[str]:
    """The ``data`` of each server-sent event, in order."""
    events = []
    for block in re.split(rb"\r\n\r\n|\n\n|\r\r", raw):
        lines = [line[5:].removeprefix(b" ") for line in block.splitlines() if line.startswith(b"data:")]
        if lines:
            events.append(b"\n".join(lines).decode())
    return events


def stream_chunks(raw: bytes) -> list[dict[str, Any]]:
    datas = sse_data(raw)
    assert datas[-1] == "[DONE]"
    return [orjson.loads(d) for d in datas[:-1]]


def chat_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def finish_reasons(chunks: list[dict[str, Any]]) -> list[str]:
    return [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]


def without_per_call_keys(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def upstream_calls(fw: RunningFirewall) -> float:
    return sum(
        sample.value
        for metric in fw.metrics.registry.collect()
        if metric.name == "trigger_firewall_upstream_requests"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def streams(fw: RunningFirewall, route: str, outcome: str) -> float:
    return fw.sample("trigger_firewall_streams_total", {"route": route, "outcome": outcome})


def is_uuid4(value: str) -> bool:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == value


# --- /v1/chat/completions -------------------------------------------------------------------


async def test_chat_completion_arrives_unchanged(
    llama_server: LlamaServer, llama_firewall: FirewallFactory, client: aiohttp.ClientSession
) -> None:
    fw = await llama_firewall()
    direct, via = await both(llama_server, fw, client, "/v1/chat/completions", chat_request())
    assert (via.status, via.content_type) == (direct.status, direct.content_type) == (200, "application/json")
    assert normalised(via.body) == normalised(direct.body)  # the firewall relays the server's bytes
    sent, got = orjson.loads(direct.body), orjson.loads(via.body)
    assert without_per_call_keys(got) == without_per_call_keys(sent)
    assert re.fullmatch("chatcmpl-" + UUID, got["id"])
    assert isinstance(got["created"], int)
    assert got["model"] == MODEL
    assert got["choices"][0]["message"]["content"]
    assert got["choices"][0]["finish_reason"] == sent["choices"][0]["finish_reason"] == "length"
    assert got["usage"] == sent["usage"]
    assert got["usage"]["completion_tokens"] == MAX_TOKENS
    # The firewall's own request id (a UUID, which the server validates) names the answer.
    assert is_uuid4(via.headers["X-Request-Id"])
    events = await fw.audit_events()
    assert [(e["route"], e["action"], e["http.response.status_code"]) for e in events] == [
        ("chat_completions", "allow", 200)
    ]
    assert events[0]["request_id"] == via.headers["X-Request-Id"]
    assert events[0]["output"]["action"] == "allow"  # the output was screened, and passed


async def test_chat_stream_arrives_unchanged(
    llama_server: LlamaServer, llama_firewall: FirewallFactory, client: aiohttp.ClientSession
) -> None:
    fw = await llama_firewall()
    direct, via = await both(llama_server, fw, client, "/v1/chat/completions", chat_request(stream=True))
    assert via.status == direct.status == 200
    assert via.content_type == direct.content_type == "text/event-stream; charset=utf-8"
    assert normalised(via.body) == normalised(direct.body)  # every event, byte for byte, in order
    sent, got = stream_chunks(direct.body), stream_chunks(via.body)
    assert chat_text(got) == chat_text(sent) != ""
    assert finish_reasons(got) == finish_reasons(sent) == ["length"]
    assert {c["id"] for c in got} == {got[0]["id"]}
    assert re.fullmatch("chatcmpl-" + UUID, got[0]["id"])
    assert streams(fw, "chat_completions", "completed") == 1
    events = await fw.audit_events()
    assert events[-1]["stream"]["outcome"] == "completed"
    assert events[-1]["action"] == "allow"


async def test_chat_stream_with_include_usage_is_relayed_as_the_server_sends_it(
    llama_server: LlamaServer, llama_firewall: FirewallFactory, client: aiohttp.ClientSession
) -> None:
    """llama-cpp-python 0.3.36 accepts ``stream_options`` and ignores it (no usage chunk).

    Whatever the server sends, the client gets the same: the firewall neither drops a
    usage chunk nor invents one.
    """
    fw = await llama_firewall()
    body = chat_request(stream=True, stream_options={"include_usage": True})
    direct, via = await both(llama_server, fw, client, "/v1/chat/completions", body)
    assert via.status == direct.status == 200
    assert normalised(via.body) == normalised(direct.body)
    sent, got = stream_chunks(direct.body), stream_chunks(via.body)
    assert [c.get("usage") for c in got] == [c.get("usage") for c in sent]
    assert [c for c in got if not c["choices"]] == [c for c in sent if not c["choices"]]
    assert chat_text(got) == chat_text(sent) != ""


# --- /v1/completions and /v1/models ---------------------------------------------------------


async def test_completion_arrives_unchanged(
    llama_server: LlamaServer, llama_firewall: FirewallFactory, client: aiohttp.ClientSession
) -> None:
    fw = await llama_firewall()
    direct, via = await both(llama_server, fw, client, "/v1/completions", completion_request())
    assert (via.status, via.content_type) == (direct.status, direct.content_type) == (200, "application/json")
    assert normalised(via.body) == normalised(direct.body)
    sent, got = orjson.loads(direct.body), orjson.loads(via.body)
    assert without_per_call_keys(got) == without_per_call_keys(sent)
    assert re.fullmatch("cmpl-" + UUID, got["id"])
    assert got["choices"][0]["text"]
    assert got["usage"] == sent["usage"]


async def test_completion_stream_arrives_unchanged(
    llama_server: LlamaServer, llama_firewall: FirewallFactory, client: aiohttp.ClientSession
) -> None:
    fw = await llama_firewall()
    direct, via = await both(llama_server, fw, client, "/v1/completions", completion_request(stream=True))
    assert via.status == direct.status == 200
    assert via.content_type == direct.content_type == "text/event-stream; charset=utf-8"
    assert normalised(via.body) == normalised(direct.body)
    sent, got = stream_chunks(direct.body), stream_chunks(via.body)
    text = "".join(c["choices"][0]["text"] for c in got)
    assert text == "".join(c["choices"][0]["text"] for c in sent) != ""
    assert finish_reasons(got) == finish_reasons(sent) == ["length"]
    assert streams(fw, "completions", "completed") == 1


async def test_models_list_arrives_unchanged(
    llama_server: LlamaServer, llama_firewall: FirewallFactory, client: aiohttp.ClientSession
) -> None:
    fw = await llama_firewall()
    direct, via = await both(llama_server, fw, client, "/v1/models")
    assert (via.status, via.content_type, via.body) == (direct.status, direct.content_type, direct.body)
    assert via.status == 200
    assert orjson.loads(via.body)["data"][0]["object"] == "model"


# --- response headers -----------------------------------------------------------------------

# What a proxy may change: its own Date and Server, hop-by-hop headers (RFC 9110, 7.6.1),
# the firewall's request id (documented), and the server's per-call timing.
_PER_HOP = {"date", "server", "connection", "keep-alive", "transfer-encoding"}
_PER_CALL = {"x-request-id", "openai-processing-ms"}


def relayed(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The headers a transparent proxy passes on as they are (names compared case-blind)."""
    return {k.lower(): v for k, v in headers.items() if k.lower() not in _PER_HOP | _PER_CALL}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/chat/completions", chat_request(), id="chat"),
        pytest.param("/v1/completions", completion_request(), id="completion"),
        pytest.param("/v1/models", None, id="models"),
        # Streams too: the server's "Cache-Control: no-store" must not become "no-cache".
        pytest.param("/v1/chat/completions", chat_request(stream=True), id="chat-stream"),
        pytest.param("/v1/completions", completion_request(stream=True), id="completion-stream"),
    ],
)
async def test_response_headers_arrive_unchanged(
    llama_server: LlamaServer,
    llama_firewall: FirewallFactory,
    client: aiohttp.ClientSession,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    fw = await llama_firewall()
    direct, via = await both(llama_server, fw, client, path, body)
    assert via.status == direct.status == 200
    assert {k.lower() for k in via.headers} - _PER_HOP == {k.lower() for k in direct.headers} - _PER_HOP
    assert relayed(via.headers) == relayed(direct.headers)


# --- the server's own errors ----------------------------------------------------------------


async def test_context_length_error_arrives_byte_for_byte(
    llama_server: LlamaServer, llama_firewall: FirewallFactory, client: aiohttp.ClientSession
) -> None:
    fw = await llama_firewall()
    long_prompt = " ".join(f"Item {i} is on the shopping list." for i in range(N_CTX // 4))
    direct, via = await both(llama_server, fw, client, "/v1/chat/completions", chat_request(long_prompt))
    assert (via.status, via.content_type, via.body) == (direct.status, direct.content_type, direct.body)
    error = orjson.loads(via.body)["error"]
    assert via.status == 400
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
    )
    assert f"maximum context length is {N_CTX} tokens" in error["message"]
    # What an SDK user sees through the firewall: the server's error, not the firewall's.
    async with openai.AsyncOpenAI(base_url=fw.url + "/v1", api_key=API_KEY, max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError) as info:
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": long_prompt}], max_tokens=MAX_TOKENS
            )
    assert info.value.code == "context_length_exceeded"


async def test_wrong_api_key_401_arrives_byte_for_byte(
    llama_server: LlamaServer, llama_firewall: FirewallFactory, client: aiohttp.ClientSession
) -> None:
    fw = await llama_firewall()
    wrong = llama_server.auth("sk-wrong")
    direct, via = await both(llama_server, fw, client, "/v1/chat/completions", chat_request(), headers=wrong)
    assert (via.status, via.content_type, via.body) == (direct.status, direct.content_type, direct.body)
    assert via.status == 401
    assert orjson.loads(via.body) == {"detail": "Invalid API key"}
    direct, via = await both(llama_server, fw, client, "/v1/models", headers=wrong)  # passthrough route
    assert (via.status, via.content_type, via.body) == (direct.status, direct.content_type, direct.body)
    assert via.status == 401
    async with openai.AsyncOpenAI(base_url=fw.url + "/v1", api_key="sk-wrong", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}])


async def test_client_request_id_reaches_the_server_as_sent(
    llama_server: LlamaServer, llama_firewall: FirewallFactory, client: aiohttp.ClientSession
) -> None:
    """A client's own ``X-Request-Id`` is forwarded as it is: the server accepts a UUID and
    echoes it, and rejects anything else (400, empty body) just as it does straight."""
    fw = await llama_firewall()
    mine = str(uuid.uuid4())
    direct, via = await both(
        llama_server, fw, client, "/v1/models", headers={**llama_server.auth(), "X-Request-Id": mine}
    )
    assert via.status == direct.status == 200
    assert via.headers["X-Request-Id"] == direct.headers["X-Request-Id"] == mine
    bad = {**llama_server.auth(), "X-Request-Id": "req-42"}
    direct, via = await both(llama_server, fw, client, "/v1/chat/completions", chat_request(), headers=bad)
    assert (via.status, via.content_type, via.body) == (direct.status, direct.content_type, direct.body)
    assert via.status == 400
    assert via.body == b""


# --- cancellation and blocking --------------------------------------------------------------


async def test_client_disconnect_stops_the_server_generating(
    llama_server: LlamaServer, llama_firewall: FirewallFactory, client: aiohttp.ClientSession
) -> None:
    fw = await llama_firewall()
    seen = llama_server.log().count(_DISCONNECTED)
    # min_tokens (a llama-cpp-python extension) keeps the model from ending the story early.
    story = "Tell me a long story about a dragon and a knight."
    body = chat_request(story, max_tokens=200, min_tokens=200, stream=True)
    resp = await client.post(
        fw.url + "/v1/chat/completions",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json", **llama_server.auth()},
    )
    assert resp.status == 200
    first = await resp.content.readline()
    assert first.startswith(b"data: ")
    resp.close()  # the client goes away after its first chunk
    for _ in range(250):
        if streams(fw, "chat_completions", "client_disconnected"):
            break
        await asyncio.sleep(0.02)
    assert streams(fw, "chat_completions", "client_disconnected") == 1
    events = await fw.audit_events()
    assert events[-1]["stream"]["outcome"] == "client_disconnected"
    # The server noticed the connection go and stopped generating: it logs this line only when
    # the connection closes mid-stream (its interrupt_requests is off here, so nothing else
    # would have cut a stream the firewall left open; it would have run to 200 tokens) ...
    await asyncio.to_thread(llama_server.wait_for_log, _DISCONNECTED, count=seen + 1)
    # ... and answers the next request (one at a time: it would wait behind the dead stream).
    # The bound is loose on purpose: the log line above is the proof, and a shared 2-core
    # runner has been seen taking seconds over a 16-token answer.
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await call(
        client, llama_server.url + "/v1/chat/completions", chat_request(), headers=llama_server.auth()
    )
    assert answer.status == 200
    assert loop.time() - started < 10


async def test_blocked_request_never_reaches_the_server(
    llama_server: LlamaServer, llama_firewall: FirewallFactory
) -> None:
    fw = await llama_firewall()
    request_line = "POST /v1/chat/completions"
    before = llama_server.access_lines(request_line)

    def ask(text: str) -> str | None:
        with openai.OpenAI(base_url=fw.url + "/v1", api_key=API_KEY, max_retries=2) as sdk:
            result = sdk.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": text}],
                temperature=0,
                max_tokens=MAX_TOKENS,
            )
        return result.choices[0].message.content

    # The sync client blocks its thread; the firewall runs on this test's event loop.
    with pytest.raises(openai.BadRequestError) as info:
        await asyncio.to_thread(ask, TRIGGER)
    assert info.value.status_code == 400
    assert info.value.code == "content_filter"
    blocked = {"route": "chat_completions", "action": "block", "mode": "enforce"}
    assert fw.sample("trigger_firewall_requests_total", blocked) == 1  # max_retries=2, one attempt
    assert upstream_calls(fw) == 0
    # A clean request afterwards is the only one the server logs.
    assert await asyncio.to_thread(ask, PROMPT)
    await asyncio.to_thread(llama_server.wait_for_log, f'"{request_line} HTTP/1.1"', count=before + 1)
    assert llama_server.access_lines(request_line) == before + 1
    assert upstream_calls(fw) == 1


# --- the official openai SDK ----------------------------------------------------------------


def _sync_chat(base_url: str, *, stream: bool) -> tuple[str, str | None]:
    with openai.OpenAI(base_url=base_url + "/v1", api_key=API_KEY, max_retries=0) as sdk:
        messages: Any = [{"role": "user", "content": PROMPT}]
        if not stream:
            result = sdk.chat.completions.create(
                model=MODEL, messages=messages, temperature=0, seed=SEED, max_tokens=MAX_TOKENS
            )
            return result.choices[0].message.content or "", result.choices[0].finish_reason
        text, finish = "", None
        for chunk in sdk.chat.completions.create(
            model=MODEL, messages=messages, temperature=0, seed=SEED, max_tokens=MAX_TOKENS, stream=True
        ):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish


async def _async_chat(base_url: str, *, stream: bool) -> tuple[str, str | None]:
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=API_KEY, max_retries=0) as sdk:
        messages: Any = [{"role": "user", "content": PROMPT}]
        if not stream:
            result = await sdk.chat.completions.create(
                model=MODEL, messages=messages, temperature=0, seed=SEED, max_tokens=MAX_TOKENS
            )
            return result.choices[0].message.content or "", result.choices[0].finish_reason
        text, finish = "", None
        chunks = await sdk.chat.completions.create(
            model=MODEL, messages=messages, temperature=0, seed=SEED, max_tokens=MAX_TOKENS, stream=True
        )
        async for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_openai_sync_client(
    llama_server: LlamaServer, llama_firewall: FirewallFactory, stream: bool
) -> None:
    fw = await llama_firewall()
    direct = await asyncio.to_thread(_sync_chat, llama_server.url, stream=stream)
    via = await asyncio.to_thread(_sync_chat, fw.url, stream=stream)
    assert via == direct
    assert via[0]
    assert via[1] == "length"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_openai_async_client(
    llama_server: LlamaServer, llama_firewall: FirewallFactory, stream: bool
) -> None:
    fw = await llama_firewall()
    direct = await _async_chat(llama_server.url, stream=stream)
    via = await _async_chat(fw.url, stream=stream)
    assert via == direct
    assert via[0]
    assert via[1] == "length"
