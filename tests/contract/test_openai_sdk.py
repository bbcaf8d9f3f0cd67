"""The official openai SDK against the proxy: what SDK users actually see."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import TRIGGER, ZWSP, FakeUpstream, FirewallFactory

pytestmark = [pytest.mark.asyncio, pytest.mark.contract]


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=3)


async def test_block_raises_bad_request_and_is_not_retried(firewall: FirewallFactory, upstream: FakeUpstream):
    fw = await firewall()
    async with sdk(fw.url) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": TRIGGER}])
    assert info.value.code == "content_filter"
    assert info.value.status_code == 400
    blocked = fw.sample(
        "trigger_firewall_requests_total", {"route": "chat_completions", "action": "block", "mode": "enforce"}
    )
    assert blocked == 1  # max_retries=3, yet exactly one attempt
    assert upstream.received == []


async def test_clean_request_round_trips(firewall: FirewallFactory, upstream: FakeUpstream):
    fw = await firewall()
    async with sdk(fw.url) as client:
        result = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello"}]
        )
    assert result.choices[0].message.content == upstream.reply


async def test_stream_block_ends_with_content_filter(firewall: FirewallFactory, upstream: FakeUpstream):
    upstream.chunks = ["Here ", "is ", f"a se{ZWSP}{ZWSP}cret ", "answer "]
    fw = await firewall(stream={"holdback_chars": 16, "scan_every_chars": 4})
    async with sdk(fw.url) as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        finishes = [c.choices[0].finish_reason async for c in stream if c.choices]
    assert finishes[-1] == "content_filter"


async def test_stream_block_error_style_raises(firewall: FirewallFactory, upstream: FakeUpstream):
    upstream.chunks = [f"a se{ZWSP}{ZWSP}cret "]
    fw = await firewall(stream={"block_style": "error"})
    async with sdk(fw.url) as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass


async def test_overload_is_retryable(firewall: FirewallFactory, upstream: FakeUpstream):
    fw = await firewall(
        detectors=[{"name": "boom", "type": "test_exploding", "on_error": "fail_closed", "phases": ["input"]}]
    )
    async with openai.AsyncOpenAI(base_url=fw.url + "/v1", api_key="k", max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 503
