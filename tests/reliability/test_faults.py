"""Upstream, detector and client faults the integration suite does not already cover.

Each test injects one fault, checks the answer the client gets and the metric
the firewall records, then proves the process survived (a clean request after
the upstream is healed). ``docs/reliability.md`` maps every fault of issue 9 to
its test, here or in ``tests/integration``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import FakeUpstream, FirewallFactory, chat_body, sse_chunk
from tests.reliability.conftest import (
    FaultLedger,
    ScriptedFirewall,
    ScriptedUpstream,
    clean_post,
    wait_for_tasks,
)

pytestmark = pytest.mark.asyncio

INPUT_ONLY = {"detectors": [{"name": "invisible_chars", "phases": ["input"]}]}


def heal(up: FakeUpstream | ScriptedUpstream):
    def fix() -> None:
        if isinstance(up, FakeUpstream):
            up.fault, up.chunks, up.chunk_delay = None, None, 0.0
        else:
            up.handler = None

    return fix


def events_of(raw: bytes) -> list[bytes]:
    return [block[6:] for block in raw.split(b"\n\n") if block.startswith(b"data: ")]


async def stream_post(client: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with client.post(
        url + "/v1/chat/completions",
        data=orjson.dumps(chat_body("hi", stream=True)),
        headers={"Content-Type": "application/json"},
    ) as resp:
        return resp.status, await resp.read()


def streams(fw, outcome: str) -> float:
    return fw.sample("trigger_firewall_streams_total", {"route": "chat_completions", "outcome": outcome})


def requests(fw, action: str) -> float:
    return fw.sample(
        "trigger_firewall_requests_total", {"route": "chat_completions", "action": action, "mode": "enforce"}
    )


async def test_upstream_down_then_back_recovers_without_restart(
    scripted: ScriptedUpstream, scripted_firewall: ScriptedFirewall, client, fault: FaultLedger
):
    """Connections refused while the upstream is down (502 each), served again once it is back."""
    fault.inject("upstream refuses connections, then restarts", "502 upstream_unavailable, then 200")
    fw = await scripted_firewall()
    assert (await clean_post(client, fw.url))[0] == 200  # a pooled keep-alive connection now exists
    port = scripted.port
    await scripted.stop()
    status, body = await clean_post(client, fw.url)
    assert status == 502
    assert orjson.loads(body)["error"]["code"] == "upstream_unavailable"
    assert (
        fw.sample(
            "trigger_firewall_upstream_requests_total", {"upstream": "default", "code_class": "connect_error"}
        )
        == 1
    )
    await scripted.start(port)  # the same address again, as a restarted pod would be
    assert (await clean_post(client, fw.url))[0] == 200
    assert requests(fw, "allow") == 2
    assert requests(fw, "error") == 1
    await fault.survived(fw, client)


async def test_reset_in_the_middle_of_a_screened_body_is_502(
    scripted: ScriptedUpstream, scripted_firewall: ScriptedFirewall, client, fault: FaultLedger
):
    """Headers and part of the body arrive, then the connection drops: nothing half-read is relayed."""
    fault.inject("upstream resets mid-response (screened body)", "502 upstream_error, action=error")

    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "4000"})
        await resp.prepare(request)
        await resp.write(b'{"id": "chatcmpl-x", "choices": [{"message": {"content": "partial')
        assert request.transport is not None
        request.transport.close()
        return resp

    scripted.handler = cut
    fw = await scripted_firewall()
    status, body = await clean_post(client, fw.url)
    assert status == 502
    assert orjson.loads(body)["error"]["code"] == "upstream_error"
    assert b"partial" not in body
    assert requests(fw, "error") == 1
    await fault.survived(fw, client, heal(scripted))


@pytest.mark.parametrize("screened", [True, False], ids=["screened", "unscreened"])
async def test_stall_in_the_middle_of_a_stream_ends_it_with_an_error_event(
    scripted: ScriptedUpstream, scripted_firewall: ScriptedFirewall, client, fault: FaultLedger, screened
):
    """A stream that goes silent past the read timeout ends promptly with an error event."""
    fault.inject(
        f"upstream stalls mid-stream past read timeout ({'screened' if screened else 'relayed'})",
        "stream ends with upstream_error event",
    )

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for word in ("one ", "two ", "three "):
            await resp.write(sse_chunk(word))
        await asyncio.sleep(10)
        return resp

    scripted.handler = stall
    fw = await scripted_firewall(upstream={"read_timeout_seconds": 0.3}, **({} if screened else INPUT_ONLY))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    status, raw = await stream_post(client, fw.url)
    assert status == 200
    assert loop.time() - t0 < 3
    last = orjson.loads(events_of(raw)[-1])
    assert last["error"]["code"] == "upstream_error"
    assert b"[DONE]" not in raw
    assert streams(fw, "upstream_error") == 1
    await fault.survived(fw, client, heal(scripted))


async def test_5xx_on_a_stream_request_is_relayed_with_its_headers(
    scripted: ScriptedUpstream, scripted_firewall: ScriptedFirewall, client, fault: FaultLedger
):
    fault.inject("upstream answers 503 to a stream request", "503 relayed with Retry-After, upstream 5xx")

    async def unavailable(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"error": {"message": "overloaded", "type": "server_error", "code": None}},
            status=503,
            headers={"Retry-After": "7"},
        )

    scripted.handler = unavailable
    fw = await scripted_firewall()
    async with client.post(
        fw.url + "/v1/chat/completions", data=orjson.dumps(chat_body("hi", stream=True))
    ) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "7"
        assert (await resp.json())["error"]["message"] == "overloaded"
    assert (
        fw.sample("trigger_firewall_upstream_requests_total", {"upstream": "default", "code_class": "5xx"})
        == 1
    )
    await fault.survived(fw, client, heal(scripted))


async def test_malformed_json_events_in_a_screened_stream_are_relayed(
    scripted: ScriptedUpstream, scripted_firewall: ScriptedFirewall, client, fault: FaultLedger
):
    """Events that are not JSON carry no text to screen; they pass in order and the stream completes."""
    fault.inject("upstream sends malformed JSON inside SSE events", "200, events relayed verbatim")
    bad = [b"data: {not json\n\n", b"data: \xff\xfe\n\n", b": a comment\n\n", b"data: [1, 2\n\n"]

    async def garbled(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse_chunk("before "))
        for event in bad:
            await resp.write(event)
        await resp.write(sse_chunk("after ", "stop"))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    scripted.handler = garbled
    fw = await scripted_firewall(stream={"holdback_chars": 8, "scan_every_chars": 4})
    status, raw = await stream_post(client, fw.url)
    assert status == 200
    for event in bad:
        assert event in raw
    assert raw.index(b"before") < raw.index(b"{not json") < raw.index(b"after")
    assert raw.endswith(b"data: [DONE]\n\n")
    assert streams(fw, "completed") == 1
    await fault.survived(fw, client, heal(scripted))


async def test_endless_sse_event_is_cut_off_and_upstream_closed(
    scripted: ScriptedUpstream, scripted_firewall: ScriptedFirewall, client, fault: FaultLedger
):
    """An event that never ends (no blank line) stops at the parser's 1 MiB bound, not at memory."""
    fault.inject("upstream sends an SSE event that never ends", "error event, upstream connection closed")

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse_chunk("start "))
        await resp.write(b"data: ")
        for _ in range(400):  # up to 25 MiB if nobody stops reading
            await resp.write(b"a" * 65536)
        return resp

    scripted.handler = endless
    fw = await scripted_firewall()
    status, raw = await stream_post(client, fw.url)
    assert status == 200
    assert orjson.loads(events_of(raw)[-1])["error"]["code"] == "upstream_error"
    assert len(raw) < 64 * 1024  # the held-back event was never released
    assert streams(fw, "upstream_error") == 1
    await asyncio.wait_for(scripted.cancelled.wait(), 3)
    await fault.survived(fw, client, heal(scripted))


async def test_relayed_stream_broken_mid_way_ends_with_error_event(
    firewall: FirewallFactory, upstream: FakeUpstream, client, fault: FaultLedger
):
    fault.inject("upstream closes a relayed (unscreened) stream mid-way", "error event, upstream_error")
    upstream.fault = "broken_sse"
    fw = await firewall(**INPUT_ONLY)
    status, raw = await stream_post(client, fw.url)
    assert status == 200
    assert orjson.loads(events_of(raw)[-1])["error"]["code"] == "upstream_error"
    assert streams(fw, "upstream_error") == 1
    await fault.survived(fw, client, heal(upstream))


async def test_relayed_stream_without_done_is_passed_as_sent(
    firewall: FirewallFactory, upstream: FakeUpstream, client, fault: FaultLedger
):
    """Unscreened streams are not parsed: the client gets exactly what the upstream sent."""
    fault.inject("upstream closes a relayed stream without [DONE]", "200, bytes as sent, counted once")
    upstream.fault = "no_done"
    fw = await firewall(**INPUT_ONLY)
    status, raw = await stream_post(client, fw.url)
    assert status == 200
    assert b"[DONE]" not in raw
    assert orjson.loads(events_of(raw)[-1])["choices"][0]["finish_reason"] == "stop"
    outcomes = ("completed", "incomplete", "upstream_error", "terminated", "client_disconnected")
    assert sum(streams(fw, o) for o in outcomes) == 1
    await fault.survived(fw, client, heal(upstream))


@pytest.mark.parametrize("on_error", ["fail_open", "fail_closed"])
async def test_output_detector_raising_during_a_stream(
    firewall: FirewallFactory, upstream: FakeUpstream, client, fault: FaultLedger, on_error
):
    expected = "stream completes, fail_open counted" if on_error == "fail_open" else "content_filter stop"
    fault.inject(f"output detector raises mid-stream ({on_error})", expected)
    fw = await firewall(
        detectors=[{"name": "boom", "type": "test_exploding", "phases": ["output"], "on_error": on_error}],
        stream={"holdback_chars": 8, "scan_every_chars": 4},
    )
    status, raw = await stream_post(client, fw.url)
    assert status == 200
    datas = events_of(raw)
    assert datas[-1] == b"[DONE]"
    assert fw.sample("trigger_firewall_detector_errors_total", {"detector": "boom", "kind": "exception"}) >= 1
    if on_error == "fail_open":
        assert orjson.loads(datas[-2])["choices"][0]["finish_reason"] == "stop"
        assert streams(fw, "completed") == 1
        assert (
            fw.sample("trigger_firewall_detector_fail_open_total", {"detector": "boom", "phase": "output"})
            >= 1
        )
    else:
        assert orjson.loads(datas[-2])["choices"][0]["finish_reason"] == "content_filter"
        assert streams(fw, "terminated") == 1
        assert b"Hello" not in raw  # nothing unscreened reached the client
    # Failing closed, every screened answer is withheld from now on: 503, not a crash.
    await fault.survived(fw, client, heal(upstream), expect=200 if on_error == "fail_open" else 503)


async def test_hanging_detector_failing_open_costs_only_its_timeout(
    firewall: FirewallFactory, upstream: FakeUpstream, client, fault: FaultLedger
):
    fault.inject("detector hangs past its timeout (fail_open)", "200 forwarded, X-Firewall-Fail-Open")
    fw = await firewall(
        detectors=[{"name": "slow", "type": "test_hanging", "timeout_seconds": 0.1, "on_error": "fail_open"}]
    )
    assert (await clean_post(client, fw.url))[0] == 200  # warm: pooled connections exist now
    baseline = len(asyncio.all_tasks())
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    status, _ = await clean_post(client, fw.url)
    assert status == 200
    assert loop.time() - t0 < 1.5  # the detector sleeps 30 s
    assert upstream.received[-1]["headers"]["X-Firewall-Fail-Open"] == "true"
    assert fw.sample("trigger_firewall_detector_errors_total", {"detector": "slow", "kind": "timeout"}) == 2
    assert fw.sample("trigger_firewall_detector_fail_open_total", {"detector": "slow", "phase": "input"}) == 2
    assert await wait_for_tasks(baseline) <= baseline  # the abandoned detector call left nothing behind
    await fault.survived(fw, client)


@pytest.mark.parametrize("on_error", ["fail_open", "fail_closed"])
async def test_detector_whose_model_is_missing(
    firewall: FirewallFactory, upstream: FakeUpstream, client, fault: FaultLedger, tmp_path: Path, on_error
):
    """The real STRIP detector pointed at a model folder that does not exist."""
    expected = "200 + X-Firewall-Fail-Open" if on_error == "fail_open" else "503 firewall_unavailable"
    fault.inject(f"detector model file missing ({on_error})", expected)
    fw = await firewall(
        detectors=[
            {"name": "invisible_chars"},
            {
                "name": "strip",
                "on_error": on_error,
                "params": {"model_dir": str(tmp_path / "no-such-model"), "device": "cpu"},
            },
        ]
    )
    async with client.get(fw.admin_url + "/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["detectors"] == {"invisible_chars": True, "strip": False}
    assert fw.sample("trigger_firewall_detector_ready", {"detector": "strip"}) == 0
    status, body = await clean_post(client, fw.url)
    assert (
        fw.sample("trigger_firewall_detector_errors_total", {"detector": "strip", "kind": "unavailable"}) == 1
    )
    if on_error == "fail_open":
        assert status == 200
        assert upstream.received[0]["headers"]["X-Firewall-Fail-Open"] == "true"
        await fault.survived(fw, client)
    else:
        assert status == 503
        assert orjson.loads(body)["error"]["code"] == "firewall_unavailable"
        assert upstream.received == []
        await fault.survived(fw, client, expect=503)


@pytest.mark.parametrize("screened", [True, False], ids=["screened", "relayed"])
async def test_client_disconnect_mid_stream_cancels_upstream_and_leaks_no_task(
    firewall: FirewallFactory, upstream: FakeUpstream, client, fault: FaultLedger, screened
):
    fault.inject(
        f"client disconnects mid-stream ({'screened' if screened else 'relayed'})",
        "upstream cancelled, tasks back to baseline",
    )
    fw = await firewall(
        **({"stream": {"holdback_chars": 0, "scan_every_chars": 1}} if screened else INPUT_ONLY)
    )
    assert (await stream_post(client, fw.url))[0] == 200  # warm: pooled connections exist now
    upstream.stream_finished.clear()
    baseline = len(asyncio.all_tasks())
    upstream.chunks = [f"w{i} " for i in range(500)]
    upstream.chunk_delay = 0.01
    resp = await client.post(fw.url + "/v1/chat/completions", data=orjson.dumps(chat_body("hi", stream=True)))
    await resp.content.readline()
    resp.close()  # the client goes away
    await asyncio.wait_for(upstream.stream_cancelled.wait(), 3)
    assert not upstream.stream_finished.is_set()
    assert await wait_for_tasks(baseline) <= baseline
    assert streams(fw, "client_disconnected") == 1
    await fault.survived(fw, client, heal(upstream))


async def test_client_disconnect_while_upstream_thinks_cancels_the_upstream_call(
    scripted: ScriptedUpstream, scripted_firewall: ScriptedFirewall, client, fault: FaultLedger
):
    fault.inject("client gives up before the upstream's headers", "upstream cancelled, counted once")

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(10)
        return web.json_response({})

    fw = await scripted_firewall(upstream={"read_timeout_seconds": 30})
    assert (await clean_post(client, fw.url))[0] == 200
    baseline = len(asyncio.all_tasks())
    scripted.handler = slow
    with pytest.raises(TimeoutError):
        async with client.post(
            fw.url + "/v1/chat/completions",
            data=orjson.dumps(chat_body("hi")),
            timeout=aiohttp.ClientTimeout(total=0.3),
        ):
            pass
    await asyncio.wait_for(scripted.cancelled.wait(), 3)
    assert await wait_for_tasks(baseline) <= baseline
    actions = ("allow", "log", "block", "error", "rejected")
    for _ in range(50):
        if sum(requests(fw, a) for a in actions) == 2:
            break
        await asyncio.sleep(0.02)
    assert sum(requests(fw, a) for a in actions) == 2  # the warm-up and the abandoned one
    await fault.survived(fw, client, heal(scripted))
