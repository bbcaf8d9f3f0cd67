"""The Anthropic Messages adapter: every model-visible text in, the answer's text out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from firewall.core.errors import ProtocolError
from firewall.protocols.anthropic import MessagesAdapter
from firewall.protocols.base import StreamState


def texts(body: dict[str, Any]) -> dict[str, str]:
    return {s.source: s.text for s in MessagesAdapter().input_segments(body)}


def test_every_model_visible_text_of_a_request_is_screened() -> None:
    body = {
        "model": "m",
        "system": [{"type": "text", "text": "SYS"}],
        "messages": [
            {"role": "user", "content": "PLAIN"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "THINK", "signature": "sig"},
                    {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "TOOLIN"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "RESULT"}],
                    },
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "DOC"},
                    },
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                    },
                    {"type": "future_block", "note": "FUTURE"},
                ],
            },
        ],
        "tools": [
            {
                "name": "lookup",
                "description": "TOOL",
                "input_schema": {"properties": {"q": {"description": "PARAM"}}},
            }
        ],
    }
    found = texts(body)
    assert found["/system/0/text"] == "SYS"
    assert found["/messages/0/content"] == "PLAIN"
    assert found["/messages/1/content/0/thinking"] == "THINK"
    assert found["/messages/1/content/1/input/q"] == "TOOLIN"
    assert found["/messages/2/content/0/content/0/text"] == "RESULT"
    assert found["/messages/2/content/1/source/data"] == "DOC"
    assert found["/messages/2/content/3/note"] == "FUTURE"
    assert found["/tools/0/description"] == "TOOL"
    assert found["/tools/0/input_schema/properties/q/description"] == "PARAM"
    assert "AAAA" not in found.values()  # image data is not text


@pytest.mark.parametrize(
    "body",
    [{"messages": "x"}, {"messages": [1]}, {"messages": [{"role": "user", "content": 3}]}, "body"],
)
def test_bodies_that_cannot_be_read_are_refused(body: Any) -> None:
    with pytest.raises(ProtocolError):
        MessagesAdapter().input_segments(body)


def test_output_and_stream_deltas() -> None:
    adapter = MessagesAdapter()
    answer = {"content": [{"type": "text", "text": "hello"}, {"type": "tool_use", "input": {"a": "b"}}]}
    assert [s.text for s in adapter.output_segments(answer)] == ["hello", "a", "b"]  # keys are text too
    state = StreamState()
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "model": "m", "content": []}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a'},
        },
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
    ]
    deltas = [d for e in events for d in adapter.stream_deltas(e, state)]
    assert deltas == [("0", "Hi"), ("0", '{"a')]
    assert state.response_id == "msg_1"


def test_a_blocked_stream_ends_as_a_refusal_or_an_error_event() -> None:
    adapter = MessagesAdapter()
    ending = adapter.terminal_events(StreamState(), "blocked", "content_filter")
    data = [orjson.loads(line[6:]) for line in ending.splitlines() if line.startswith(b"data: ")]
    assert data[0]["delta"]["stop_reason"] == "refusal"
    assert data[-1] == {"type": "message_stop"}
    error = adapter.terminal_events(StreamState(), "blocked", "error")
    assert error.startswith(b"event: error\n")
    filtered = adapter.filtered_response(
        {"id": "msg_1", "content": [{"type": "text", "text": "x"}]}, "blocked"
    )
    assert filtered["stop_reason"] == "refusal"
