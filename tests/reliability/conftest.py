"""Fixtures for the reliability suites: a scriptable upstream, a fault ledger, a report.

``ScriptedUpstream`` is a real aiohttp server on loopback whose handler each test
replaces, for faults the shared ``FakeUpstream`` cannot produce (a reset after
part of a body, a stall in the middle of a stream, an endless SSE event). The
ledger records every fault a test injects and whether the firewall was still
serving a clean request afterwards; ``pytest_terminal_summary`` prints it, with
the load-accounting table, at the end of the run (no ``-s`` needed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import RunningFirewall, chat_body, running_firewalls

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Filled by the tests, printed by pytest_terminal_summary.
FAULTS: list[dict[str, Any]] = []
LOAD_TABLES: list[str] = []


@dataclass
class ScriptedUpstream:
    """An upstream whose handler the test sets; it records cancellations it observes."""

    url: str = ""
    handler: Handler | None = None
    requests: int = 0
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.2)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        bound = next(a[1] for a in self.runner.addresses if isinstance(a, tuple))
        self.url = f"http://127.0.0.1:{bound}"

    async def stop(self) -> None:
        """Close the listener and every connection (the upstream process "dies")."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        await request.read()
        try:
            if self.handler is None:
                return web.json_response(_completion("ok"))
            return await self.handler(request)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled.set()
            raise


def _completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedUpstream]:
    up = ScriptedUpstream()
    await up.start()
    yield up
    await up.stop()


ScriptedFirewall = Callable[..., Awaitable[RunningFirewall]]


@pytest.fixture
async def scripted_firewall(scripted: ScriptedUpstream, tmp_path: Path) -> AsyncIterator[ScriptedFirewall]:
    """Like the shared ``firewall`` fixture, in front of the scripted upstream."""
    async with running_firewalls(scripted.url, tmp_path) as start:
        yield start


class FaultLedger:
    """Records one injected fault per test and whether the firewall survived it."""

    def __init__(self, test: str) -> None:
        self.test = test
        self.entry: dict[str, Any] | None = None

    def inject(self, fault: str, expected: str) -> None:
        self.entry = {"test": self.test, "fault": fault, "expected": expected, "survived": False}
        FAULTS.append(self.entry)

    async def survived(
        self,
        fw: RunningFirewall,
        client: aiohttp.ClientSession,
        heal: Callable[[], None] | None = None,
        expect: int = 200,
    ) -> None:
        """Prove the process still serves: nothing left in flight, and once ``heal`` has
        repaired the upstream a clean request gets ``expect``."""
        assert self.entry is not None, "inject() first"
        for _ in range(150):
            if fw.server.state.inflight == 0:
                break
            await asyncio.sleep(0.02)
        assert fw.server.state.inflight == 0
        if heal is not None:
            heal()
        status, _ = await clean_post(client, fw.url)
        assert status == expect
        self.entry["survived"] = True


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> FaultLedger:
    return FaultLedger(request.node.name)


async def wait_for_tasks(baseline: int, timeout: float = 3.0) -> int:
    """Wait until the loop has no more tasks than ``baseline``; return the count seen last."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    count = len(asyncio.all_tasks())
    while count > baseline and loop.time() < deadline:
        await asyncio.sleep(0.02)
        count = len(asyncio.all_tasks())
    return count


async def clean_post(client: aiohttp.ClientSession, url: str, **extra: Any) -> tuple[int, bytes]:
    async with client.post(
        url + "/v1/chat/completions",
        data=orjson.dumps(chat_body("hello there", **extra)),
        headers={"Content-Type": "application/json"},
    ) as resp:
        return resp.status, await resp.read()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FAULTS and not LOAD_TABLES:
        return
    tr = terminalreporter
    tr.section("reliability summary")
    for table in LOAD_TABLES:
        tr.write_line(table)
    if FAULTS:
        survived = sum(1 for f in FAULTS if f["survived"])
        tr.write_line(f"faults injected: {len(FAULTS)}, survived: {survived}")
        for f in FAULTS:
            mark = "ok  " if f["survived"] else "FAIL"
            tr.write_line(f"  {mark} {f['fault']:<58} -> {f['expected']}")
