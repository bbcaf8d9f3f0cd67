"""Shadow score collection: sampled detector scores for calibration, no text by default."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.conftest import TRIGGER, FirewallFactory, chat_body

pytestmark = pytest.mark.asyncio


async def read_lines(fw, path: Path) -> list[dict]:
    assert fw.server.score_log is not None
    await fw.flush_logs()
    return [orjson.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def test_monitor_mode_scores_are_logged_without_text(firewall: FirewallFactory, client, tmp_path: Path):
    log = tmp_path / "scores.jsonl"
    fw = await firewall(
        mode="monitor", score_log={"enabled": True, "destination": str(log), "sample_rate": 1.0}
    )
    for text in ("a perfectly ordinary prompt", TRIGGER):
        async with client.post(fw.url + "/v1/chat/completions", data=orjson.dumps(chat_body(text))) as resp:
            assert resp.status == 200
    lines = await read_lines(fw, log)
    inputs = [x for x in lines if x["phase"] == "input"]
    assert [x["scores"]["invisible_chars"] >= 0.5 for x in inputs] == [False, True]
    assert all(x["event"] == "firewall.scores" and x["mode"] == "monitor" for x in lines)
    assert {x["phase"] for x in lines} == {"input", "output"}
    assert "ordinary" not in log.read_text()


async def test_score_log_respects_modes_and_sampling(firewall: FirewallFactory, client, tmp_path: Path):
    log = tmp_path / "scores.jsonl"
    fw = await firewall(score_log={"enabled": True, "destination": str(log), "sample_rate": 1.0})  # enforce
    async with client.post(fw.url + "/v1/chat/completions", data=orjson.dumps(chat_body("hello"))) as resp:
        assert resp.status == 200
    assert await read_lines(fw, log) == []  # only monitor-mode routes are logged by default
    log2 = tmp_path / "scores2.jsonl"
    fw2 = await firewall(
        mode="monitor", score_log={"enabled": True, "destination": str(log2), "sample_rate": 0.0}
    )
    async with client.post(fw2.url + "/v1/chat/completions", data=orjson.dumps(chat_body("hello"))) as resp:
        assert resp.status == 200
    assert await read_lines(fw2, log2) == []


async def test_score_log_text_is_opt_in(firewall: FirewallFactory, client, tmp_path: Path):
    log = tmp_path / "scores.jsonl"
    fw = await firewall(
        mode="monitor",
        score_log={"enabled": True, "destination": str(log), "sample_rate": 1.0, "include_text": True},
    )
    async with client.post(
        fw.url + "/v1/chat/completions", data=orjson.dumps(chat_body("canary 5521"))
    ) as resp:
        assert resp.status == 200
    lines = await read_lines(fw, log)
    assert next(x for x in lines if x["phase"] == "input")["text"] == ["canary 5521"]
