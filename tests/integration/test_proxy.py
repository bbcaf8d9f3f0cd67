"""The proxy end to end: real firewall, real fake upstream, real HTTP on loopback."""

from __future__ import annotations

import asyncio
import gzip

import aiohttp
import orjson
import pytest

from tests.conftest import TAGS_CF, TRIGGER, ZWSP, FakeUpstream, FirewallFactory, chat_body

pytestmark = pytest.mark.asyncio


async def post(client: aiohttp.ClientSession, url: str, body: object, **kw: object) -> aiohttp.ClientResponse:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post(url, data=data, headers={"Content-Type": "application/json"}, **kw)  # type: ignore[arg-type]


async def test_clean_request_is_forwarded_byte_for_byte(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall()
    body = orjson.dumps(chat_body("What is the capital of France?"))
    async with client.post(
        fw.url + "/v1/chat/completions?api-version=1",
        data=body,
        headers={
            "Content-Type": "application/json",
            "Authorization": "Bearer sk-test",
            "X-Request-Id": "req-42",
        },
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == "req-42"
        data = await resp.json()
    assert data["choices"][0]["message"]["content"] == upstream.reply
    sent = upstream.received[0]
    assert sent["body"] == body  # the original bytes, not a re-serialisation
    assert sent["path"] == "/v1/chat/completions?api-version=1"
    assert sent["headers"]["Authorization"] == "Bearer sk-test"
    assert sent["headers"]["X-Request-Id"] == "req-42"
    assert "X-Firewall-Fail-Open" not in sent["headers"]
    assert (
        fw.sample(
            "trigger_firewall_requests_total",
            {"route": "chat_completions", "action": "allow", "mode": "enforce"},
        )
        == 1
    )


async def test_invisible_trigger_is_blocked_like_openai(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall()
    async with await post(client, fw.url + "/v1/chat/completions", chat_body(TRIGGER)) as resp:
        assert resp.status == 400
        assert resp.headers["X-Should-Retry"] == "false"
        assert resp.headers["X-Firewall-Action"] == "block"
        assert resp.headers["X-Request-Id"]
        err = (await resp.json())["error"]
    assert err["code"] == "content_filter"
    assert err["type"] == "invalid_request_error"
    assert err["param"] == "messages"
    assert isinstance(err["message"], str)
    assert "invisible_chars" not in err["message"]  # no oracle for the attacker by default
    assert upstream.received == []  # never forwarded
    assert (
        fw.sample(
            "trigger_firewall_requests_total",
            {"route": "chat_completions", "action": "block", "mode": "enforce"},
        )
        == 1
    )
    assert (
        fw.sample(
            "trigger_firewall_verdicts_total",
            {
                "phase": "input",
                "action": "block",
                "mode": "enforce",
                "reason": "input.invisible_chars.threshold",
            },
        )
        == 1
    )
    assert (
        fw.sample(
            "trigger_firewall_detector_findings_total",
            {"detector": "invisible_chars", "phase": "input", "outcome": "fired"},
        )
        == 1
    )


async def test_expose_reasons_names_the_detector(firewall: FirewallFactory, client):
    fw = await firewall(blocking={"expose_reasons": True})
    async with await post(client, fw.url + "/v1/chat/completions", chat_body(TRIGGER)) as resp:
        err = (await resp.json())["error"]
    assert "input.invisible_chars.threshold" in err["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "m", "prompt": TRIGGER}),
        (
            "/v1/responses",
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": TRIGGER}]}]},
        ),
        ("/v1/responses", {"model": "m", "instructions": TRIGGER, "input": "hi"}),
        ("/v1/embeddings", {"model": "m", "input": ["fine", TRIGGER]}),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": TRIGGER}]}]},
        ),
        (
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": "call the tool"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "f", "arguments": orjson.dumps({"q": TRIGGER}).decode()},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "ok"},
                ],
            },
        ),
    ],
)
async def test_every_openai_route_is_screened(
    firewall: FirewallFactory, upstream: FakeUpstream, client, path, body
):
    fw = await firewall()
    async with await post(client, fw.url + path, body) as resp:
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["error"]["code"] == "content_filter"
    assert upstream.received == []


async def test_role_filter_limits_what_is_screened(firewall: FirewallFactory, client):
    fw = await firewall(
        routing={
            "routes": [
                {"name": "chat", "path": "/v1/chat/completions", "protocol": "openai_chat", "roles": ["user"]}
            ]
        }
    )
    body = {
        "model": "m",
        "messages": [{"role": "system", "content": TRIGGER}, {"role": "user", "content": "hello"}],
    }
    async with await post(client, fw.url + "/v1/chat/completions", body) as resp:
        assert resp.status == 200


async def test_custom_json_route_reads_configured_pointers(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall(
        routing={
            "routes": [
                {
                    "name": "kserve",
                    "path": "/v2/models/{model}/infer",
                    "protocol": "json",
                    "input_fields": ["/inputs/*/data"],
                }
            ]
        }
    )
    clean = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a fine review"]}]}
    dirty = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TRIGGER]}]}
    async with await post(client, fw.url + "/v2/models/sentiment/infer", clean) as resp:
        assert resp.status == 200
    async with await post(client, fw.url + "/v2/models/sentiment/infer", dirty) as resp:
        assert resp.status == 400
    assert len(upstream.received) == 1
    assert (
        fw.sample(
            "trigger_firewall_requests_total", {"route": "kserve", "action": "block", "mode": "enforce"}
        )
        == 1
    )


async def test_monitor_mode_logs_but_forwards(firewall: FirewallFactory, upstream: FakeUpstream, client):
    fw = await firewall(mode="monitor")
    async with await post(client, fw.url + "/v1/chat/completions", chat_body(TRIGGER)) as resp:
        assert resp.status == 200
    assert len(upstream.received) == 1
    assert (
        fw.sample(
            "trigger_firewall_requests_total",
            {"route": "chat_completions", "action": "log", "mode": "monitor"},
        )
        == 1
    )
    events = await fw.audit_events()
    assert events[-1]["input"]["would_block"] is True
    assert events[-1]["input"]["effective_action"] == "log"


async def test_per_route_mode_off_skips_screening(firewall: FirewallFactory, upstream: FakeUpstream, client):
    fw = await firewall(
        routing={
            "routes": [
                {"name": "chat", "path": "/v1/chat/completions", "protocol": "openai_chat", "mode": "off"}
            ]
        }
    )
    async with await post(client, fw.url + "/v1/chat/completions", chat_body(TRIGGER)) as resp:
        assert resp.status == 200
    assert (
        fw.sample(
            "trigger_firewall_detector_findings_total",
            {"detector": "invisible_chars", "phase": "input", "outcome": "fired"},
        )
        == 0
    )


async def test_audit_log_has_evidence_but_no_text(firewall: FirewallFactory, client):
    fw = await firewall()
    async with await post(client, fw.url + "/v1/chat/completions", chat_body(TRIGGER)) as resp:
        rid = resp.headers["X-Request-Id"]
    events = await fw.audit_events()
    assert len(events) == 1
    event = events[0]
    assert event["request_id"] == rid
    assert event["route"] == "chat_completions"
    assert event["action"] == "block"
    assert len(event["input.sha256"]) == 64
    det = event["input"]["detectors"][0]
    assert det["name"] == "invisible_chars"
    assert det["fired"] is True
    assert det["score"] >= 0.5
    span = det["spans"][0]
    assert TRIGGER[span["start"] : span["end"]] == TAGS_CF  # the span points at the invisible run
    raw = fw.audit_path.read_text()
    assert "summarise" not in raw
    assert "review" not in raw


async def test_audit_capture_text_is_opt_in(firewall: FirewallFactory, client):
    fw = await firewall(audit={"capture_text": True})
    async with await post(
        client, fw.url + "/v1/chat/completions", chat_body("remember this canary-7731")
    ) as resp:
        assert resp.status == 200
    events = await fw.audit_events()
    assert events[0]["text"]["input"] == ["remember this canary-7731"]


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', 400, "invalid_utf8"),
        (b'{"messages": "not a list"}', 400, "invalid_request"),
        (b"[1, 2, 3]", 400, "invalid_request"),
        (b"", 400, "invalid_json"),
    ],
)
async def test_bad_bodies_are_answered_not_forwarded(
    firewall: FirewallFactory, upstream: FakeUpstream, client, raw, status, reason
):
    fw = await firewall()
    async with await post(client, fw.url + "/v1/chat/completions", raw) as resp:
        assert resp.status == status
        err = (await resp.json())["error"]
        assert err["type"] == "invalid_request_error"
    assert upstream.received == []
    assert (
        fw.sample("trigger_firewall_rejected_requests_total", {"route": "chat_completions", "reason": reason})
        == 1
    )
    assert (
        fw.sample(
            "trigger_firewall_requests_total",
            {"route": "chat_completions", "action": "rejected", "mode": "enforce"},
        )
        == 1
    )


async def test_body_over_limit_is_413(firewall: FirewallFactory, upstream: FakeUpstream, client):
    fw = await firewall(server={"max_request_bytes": 4096})
    big = chat_body("x" * 10_000)
    async with await post(client, fw.url + "/v1/chat/completions", big) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"

    async def chunks():
        for _ in range(10):
            yield b" " * 1000

    # Chunked (no Content-Length): the limit still holds while reading.
    async with client.post(fw.url + "/v1/chat/completions", data=chunks()) as resp:
        assert resp.status == 413
    assert upstream.received == []


async def test_compressed_request_bodies_are_refused_on_screened_routes(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall()
    payload = gzip.compress(orjson.dumps(chat_body(TRIGGER)))
    async with client.post(
        fw.url + "/v1/chat/completions",
        data=payload,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 415
    assert upstream.received == []


async def test_unknown_routes_with_a_body_are_denied_by_default(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall()
    async with client.get(fw.url + "/v1/models") as resp:  # no body: no prompt to miss
        assert resp.status == 200
        assert (await resp.json())["path"] == "/v1/models"
    # Paths no built-in route serves: SageMaker's, llama.cpp's tokenizer, typos.
    for path in ("/invocations", "/tokenize", "/api/chats", "/completionz", "/v2/chat"):
        async with client.post(fw.url + path, json=chat_body(TRIGGER)) as resp:
            assert resp.status == 404, path
            assert (await resp.json())["error"]["code"] == "unknown_route"
    assert [r for r in upstream.received if r.get("path") != "/v1/models"] == []
    assert (
        fw.sample(
            "trigger_firewall_rejected_requests_total", {"route": "unmatched", "reason": "unknown_route"}
        )
        == 5
    )


async def test_passthrough_prefixes_and_passthrough_forward_bodies_unscreened(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall(routing={"passthrough_prefixes": ["/v1/files"]})
    async with client.post(fw.url + "/v1/files", data=b"x" * 100_000) as resp:
        assert (await resp.json())["echo"] == 100_000
    async with client.post(fw.url + "/v1/other", data=b"x") as resp:
        assert resp.status == 404
    fw = await firewall(routing={"unknown_routes": "passthrough"})
    async with client.post(fw.url + "/v1/other", data=b"x" * 10) as resp:
        assert (await resp.json())["echo"] == 10
    assert (
        fw.sample(
            "trigger_firewall_requests_total", {"route": "unmatched", "action": "allow", "mode": "enforce"}
        )
        == 1
    )


@pytest.mark.parametrize(
    "path",
    [
        "/chat/completions",
        "/openai/v1/chat/completions",
        "/openai/deployments/gpt-4o/chat/completions",
        "/v1/chat/completions/",
    ],
)
async def test_other_spellings_of_the_chat_path_are_screened(
    firewall: FirewallFactory, upstream: FakeUpstream, client, path: str
):
    fw = await firewall()
    async with client.post(fw.url + path, json=chat_body(TRIGGER)) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "content_filter"
    assert upstream.received == []
    blocked = {"route": "chat_completions", "action": "block", "mode": "enforce"}
    assert fw.sample("trigger_firewall_requests_total", blocked) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions%0A",
        "/v1/chat/completions%00",
        "/v1/chat/./completions",
        "/v1/x/../chat/completions",
        "/v1/%2e%2e/v1/chat/completions",
        "/v1%5cchat/completions",
    ],
)
async def test_paths_servers_read_differently_are_refused(
    firewall: FirewallFactory, upstream: FakeUpstream, path: str
):
    fw = await firewall()
    # A raw socket: HTTP clients normalise dot segments and encodings before sending.
    body = orjson.dumps(chat_body(TRIGGER))
    head, payload = await raw_exchange(
        fw.url,
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body,
    )
    assert head.startswith(b"HTTP/1.1 400"), head
    assert orjson.loads(payload)["error"]["code"] == "unsafe_path"
    assert upstream.received == []
    assert (
        fw.sample("trigger_firewall_rejected_requests_total", {"route": "unmatched", "reason": "unsafe_path"})
        == 1
    )


async def test_unknown_routes_denied_when_configured(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall(routing={"unknown_routes": "deny"})
    async with client.get(fw.url + "/v1/models") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "unknown_route"
    assert upstream.received == []


async def test_hop_by_hop_headers_are_not_forwarded(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall()
    headers = {
        "Content-Type": "application/json",
        "Connection": "keep-alive, X-Secret-Hop",
        "X-Secret-Hop": "1",
        "Proxy-Authorization": "Basic abc",
        "TE": "trailers",
        "X-Custom": "kept",
        "X-Firewall-Fail-Open": "true",
    }
    async with client.post(
        fw.url + "/v1/chat/completions", data=orjson.dumps(chat_body("hi")), headers=headers
    ) as resp:
        assert resp.status == 200
    sent = {k.lower(): v for k, v in upstream.received[0]["headers"].items()}
    assert "x-secret-hop" not in sent
    assert "proxy-authorization" not in sent
    assert "te" not in sent
    assert sent["x-custom"] == "kept"
    assert "x-firewall-fail-open" not in sent  # clients cannot forge the firewall's marks
    assert sent["x-forwarded-for"] == "127.0.0.1"


async def test_upstream_is_never_taken_from_the_request(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall()
    async with client.post(
        fw.url + "/v1/chat/completions",
        data=orjson.dumps(chat_body("hi")),
        headers={"Host": "evil.example", "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 200
    assert len(upstream.received) == 1


async def test_dead_upstream_is_502(firewall: FirewallFactory, client):
    fw = await firewall(upstream={"url": "http://127.0.0.1:9"})
    async with await post(client, fw.url + "/v1/chat/completions", chat_body("hi")) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unavailable"
    assert (
        fw.sample(
            "trigger_firewall_upstream_requests_total", {"upstream": "default", "code_class": "connect_error"}
        )
        == 1
    )
    assert (
        fw.sample(
            "trigger_firewall_requests_total",
            {"route": "chat_completions", "action": "error", "mode": "enforce"},
        )
        == 1
    )


async def test_stalled_upstream_is_504(firewall: FirewallFactory, upstream: FakeUpstream, client):
    upstream.fault = "stall"
    fw = await firewall(upstream={"read_timeout_seconds": 0.3})
    async with await post(client, fw.url + "/v1/chat/completions", chat_body("hi")) as resp:
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "upstream_timeout"
    assert (
        fw.sample(
            "trigger_firewall_upstream_requests_total", {"upstream": "default", "code_class": "timeout"}
        )
        == 1
    )


async def test_upstream_reset_is_502(firewall: FirewallFactory, upstream: FakeUpstream, client):
    upstream.fault = "reset"
    fw = await firewall()
    async with await post(client, fw.url + "/v1/chat/completions", chat_body("hi")) as resp:
        assert resp.status == 502


async def test_upstream_errors_are_relayed_unchanged(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    upstream.fault = "500"
    fw = await firewall()
    async with await post(client, fw.url + "/v1/chat/completions", chat_body("hi")) as resp:
        assert resp.status == 500
        assert (await resp.json())["error"]["message"] == "boom"
    assert (
        fw.sample("trigger_firewall_upstream_requests_total", {"upstream": "default", "code_class": "5xx"})
        == 1
    )


async def test_concurrency_limit_answers_503_with_retry_after(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    upstream.fault = "stall"
    upstream.stall_seconds = 0.5
    fw = await firewall(server={"max_concurrency": 2}, upstream={"read_timeout_seconds": 5})
    tasks = [
        asyncio.create_task(post(client, fw.url + "/v1/chat/completions", chat_body("hi"))) for _ in range(2)
    ]
    await asyncio.sleep(0.15)
    async with await post(client, fw.url + "/v1/chat/completions", chat_body("hi")) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert (await resp.json())["error"]["code"] == "overloaded"
    for task in tasks:
        (await task).release()
    assert (
        fw.sample(
            "trigger_firewall_rejected_requests_total", {"route": "chat_completions", "reason": "overloaded"}
        )
        == 1
    )


async def test_detector_failing_open_forwards_and_marks(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall(
        detectors=[{"name": "boom", "type": "test_exploding", "on_error": "fail_open", "phases": ["input"]}]
    )
    async with await post(client, fw.url + "/v1/chat/completions", chat_body("hi")) as resp:
        assert resp.status == 200
    assert upstream.received[0]["headers"]["X-Firewall-Fail-Open"] == "true"
    assert fw.sample("trigger_firewall_detector_fail_open_total", {"detector": "boom", "phase": "input"}) == 1
    assert fw.sample("trigger_firewall_detector_errors_total", {"detector": "boom", "kind": "exception"}) == 1


async def test_detector_failing_closed_answers_503(firewall: FirewallFactory, upstream: FakeUpstream, client):
    fw = await firewall(
        detectors=[{"name": "boom", "type": "test_exploding", "on_error": "fail_closed", "phases": ["input"]}]
    )
    async with await post(client, fw.url + "/v1/chat/completions", chat_body("hi")) as resp:
        assert resp.status == 503
        assert resp.headers["X-Should-Retry"] == "true"
        assert (await resp.json())["error"]["code"] == "firewall_unavailable"
    assert upstream.received == []


async def test_detector_timeout_applies_fail_mode(firewall: FirewallFactory, upstream: FakeUpstream, client):
    fw = await firewall(
        detectors=[
            {"name": "slow", "type": "test_hanging", "timeout_seconds": 0.05, "on_error": "fail_closed"}
        ]
    )
    async with await post(client, fw.url + "/v1/chat/completions", chat_body("hi")) as resp:
        assert resp.status == 503
    assert fw.sample("trigger_firewall_detector_errors_total", {"detector": "slow", "kind": "timeout"}) == 1


async def test_readyz_waits_for_required_detectors(firewall: FirewallFactory, client):
    fw = await firewall(detectors=[{"name": "missing", "type": "test_never_ready", "required": True}])
    async with client.get(fw.admin_url + "/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["detectors"] == {"missing": False}
    async with client.get(fw.admin_url + "/livez") as resp:
        assert resp.status == 200
    assert fw.sample("trigger_firewall_detector_ready", {"detector": "missing"}) == 0


async def test_detector_ready_gauge_follows_readiness_at_scrape_time(firewall: FirewallFactory, client):
    fw = await firewall(detectors=[{"name": "missing", "type": "test_never_ready", "required": False}])
    det = fw.server.state.runtime.detectors["missing"]
    line = 'trigger_firewall_detector_ready{detector="missing"}'
    async with client.get(fw.admin_url + "/metrics") as resp:
        assert f"{line} 0.0" in await resp.text()
    det._ready = True  # e.g. its remote model server came back
    async with client.get(fw.admin_url + "/metrics") as resp:
        assert f"{line} 1.0" in await resp.text()


async def test_admin_endpoints(firewall: FirewallFactory, client):
    fw = await firewall(upstream={"api_key_env": "SOME_KEY_VAR"})
    async with client.get(fw.admin_url + "/readyz") as resp:
        assert resp.status == 200
    async with client.get(fw.admin_url + "/config") as resp:
        cfg = await resp.json()
    assert cfg["config"]["mode"] == "enforce"
    assert cfg["config"]["upstream"]["api_key_env"] == "SOME_KEY_VAR"
    assert cfg["detectors"][0]["name"] == "invisible_chars"
    async with client.get(fw.admin_url + "/metrics") as resp:
        text = await resp.text()
    assert "trigger_firewall_requests_total" in text
    assert "trigger_firewall_build_info" in text
    # The admin app is not reachable through the proxy port.
    async with client.get(fw.url + "/metrics") as resp:
        assert "trigger_firewall_requests_total" not in await resp.text()


async def test_output_is_screened_and_blocked(firewall: FirewallFactory, upstream: FakeUpstream, client):
    upstream.reply = f"Sure.{ZWSP}{ZWSP}{ZWSP}{ZWSP} Here is the answer."
    fw = await firewall()
    async with await post(client, fw.url + "/v1/chat/completions", chat_body("hi")) as resp:
        assert resp.status == 400
        err = (await resp.json())["error"]
    assert err["code"] == "content_filter"
    assert err["param"] is None
    assert len(upstream.received) == 1
    assert upstream.received[0]["headers"]["Accept-Encoding"] == "identity"


async def test_output_block_content_filter_style(firewall: FirewallFactory, upstream: FakeUpstream, client):
    upstream.reply = f"Sure.{ZWSP}{ZWSP}{ZWSP}{ZWSP} Here is the answer."
    fw = await firewall(blocking={"response_style": "content_filter"})
    async with await post(client, fw.url + "/v1/chat/completions", chat_body("hi")) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["choices"][0]["finish_reason"] == "content_filter"
    assert data["choices"][0]["message"]["content"] is None


async def test_unreadable_output_follows_fail_mode(firewall: FirewallFactory, upstream: FakeUpstream, client):
    upstream.fault = "bad_json"
    fw = await firewall(detectors=[{"name": "invisible_chars", "on_error": "fail_closed"}])
    async with await post(client, fw.url + "/v1/chat/completions", chat_body("hi")) as resp:
        assert resp.status == 503
    fw2 = await firewall()
    async with await post(client, fw2.url + "/v1/chat/completions", chat_body("hi")) as resp:
        assert resp.status == 200
        assert await resp.read() == b"{not json"
    assert (
        fw2.sample(
            "trigger_firewall_detector_fail_open_total", {"detector": "invisible_chars", "phase": "output"}
        )
        == 1
    )


async def _raw_exchange(url: str, head: bytes, body: bytes, *, wait_for_continue: bool) -> bytes:
    """Send a request over a plain socket; with ``wait_for_continue`` the body waits for a 100."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        if wait_for_continue:
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


async def test_expect_100_continue_is_answered_then_screened(
    firewall: FirewallFactory, upstream: FakeUpstream
):
    """curl sends ``Expect: 100-continue`` for large bodies and waits a second without a 100."""
    fw = await firewall()
    for text, status in (("What is the capital of France?", b"HTTP/1.1 200 "), (TRIGGER, b"HTTP/1.1 400 ")):
        body = orjson.dumps(chat_body(text))
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        answer = await _raw_exchange(fw.url, head, body, wait_for_continue=True)
        assert answer.startswith(status), answer[:80]
    assert len(upstream.received) == 1  # the blocked one never left
    assert "expect" not in {k.lower() for k in upstream.received[0]["headers"]}


async def test_unknown_expectation_is_417(firewall: FirewallFactory, upstream: FakeUpstream):
    fw = await firewall()
    body = orjson.dumps(chat_body("hello"))
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: something-else\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    answer = await _raw_exchange(fw.url, head, body, wait_for_continue=False)
    assert answer.startswith(b"HTTP/1.1 417 "), answer[:80]
    assert b'"code":"expectation_failed"' in answer
    assert upstream.received == []
    labels = {"route": "chat_completions", "reason": "expectation_failed"}
    assert fw.sample("trigger_firewall_rejected_requests_total", labels) == 1
    assert (
        fw.sample(
            "trigger_firewall_requests_total",
            {"route": "chat_completions", "action": "rejected", "mode": "enforce"},
        )
        == 1
    )


async def raw_exchange(url: str, request: bytes) -> tuple[bytes, bytes]:
    """Send bytes as they are (clients normalise what these tests must send) and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    answer = await reader.read()
    writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return head, payload


@pytest.mark.parametrize(
    "body",
    [
        # The screened value first, the one a last-wins parser keeps second, and vice versa.
        b'{"model":"m","messages":[{"role":"user","content":"hello","content":"TRIGGER"}]}',
        b'{"model":"m","messages":[{"role":"user","content":"TRIGGER"}],"messages":[{"role":"user","content":"hi"}]}',
        # Go's encoding/json matches fields case-insensitively: these are what Ollama reads.
        b'{"model":"m","messages":[{"role":"user","content":"hi"}],"Messages":[{"role":"user","content":"TRIGGER"}]}',
        b'{"model":"m","messages":[{"role":"user","content":"hi","Content":"TRIGGER"}]}',
        # Spaced JSON (as Python's json.dumps writes it) takes the slower exact check.
        b'{"model": "m", "messages": [{"role": "user", "content": "hi", "content": "TRIGGER"}]}',
    ],
)
async def test_json_that_parsers_read_differently_is_refused(
    firewall: FirewallFactory, upstream: FakeUpstream, client, body: bytes
):
    fw = await firewall()
    payload = body.replace(b"TRIGGER", TRIGGER.encode())
    async with client.post(fw.url + "/v1/chat/completions", data=payload) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "ambiguous_json"
    assert upstream.received == []
    rejected = {"route": "chat_completions", "reason": "ambiguous_json"}
    assert fw.sample("trigger_firewall_rejected_requests_total", rejected) == 1


async def test_case_variants_inside_tool_schemas_are_allowed(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall()
    schema = {"type": "object", "properties": {"Name": {"type": "string"}, "Type": {"type": "string"}}}
    body = chat_body("hello", tools=[{"type": "function", "function": {"name": "f", "parameters": schema}}])
    async with client.post(fw.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
    assert len(upstream.received) == 1


async def test_responses_name_no_software_version(firewall: FirewallFactory, client):
    fw = await firewall()
    async with client.post(fw.url + "/v1/chat/completions", json=chat_body("hello")) as resp:
        assert resp.headers["Server"] == "trigger-firewall"
    async with client.post(fw.url + "/v1/chat/completions", json=chat_body(TRIGGER)) as resp:
        assert resp.headers["Server"] == "trigger-firewall"


async def test_malformed_http_gets_a_json_error_without_echo(firewall: FirewallFactory):
    fw = await firewall()
    head, payload = await raw_exchange(
        fw.url, b"POST /v1/chat/completions HTTP/1.1\r\nHo\x01st: <secret-ish>\r\n\r\n"
    )
    assert head.split(b" ")[1] == b"400", head
    assert b"application/json" in head
    assert b"secret" not in head + payload
    assert b"\x01" not in payload
    assert orjson.loads(payload)["error"]["code"] == "malformed_request"
    assert b"aiohttp" not in head


async def test_connection_cannot_strip_the_content_type(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    fw = await firewall()
    headers = {"Connection": "keep-alive, Content-Type", "Content-Type": "application/json"}
    async with client.post(
        fw.url + "/v1/chat/completions", data=orjson.dumps(chat_body("hi")), headers=headers
    ):
        pass
    assert upstream.received[0]["headers"]["Content-Type"] == "application/json"


async def test_text_past_a_detector_cap_goes_to_its_fail_mode(
    firewall: FirewallFactory, upstream: FakeUpstream, client
):
    """50,000 ordinary words, then the blocked review: rare_tokens reads 50,000 words a
    request, so the trigger is past its cap. Never silently clean: the rule's on_error
    decides (fail open by default: forwarded, marked and counted; fail closed: refused)."""
    padding = "the cat sat on the mat and " * 7200  # 50,400 words
    body = chat_body(padding + "This film is a mess cf and a bore from start to finish.")
    # The default action and fail mode, with a generous timeout: this is about the cap, and a
    # busy runner must not turn a 0.1 s scan into a timeout (which also fails open, but is
    # counted as an error, not as partial).
    lenient = [
        {"name": "invisible_chars", "threshold": 0.5, "action": "sanitize"},
        {"name": "rare_tokens", "threshold": 0.69, "action": "log", "timeout_seconds": 5},
    ]
    fw = await firewall(detectors=lenient)
    async with client.post(fw.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
    assert upstream.received[0]["headers"]["X-Firewall-Fail-Open"] == "true"
    partial = {"detector": "rare_tokens", "phase": "input", "outcome": "partial"}
    assert fw.sample("trigger_firewall_detector_findings_total", partial) == 1
    [event] = await fw.audit_events()
    assert event["input"]["reason_code"] == "input.rare_tokens.fail_open"
    [rare] = [d for d in event["input"]["detectors"] if d["name"] == "rare_tokens"]
    assert rare["status"] == "partial"

    strict = [
        {"name": "invisible_chars", "threshold": 0.5, "action": "block"},
        # A generous timeout: this is about the cap, and a busy runner must not turn a
        # 0.1 s scan into a timeout (which fails closed as a retryable 503 instead).
        {
            "name": "rare_tokens",
            "threshold": 0.69,
            "action": "block",
            "on_error": "fail_closed",
            "timeout_seconds": 5,
        },
    ]
    fw = await firewall(detectors=strict)
    async with client.post(fw.url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 413  # not a transient fault: retrying the same text cannot help
        assert resp.headers["X-Should-Retry"] == "false"
        assert (await resp.json())["error"]["code"] == "too_long_to_screen"
    assert len(upstream.received) == 1


async def test_anthropic_messages_are_screened(firewall: FirewallFactory, upstream: FakeUpstream, client):
    fw = await firewall()
    body = {
        "model": "m",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": [{"type": "text", "text": TRIGGER}]}],
    }
    async with client.post(fw.url + "/v1/messages", json=body) as resp:
        assert resp.status == 400
    clean = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}
    async with client.post(fw.url + "/v1/messages", json=clean) as resp:
        assert resp.status == 200
    assert [r["path"] for r in upstream.received] == ["/v1/messages"]
    blocked = {"route": "messages", "action": "block", "mode": "enforce"}
    assert fw.sample("trigger_firewall_requests_total", blocked) == 1
