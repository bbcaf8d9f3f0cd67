"""A model swapped behind the endpoint is counted, logged and audited.

The upstream here is a real aiohttp server on loopback whose answers name a model and a
``system_fingerprint`` the test changes between requests, as a provider's silent update
or a hot-loaded adapter would. Every way an answer comes back is covered: a small
unscreened body (the built-in defaults screen no output), an unscreened stream, and a body
and a stream the output phase screens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import FirewallFactory, running_firewalls, serving

pytestmark = pytest.mark.asyncio

CHANGES = "trigger_firewall_upstream_identity_changes_total"
SCREEN_OUTPUT = {
    "detectors": [{"name": "insecure_code", "phases": ["output"], "threshold": 0.5, "action": "block"}]
}


@dataclass
class Swappable:
    """An OpenAI-style upstream that answers as whatever model the test says it is now."""

    model: str = "llama-3-8b-instruct"
    fingerprint: str = "fp_aaa111"
    padding: int = 0  # characters of filler in a non-streamed answer

    def body(self, requested: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": f"{self.model}:{requested}",
            "system_fingerprint": self.fingerprint,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there."}}],
            "filler": "x" * self.padding,
        }

    def app(self) -> web.Application:
        async def chat(request: web.Request) -> web.StreamResponse:
            asked = await request.json()
            requested = str(asked.get("model", ""))
            if not asked.get("stream"):
                return web.json_response(self.body(requested))
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for text in ("Hello", " there."):
                chunk = {
                    "object": "chat.completion.chunk",
                    "model": f"{self.model}:{requested}",
                    "system_fingerprint": self.fingerprint,
                    "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
                }
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        return app


@pytest.fixture
async def swappable(tmp_path: Path) -> AsyncIterator[tuple[Swappable, FirewallFactory]]:
    model = Swappable()
    async with serving(model.app()) as url, running_firewalls(url, tmp_path) as start:
        yield model, start


async def ask(fw_url: str, *, stream: bool = False, model: str = "m1") -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "stream": stream}
    async with (
        aiohttp.ClientSession() as session,
        session.post(fw_url + "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        return await resp.text()


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize("screened", [False, True], ids=["unscreened", "screened"])
async def test_a_swapped_model_is_counted_and_audited(
    swappable: tuple[Swappable, FirewallFactory], stream: bool, screened: bool
) -> None:
    upstream, start = swappable
    fw = await start(**(SCREEN_OUTPUT if screened else {}))
    labels = {"route": "chat_completions", "field": "model"}
    assert fw.sample(CHANGES, labels) == 0  # the series exists before any swap
    await ask(fw.url, stream=stream)
    await ask(fw.url, stream=stream)
    assert fw.sample(CHANGES, labels) == 0  # the first answer is the baseline, the same one no change
    upstream.model = "llama-3-8b-instruct-PATCHED"
    answer = await ask(fw.url, stream=stream)
    assert "Hello" in answer  # a swap is reported, the answer is not held back
    assert fw.sample(CHANGES, labels) == 1
    assert fw.sample(CHANGES, {"route": "chat_completions", "field": "system_fingerprint"}) == 0
    events = await fw.audit_events()
    changed = [e for e in events if "upstream_identity_change" in e]
    assert len(changed) == 1  # written although the request was allowed
    assert changed[0]["action"] == "allow"
    assert changed[0]["upstream_identity_change"] == [
        {"field": "model", "before": "llama-3-8b-instruct:m1", "after": "llama-3-8b-instruct-PATCHED:m1"}
    ]


async def test_a_new_fingerprint_is_its_own_field(swappable: tuple[Swappable, FirewallFactory]) -> None:
    upstream, start = swappable
    fw = await start()
    await ask(fw.url)
    upstream.fingerprint = "fp_bbb222"
    await ask(fw.url)
    assert fw.sample(CHANGES, {"route": "chat_completions", "field": "system_fingerprint"}) == 1
    assert fw.sample(CHANGES, {"route": "chat_completions", "field": "model"}) == 0


async def test_each_requested_model_has_its_own_baseline(
    swappable: tuple[Swappable, FirewallFactory],
) -> None:
    _, start = swappable
    fw = await start()
    # One endpoint serving two models answers two names: that is no swap.
    for model in ("m1", "m2", "m1", "m2"):
        await ask(fw.url, model=model)
    assert fw.sample(CHANGES, {"route": "chat_completions", "field": "model"}) == 0


async def test_watching_nothing_counts_nothing(swappable: tuple[Swappable, FirewallFactory]) -> None:
    upstream, start = swappable
    fw = await start(upstream={"watch_identity": []})
    await ask(fw.url)
    upstream.model = "other"
    await ask(fw.url)
    assert fw.sample(CHANGES, {"route": "chat_completions", "field": "model"}) == 0
    assert not [e for e in await fw.audit_events() if "upstream_identity_change" in e]


async def test_a_large_unscreened_answer_is_not_parsed_for_the_model_alone(
    swappable: tuple[Swappable, FirewallFactory],
) -> None:
    upstream, start = swappable
    # Nothing screens the output here (the defaults' invisible_chars reads answers too, and an
    # answer parsed for screening is read whatever its size).
    fw = await start(detectors=[{"name": "invisible_chars", "phases": ["input"]}])
    upstream.padding = 100_000  # like an embeddings answer: the model named after a large array
    await ask(fw.url)
    upstream.model = "other"
    await ask(fw.url)
    assert fw.sample(CHANGES, {"route": "chat_completions", "field": "model"}) == 0
    upstream.padding = 0  # small again: read, and the first small answer is the baseline
    await ask(fw.url)
    upstream.model = "third"
    await ask(fw.url)
    assert fw.sample(CHANGES, {"route": "chat_completions", "field": "model"}) == 1
