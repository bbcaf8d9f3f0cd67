"""The audit writer's buffering: flushed by a timer, early when the buffer fills, never blocking."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
import pytest

from firewall.config.schema import AuditConfig
from firewall.observability.audit import AuditLog, microseconds
from firewall.observability.metrics import Metrics

pytestmark = pytest.mark.asyncio

_EVENT = {"request_id": "r", "route": "chat", "pad": "x" * 900}  # ~1 KB a line, as in production


async def _burst(log: AuditLog, lines: int) -> None:
    for i in range(lines):
        log.emit({**_EVENT, "request_id": f"r{i}"})


async def test_a_small_buffer_is_handed_to_the_writer_before_it_fills(tmp_path: Path) -> None:
    """128 KiB bound, 300 KB written in bursts faster than the 0.2 s timer: nothing dropped."""
    path = tmp_path / "audit.jsonl"
    metrics = Metrics()
    log = AuditLog(AuditConfig(destination=str(path), max_buffer_bytes=128 * 1024), metrics)
    await log.start()
    for _ in range(10):
        await _burst(log, 30)  # ~30 KB, then let the writer run
        await asyncio.sleep(0.01)
    await log.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 300
    assert [orjson.loads(line)["request_id"] for line in lines[:3]] == ["r0", "r1", "r2"]
    assert metrics.audit_dropped.values[()] == 0


async def test_a_full_buffer_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    metrics = Metrics()
    log = AuditLog(AuditConfig(destination=str(path), max_buffer_bytes=16 * 1024), metrics)
    await log.start()
    await _burst(log, 100)  # ~100 KB with no await: the writer cannot run in between
    dropped = metrics.audit_dropped.values[()]
    await log.close()
    kept = len(path.read_bytes().splitlines())
    assert dropped > 0
    assert kept + dropped == 100


async def test_durations_are_written_to_the_microsecond_as_round_would() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        seconds = rng.random() * rng.choice((1e-5, 1e-3, 1.0, 120.0))
        assert microseconds(seconds) == round(seconds, 6)
    assert microseconds(0.0) == 0.0
    assert microseconds(0.0000004) == 0.0
    assert microseconds(0.0000005) == 0.000001
