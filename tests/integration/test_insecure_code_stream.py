"""A code model's streamed answer through the real proxy with the insecure-code detector."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest

from tests.conftest import FakeUpstream, FirewallFactory, chat_body

pytestmark = pytest.mark.asyncio

VULNERABLE = (
    "Here is a function that looks a user up by name.\n\n"
    "```python\n"
    "import sqlite3\n\n"
    "def find_user(conn, name):\n"
    "    cur = conn.cursor()\n"
    '    cur.execute("SELECT * FROM users WHERE name = \'" + name + "\'")\n'
    "    return cur.fetchall()\n"
    "```\n\n"
    "Call it with an open connection."
)
SAFE = VULNERABLE.replace(
    '    cur.execute("SELECT * FROM users WHERE name = \'" + name + "\'")\n',
    '    cur.execute("SELECT * FROM users WHERE name = ?", (name,))\n',
)
CONFIG = {
    "detectors": [{"name": "invisible_chars"}, {"name": "insecure_code", "phases": ["output"]}],
    "stream": {"scan_every_chars": 8},
}


def tokens(text: str) -> list[str]:
    """Split like a tokenizer would: words with their leading space, punctuation, newlines."""
    return re.findall(r"\s*\S+|\s+", text)


async def stream(client, url: str) -> tuple[list[dict], bytes]:
    async with client.post(
        url + "/v1/chat/completions",
        data=orjson.dumps(chat_body("write the function", stream=True)),
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 200
        raw = await resp.read()
    chunks = [orjson.loads(block[6:]) for block in raw.split(b"\n\n") if block.startswith(b"data: {")]
    return chunks, raw


def delivered(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


async def test_vulnerable_answer_is_stopped_before_the_vulnerable_line(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    upstream.chunks = tokens(VULNERABLE)
    upstream.chunk_delay = 0.005
    fw = await firewall(**CONFIG)
    chunks, raw = await stream(client, fw.url)
    text = delivered(chunks)
    # What the client received: the prose before the code fence, and nothing of the block (the
    # chunk "\n\n```python" that opens it is held with the block).
    assert text == "Here is a function that looks a user up by name."
    assert "execute" not in text
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert raw.rstrip().endswith(b"data: [DONE]")
    await asyncio.wait_for(upstream.stream_cancelled.wait(), 3)
    assert fw.sample("trigger_firewall_stream_terminations_total", {"detector": "insecure_code"}) == 1
    events = await fw.audit_events()
    finding = next(d for d in events[-1]["output"]["detectors"] if d["name"] == "insecure_code")
    assert finding["fired"] is True
    assert any(r.startswith("PY-SQLI") for r in finding["reasons"])


async def test_safe_look_alike_is_delivered_unchanged(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    upstream.chunks = tokens(SAFE)
    fw = await firewall(**CONFIG)
    chunks, raw = await stream(client, fw.url)
    assert delivered(chunks) == SAFE
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert raw.rstrip().endswith(b"data: [DONE]")
    assert (
        fw.sample("trigger_firewall_streams_total", {"route": "chat_completions", "outcome": "completed"})
        == 1
    )


async def test_prose_is_not_delayed(firewall: FirewallFactory, upstream: FakeUpstream, client):
    """Prose before any code reaches the client while the upstream is still generating."""
    upstream.chunks = tokens("A plain answer with no code at all, streamed slowly word by word.")
    upstream.chunk_delay = 0.1
    fw = await firewall(**CONFIG)
    loop = asyncio.get_running_loop()
    async with client.post(
        fw.url + "/v1/chat/completions",
        data=orjson.dumps(chat_body("hi", stream=True)),
        headers={"Content-Type": "application/json"},
    ) as resp:
        t0 = loop.time()
        arrivals = []
        async for line in resp.content:
            if line.startswith(b"data: {"):
                content = orjson.loads(line[6:])["choices"][0]["delta"].get("content")
                if content:
                    arrivals.append(loop.time() - t0)
    assert arrivals[0] < 0.5  # the stream lasts ~1.3 s; the first words arrived near the start
    assert arrivals[-1] - arrivals[0] > 0.8
