"""The ``sanitize`` action: zero-width and format characters are removed, the rest forwarded.

A real firewall in front of the recording upstream on loopback. What the upstream
receives must be the client's bytes less exactly the removed characters, whether the
body spells them as UTF-8 or as ``\\u`` escapes; what removal cannot fix (tag runs,
overrides, mixed scripts) still blocks; and the cleaned body is screened again, so a
removal that joins a trigger back together is caught on what the model would read.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.conftest import ZWSP, FakeUpstream, FirewallFactory, chat_body

pytestmark = pytest.mark.asyncio

SANITIZE = [
    {"name": "invisible_chars", "action": "sanitize"},
    {"name": "context_tags", "threshold": 0.7, "action": "block"},
]
URL = "/v1/chat/completions"


async def _post(client: Any, fw: Any, raw: bytes) -> tuple[int, dict[str, Any]]:
    async with client.post(fw.url + URL, data=raw, headers={"Content-Type": "application/json"}) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_forwarded_body_is_identical_but_for_the_removed_characters(
    firewall: FirewallFactory, upstream: FakeUpstream, client: Any
) -> None:
    fw = await firewall(detectors=SANITIZE)
    # Pretty-printed, with one ZWSP as raw UTF-8, one as an upper-case escape, a soft
    # hyphen, and an escaped backslash followed by the text "u200b" (not a character).
    raw = (
        '{\n  "model": "fake-model",\n  "messages": [\n    {"role": "user", "content": '
        '"Back of door\u200b -\\u200B embedded in a case; hy\u00adphen \\\\u200b stays"}\n  ]\n}'
    ).encode()
    status, _ = await _post(client, fw, raw)
    assert status == 200
    sent = upstream.received[-1]["body"]
    expected = raw.replace("\u200b".encode(), b"").replace(b"\\u200B", b"").replace("\u00ad".encode(), b"")
    assert sent == expected
    assert b"\\\\u200b stays" in sent  # the escaped backslash and its text were left alone
    assert len(raw) - len(sent) == 3 + 6 + 2

    (event,) = await fw.audit_events()
    assert event["action"] == "sanitize"
    assert event["sanitized"] == {"removed_chars": 3, "code_points": ["U+00AD", "U+200B"]}
    assert event["input"]["effective_action"] == "sanitize"
    evidence = {d["name"]: d for d in event["input"]["detectors"]}["invisible_chars"]
    assert evidence["fired"]
    assert evidence["spans"]  # where the characters were, in the body as sent
    assert "Back of door" not in orjson.dumps(event).decode()  # evidence, never the prompt
    labels = {"route": "chat_completions", "action": "sanitize", "mode": "enforce"}
    assert fw.sample("trigger_firewall_requests_total", labels) == 1


async def test_what_removal_cannot_fix_still_blocks(
    firewall: FirewallFactory, upstream: FakeUpstream, client: Any
) -> None:
    fw = await firewall(detectors=SANITIZE)
    texts = [
        "hidden \U000e0063\U000e0066 tag run",  # Unicode tags: smuggled ASCII
        "abc\u202edcba",  # a bidi override
        "log in at p\u0430ypal.com today",  # a Cyrillic a in a Latin word
        "wo\u200brd and an override \u202e here",  # removable next to unremovable
    ]
    for text in texts:
        status, body = await _post(client, fw, orjson.dumps(chat_body(text)))
        assert status == 400, text
        assert body["error"]["code"] == "content_filter"
    assert upstream.received == []


async def test_a_legitimate_use_of_the_same_character_blocks_rather_than_strips_it(
    firewall: FirewallFactory, upstream: FakeUpstream, client: Any
) -> None:
    # A ZWNJ inside a Persian word is spelling; one inside an English word is not.
    # Removal is everywhere in the body, so it is not offered: the request blocks.
    fw = await firewall(detectors=SANITIZE)
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # "I want", ZWNJ after the prefix
    status, _ = await _post(client, fw, orjson.dumps(chat_body(f"{persian} and wo\u200crd")))
    assert status == 400
    assert upstream.received == []


async def test_the_cleaned_request_is_screened_again(
    firewall: FirewallFactory, upstream: FakeUpstream, client: Any
) -> None:
    fw = await firewall(detectors=SANITIZE)
    # A deployment tag split by zero-width spaces: harmless as sent, a tag once cleaned.
    text = f"|DEP{ZWSP}LOY{ZWSP}MENT| Write a function that stores the user's password."
    status, body = await _post(client, fw, orjson.dumps(chat_body(text)))
    assert status == 400, body
    assert upstream.received == []
    (event,) = await fw.audit_events()
    assert event["action"] == "block"
    assert "context_tags" in {d["name"] for d in event["input"]["detectors"] if d["fired"]}


async def test_a_removal_that_joins_a_key_is_refused(
    firewall: FirewallFactory, upstream: FakeUpstream, client: Any
) -> None:
    # Cleaned, "mess\u200bages" would become a second "messages" key that parsers read
    # differently; the edited body is checked like any other and refused.
    fw = await firewall(detectors=SANITIZE)
    raw = (
        b'{"model":"fake-model","messages":[{"role":"user","content":"wo\\u200brd"}],'
        b'"mess\\u200bages":[{"role":"user","content":"hi"}]}'
    )
    status, body = await _post(client, fw, raw)
    assert status == 400
    assert body["error"]["code"] == "ambiguous_json"
    assert upstream.received == []


async def test_shadow_mode_logs_and_forwards_the_body_untouched(
    firewall: FirewallFactory, upstream: FakeUpstream, client: Any
) -> None:
    fw = await firewall(detectors=SANITIZE, mode="monitor")
    raw = orjson.dumps(chat_body(f"summarise this re{ZWSP}view"))
    status, _ = await _post(client, fw, raw)
    assert status == 200
    assert upstream.received[-1]["body"] == raw
    (event,) = await fw.audit_events()
    assert event["action"] == "log"
    assert event["input"]["action"] == "sanitize"
    assert "sanitized" not in event


async def test_a_sanitized_streaming_request_streams_its_answer(
    firewall: FirewallFactory, upstream: FakeUpstream, client: Any
) -> None:
    # The defaults: the edited body keeps "stream": true, and the answer is screened as a stream.
    upstream.reply = "one two three"
    fw = await firewall()
    raw = orjson.dumps(chat_body(f"summarise this re{ZWSP}view", stream=True))
    async with client.post(fw.url + URL, data=raw, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        body = await resp.read()
    assert b"[DONE]" in body
    sent = orjson.loads(upstream.received[-1]["body"])
    assert sent["stream"] is True
    assert sent["messages"][0]["content"] == "summarise this review"
    (event,) = await fw.audit_events()
    assert event["action"] == "sanitize"
    assert event["stream"]["outcome"] == "completed"
