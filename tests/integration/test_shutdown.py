"""Graceful shutdown with real signals: the firewall runs as its own process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from tests.conftest import FakeUpstream, chat_body

pytestmark = pytest.mark.asyncio


async def start_process(config: dict, tmp_path: Path) -> tuple[asyncio.subprocess.Process, int, int]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "firewall",
        "serve",
        "--config",
        str(path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        while True:
            line = await proc.stderr.readline()
            assert line, "firewall exited before listening"
            event = orjson.loads(line)
            if event.get("message") == "listening":
                proxy = int(event["proxy"].rsplit(":", 1)[1])
                admin = int(event["admin"].rsplit(":", 1)[1])
            elif event.get("message") == "ready":  # detectors loaded: /readyz is 200 from here
                return proc, proxy, admin


def process_config(upstream_url: str, tmp_path: Path, **server: object) -> dict:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "admin_port": 0, **server},
        "upstream": {"url": upstream_url},
        "audit": {"destination": str(tmp_path / "audit.jsonl")},
    }


async def test_sigterm_drains_inflight_stream_then_exits(upstream: FakeUpstream, client, tmp_path: Path):
    upstream.chunks = [f"w{i} " for i in range(30)]
    upstream.chunk_delay = 0.05  # a 1.5 s stream
    cfg = process_config(upstream.url, tmp_path, drain_delay_seconds=0.3, shutdown_timeout_seconds=10)
    proc, port, admin = await start_process(cfg, tmp_path)
    try:
        async with client.get(f"http://127.0.0.1:{admin}/readyz") as resp:
            assert resp.status == 200
        stream = await client.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=orjson.dumps(chat_body("hi", stream=True)),
            headers={"Content-Type": "application/json"},
        )
        await stream.content.readline()
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        async with client.get(f"http://127.0.0.1:{admin}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["draining"] is True
        body = await stream.read()  # the stream in flight finishes completely
        assert body.rstrip().endswith(b"data: [DONE]")
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        audit = [orjson.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert audit[-1]["stream"]["outcome"] == "completed"  # flushed on exit
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_shutdown_timeout_bounds_the_drain(upstream: FakeUpstream, client, tmp_path: Path):
    upstream.chunks = [f"w{i} " for i in range(200)]
    upstream.chunk_delay = 0.05  # a 10 s stream: longer than the grace period
    cfg = process_config(upstream.url, tmp_path, drain_delay_seconds=0, shutdown_timeout_seconds=0.5)
    proc, port, _ = await start_process(cfg, tmp_path)
    try:
        stream = await client.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=orjson.dumps(chat_body("hi", stream=True)),
            headers={"Content-Type": "application/json"},
        )
        await stream.content.readline()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 8) == 0
        assert loop.time() - t0 < 4
        stream.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_invalid_config_exits_with_a_clear_error(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  prot: 80\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "firewall",
        "serve",
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert b"server.prot" in err
