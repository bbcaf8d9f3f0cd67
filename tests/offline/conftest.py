"""The demo upstream on loopback, in the test's loop or in a thread of its own (for the CLI,
which runs its own loop)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from firewall.demo.upstream import start_demo_upstream


@pytest.fixture
async def echo_upstream() -> AsyncIterator[str]:
    """The demo upstream without the classifier: demo-chat, and the echo model for any other name."""
    runner, port = await start_demo_upstream(port=0, stream_delay=0.0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _serve_in_thread(classifier: Any = None) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    started: list[tuple[Any, int]] = []
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        started.append(loop.run_until_complete(start_demo_upstream(port=0, classifier=classifier)))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    runner, port = started[0]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def threaded_upstream() -> Iterator[str]:
    yield from _serve_in_thread()
