"""Hostile requests through the real server: smuggling shapes, header injection,
nesting bombs, compressed bodies, and the memory they leave behind.

Raw bytes go over a socket where an HTTP client would refuse to send them.
Each case checks the answer, that nothing reached the upstream, and (for the
barrage at the end) that the firewall process's RSS stays flat.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import tracemalloc
import zlib
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from loadtests.scenarios import running_stack
from tests.conftest import FakeUpstream, FirewallFactory, chat_body
from tests.reliability.conftest import ScriptedFirewall, ScriptedUpstream

pytestmark = pytest.mark.asyncio

ZWSP = "\u200b"
BODY = orjson.dumps(chat_body("hello"))


async def raw_exchange(url: str, data: bytes, timeout: float = 3.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                out += chunk
    except TimeoutError:
        pass  # a keep-alive connection the server left open: we have what it sent
    writer.close()
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def head(extra: bytes, body: bytes = BODY, path: bytes = b"/v1/chat/completions") -> bytes:
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + extra
        + b"\r\n"
        + body
    )


SMUGGLED = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
CHUNKED = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
DEEP = b'{"a":' + b"[" * 1100 + b"]" * 1100 + b"}"


@pytest.mark.parametrize(
    "request_bytes",
    [
        # CL.TE: a front end honouring Content-Length would forward the smuggled request.
        head(b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(CHUNKED), CHUNKED + SMUGGLED),
        # TE.CL: the other order of the same conflict.
        head(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", CHUNKED + SMUGGLED),
        head(b"Content-Length: %d\r\nContent-Length: 3\r\n" % len(BODY)),
        head(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", CHUNKED),
        head(b"Transfer-Encoding: xchunked\r\n", CHUNKED),
        head(b"Transfer-Encoding: chunked\r\n", b"zz\r\n" + BODY + b"\r\n0\r\n\r\n"),
        head(b"Content-Length: -1\r\n"),
        head(b"Content-Length: 1e3\r\n"),
        head(b"X-Injected: a\r\n b\r\nContent-Length: %d\r\n" % len(BODY)),  # obsolete line folding
        head(b"X-Injected: a\rSet-Cookie: b\r\nContent-Length: %d\r\n" % len(BODY)),  # bare CR
        head(b"X-Injected: a\x00b\r\nContent-Length: %d\r\n" % len(BODY)),  # NUL in a value
        head(b"X Injected: a\r\nContent-Length: %d\r\n" % len(BODY)),  # space in a name
    ],
    ids=[
        "cl-te",
        "te-cl",
        "two-content-lengths",
        "two-transfer-encodings",
        "unknown-transfer-encoding",
        "bad-chunk-size",
        "negative-length",
        "float-length",
        "obs-fold",
        "bare-cr",
        "nul-in-header",
        "space-in-name",
    ],
)
async def test_smuggling_and_injection_shapes_are_refused_before_forwarding(
    firewall: FirewallFactory, upstream: FakeUpstream, request_bytes: bytes
):
    fw = await firewall()
    answer = await raw_exchange(fw.url, request_bytes)
    assert status_of(answer) == 400
    await asyncio.sleep(0.05)
    assert upstream.received == []  # neither the request nor anything smuggled inside it
    answer = await raw_exchange(fw.url, head(b"Content-Length: %d\r\nConnection: close\r\n" % len(BODY)))
    assert status_of(answer) == 200  # the process is fine


async def test_request_id_injection_is_replaced_not_echoed(firewall: FirewallFactory, upstream: FakeUpstream):
    fw = await firewall()
    hostile = b"abc<script>\xc3\xa9" + b"x" * 200
    answer = await raw_exchange(
        fw.url,
        head(b"X-Request-Id: " + hostile + b"\r\nContent-Length: %d\r\nConnection: close\r\n" % len(BODY)),
    )
    assert status_of(answer) == 200
    assert b"<script>" not in answer
    sent = upstream.received[0]["headers"]["X-Request-Id"]
    assert "<script>" not in sent
    assert len(sent) <= 128


@pytest.mark.parametrize("depth", [1025, 100_000])
async def test_deeply_nested_json_is_400_and_counted(
    firewall: FirewallFactory, upstream: FakeUpstream, client, depth: int
):
    fw = await firewall()
    body = b'{"model": "m", "messages": [{"role": "user", "content": ' + b"[" * depth + b"]" * depth + b"}]}"
    async with client.post(fw.url + "/v1/chat/completions", data=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    assert upstream.received == []
    assert (
        fw.sample(
            "trigger_firewall_rejected_requests_total",
            {"route": "chat_completions", "reason": "invalid_json"},
        )
        == 1
    )


@pytest.mark.parametrize("encoding", ["deflate", "br", "zstd", "gzip, identity", "GZIP"])
async def test_compressed_request_bodies_get_415(
    firewall: FirewallFactory, upstream: FakeUpstream, client, encoding: str
):
    """Compressed bodies are refused on screened routes (a bomb is never inflated)."""
    fw = await firewall()
    bomb = zlib.compress(b"{" + b" " * (50 * 1024 * 1024))
    async with client.post(
        fw.url + "/v1/chat/completions", data=bomb, headers={"Content-Encoding": encoding}
    ) as resp:
        assert resp.status == 415
        assert (await resp.json())["error"]["code"] == "unsupported_content_encoding"
    assert upstream.received == []
    assert (
        fw.sample(
            "trigger_firewall_rejected_requests_total",
            {"route": "chat_completions", "reason": "unsupported_encoding"},
        )
        == 1
    )


async def test_nul_bytes_escaped_pass_raw_are_refused(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall()
    async with client.post(fw.url + "/v1/chat/completions", data=orjson.dumps(chat_body("a\x00b"))) as resp:
        assert resp.status == 200  # JSON's \u0000 is legitimate text
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "a\x00b"}]}'
    async with client.post(fw.url + "/v1/chat/completions", data=raw) as resp:
        assert resp.status == 400  # a raw control character is not JSON
    assert len(upstream.received) == 1


async def test_gzip_bomb_from_the_upstream_is_inflated_only_to_the_limit(
    scripted: ScriptedUpstream, scripted_firewall: ScriptedFirewall
):
    """An upstream that ignores ``Accept-Encoding: identity`` and sends a 64 MiB bomb."""
    bomb = gzip.compress(b"\x00" * (64 * 1024 * 1024), compresslevel=1)

    async def send_bomb(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    scripted.handler = send_bomb
    fw = await scripted_firewall(server={"max_response_bytes": 1024 * 1024})
    tracemalloc.start()
    try:
        async with (
            aiohttp.ClientSession(auto_decompress=False) as raw_client,
            raw_client.post(fw.url + "/v1/chat/completions", data=orjson.dumps(chat_body("hi"))) as resp,
        ):
            status = resp.status
            relayed = await resp.read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 200  # unreadable output fails open by default (detector errors counted)
    assert relayed == bomb  # passed on still compressed, never inflated whole
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
    assert (
        fw.sample(
            "trigger_firewall_detector_fail_open_total", {"detector": "invisible_chars", "phase": "output"}
        )
        == 1
    )


async def test_output_block_of_a_deeply_nested_response_is_an_error_not_a_500(
    scripted: ScriptedUpstream, scripted_firewall: ScriptedFirewall, client
):
    """Regression: the content_filter rewrite re-serialises the upstream body; nesting orjson
    can read but not write (255+ levels) used to crash the handler with a plain 500."""
    deep = b"[" * 300 + b"]" * 300
    content = orjson.dumps(f"bad{ZWSP * 4}answer")
    body = b'{"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": ' + content
    body += b'}}], "usage": ' + deep + b"}"

    async def nested(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    scripted.handler = nested
    fw = await scripted_firewall(blocking={"response_style": "content_filter"})
    async with client.post(fw.url + "/v1/chat/completions", data=orjson.dumps(chat_body("hi"))) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "content_filter"


async def test_upstream_url_credentials_work_next_to_a_client_authorization_header(
    scripted: ScriptedUpstream, scripted_firewall: ScriptedFirewall, client
):
    """Regression: aiohttp refuses a URL with credentials plus an Authorization header, which
    turned every authenticated client request into a 500."""
    seen: list[str | None] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"choices": []})

    scripted.handler = record
    url = scripted.url.replace("://", "://svc:s3cret@")
    fw = await scripted_firewall(upstream={"url": url})
    for headers in ({}, {"Authorization": "Bearer client-token"}):
        async with client.post(
            fw.url + "/v1/chat/completions", data=orjson.dumps(chat_body("hi")), headers=headers
        ) as resp:
            assert resp.status == 200
    assert seen == ["Basic " + base64.b64encode(b"svc:s3cret").decode()] * 2


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_hostile_barrage_leaves_memory_flat_and_the_process_serving():
    """Rounds of every hostile shape against a real process; RSS growth between the
    first and last third of the run stays within a few MiB."""
    shapes = [
        head(b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(CHUNKED), CHUNKED + SMUGGLED),
        head(b"X-Injected: a\x00b\r\nContent-Length: %d\r\n" % len(BODY)),
        head(b"Content-Length: %d\r\n" % len(DEEP), DEEP),
        head(b"Content-Length: %d\r\n" % (len(BODY) + 2), b"\xff\xfe" + BODY),
        head(b"Content-Encoding: gzip\r\nContent-Length: %d\r\n" % len(BODY), BODY),
        head(b"Content-Length: 60000\r\n", orjson.dumps(chat_body("x" * 59_900))[:60000].ljust(60000, b" ")),
    ]
    shapes = [s.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n") for s in shapes]
    async with running_stack() as stack:
        pid = stack.firewall_pid
        samples = []
        for round_ in range(30):
            answers = await asyncio.gather(*(raw_exchange(stack.proxy_url, s, 10.0) for s in shapes * 3))
            for shape, answer in zip(shapes * 3, answers, strict=True):
                assert answer, shape[:120]
                assert 400 <= status_of(answer) < 500 or status_of(answer) == 200
            if round_ % 5 == 4:
                samples.append(rss_kb(pid))
        async with (
            aiohttp.ClientSession() as session,
            session.post(stack.proxy_url + "/v1/chat/completions", data=BODY) as resp,
        ):
            assert resp.status == 200
        assert stack.firewall.poll() is None
    growth_mib = (samples[-1] - samples[1]) / 1024
    shown = [round(s / 1024, 1) for s in samples]
    print(f"hostile barrage: RSS samples (MiB) {shown}, growth {growth_mib:+.2f}")
    assert growth_mib < 4, samples


async def test_compressed_bodies_on_unscreened_routes_are_relayed_as_sent(
    scripted: ScriptedUpstream, scripted_firewall: ScriptedFirewall, client
):
    """Regression: aiohttp inflated request bodies by default, so the upstream got plain
    bytes labelled ``Content-Encoding: gzip`` and failed to decode them."""
    seen: list[tuple[str | None, bytes]] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append((request.headers.get("Content-Encoding"), await request.read()))
        return web.json_response({})

    scripted.handler = record
    fw = await scripted_firewall(routing={"passthrough_prefixes": ["/v1/files"]})
    plain = b'{"purpose": "fine-tune"}'
    async with client.post(
        fw.url + "/v1/files", data=gzip.compress(plain), headers={"Content-Encoding": "gzip"}
    ) as resp:
        assert resp.status == 200
    assert seen == [("gzip", plain)]  # the upstream (an aiohttp server) inflated what was sent
