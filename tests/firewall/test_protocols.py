"""Unit tests for firewall/protocols: OpenAI adapters and JSON-pointer routes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from firewall.config.schema import RouteConfig
from firewall.core.errors import ProtocolError, UnscreenableInput
from firewall.core.types import Segment
from firewall.protocols import StreamState, adapter_for
from firewall.protocols.base import error_body, sse_event
from firewall.protocols.json_fields import JsonFieldsAdapter, resolve_pointer
from firewall.protocols.kserve import TritonGenerateAdapter
from firewall.protocols.openai import ChatAdapter, CompletionsAdapter, EmbeddingsAdapter, ResponsesAdapter
from firewall.protocols.pooling import PoolingAdapter
from firewall.proxy.streaming import SseParser


def seg_tuples(segments: list[Segment]) -> list[tuple[str, str, str]]:
    return [(s.role, s.text, s.source) for s in segments]


def parse_sse(raw: bytes) -> list[tuple[str | None, str | None]]:
    parser = SseParser()
    events = parser.feed(raw)
    assert parser.flush() is None, "terminal events must end with a blank line"
    assert b"".join(e.raw for e in events) == raw
    return [(e.event, e.data) for e in events]


# =========================================================================== chat


CHAT_INPUT_CASES = [
    pytest.param(
        {"messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}]},
        [("system", "Be nice.", "/messages/0/content"), ("user", "Hi", "/messages/1/content")],
        id="string-content",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look at"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                        {"type": "text", "text": "this"},
                    ],
                }
            ]
        },
        [("user", "look at", "/messages/0/content/0/text"), ("user", "this", "/messages/0/content/3/text")],
        id="content-parts-images-ignored",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": ["bare", {"type": "input_text", "text": "typed"}]}]},
        [("user", "bare", "/messages/0/content/0"), ("user", "typed", "/messages/0/content/1/text")],
        id="bare-string-parts",
    ),
    pytest.param(
        {"messages": [{"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}]},
        [("assistant", "no", "/messages/0/content/0/refusal")],
        id="refusal-part",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        },
                        {"id": "call_2", "type": "function", "function": {"name": "noop", "arguments": "{}"}},
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
            ]
        },
        [
            ("user", "weather?", "/messages/0/content"),
            ("assistant", '{"city": "Paris"}', "/messages/1/tool_calls/0/function/arguments"),
            ("assistant", "{}", "/messages/1/tool_calls/1/function/arguments"),
            ("tool", "sunny, 21C", "/messages/2/content"),
        ],
        id="tool-calls-and-tool-result",
    ),
    pytest.param(
        {"messages": [{"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "42"}]}]},
        [("tool", "42", "/messages/0/content/0/text")],
        id="tool-result-parts",
    ),
    pytest.param(
        {"messages": [{"content": "no role"}, {"role": 7, "content": "odd role"}]},
        [("user", "no role", "/messages/0/content"), ("user", "odd role", "/messages/1/content")],
        id="missing-role-is-user",
    ),
    pytest.param(
        {"messages": [{"role": "developer", "content": ""}]},
        [("developer", "", "/messages/0/content")],
        id="empty-string-kept",
    ),
    pytest.param({"messages": []}, [], id="no-messages"),
    pytest.param(
        {"messages": [{"role": "assistant", "content": None}]},
        [],
        id="null-content",
    ),
]


@pytest.mark.parametrize(("body", "expected"), CHAT_INPUT_CASES)
def test_chat_input_segments(body: dict[str, Any], expected: list[tuple[str, str, str]]) -> None:
    assert seg_tuples(ChatAdapter().input_segments({"model": "m", **body})) == expected


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({"model": "m"}, "messages", id="missing-messages"),
        pytest.param({"messages": "hi"}, "messages", id="messages-string"),
        pytest.param({"messages": {"role": "user"}}, "messages", id="messages-object"),
        pytest.param({"messages": ["hi"]}, "messages", id="message-not-object"),
        pytest.param(
            {"messages": [{"role": "user", "content": 42}]}, "/messages/0/content", id="content-int"
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": {"text": "x"}}]},
            "/messages/0/content",
            id="content-dict",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [["nested", "parts"]]}]},
            "/messages/0/content",
            id="part-nested-array",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [7]}]}, "/messages/0/content", id="part-number"
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": ["cf", "x"]}]}]},
            "/messages/0/content",
            id="text-part-text-not-string",
        ),
    ],
)
def test_chat_bad_requests(body: Any, param: str) -> None:
    with pytest.raises(ProtocolError) as info:
        ChatAdapter().input_segments(body)
    assert info.value.status == 400
    assert info.value.param == param


def test_text_in_parts_of_unknown_type_is_screened_not_skipped() -> None:
    # A lenient upstream may read "text" from a part type we do not know: screen it.
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {"type": "future_text", "text": "hidden cf trigger"},
                    {"text": "no type at all"},
                ],
            }
        ]
    }
    segs = ChatAdapter().input_segments(body)
    assert [(s.text, s.source) for s in segs] == [
        ("hidden cf trigger", "/messages/0/content/1/text"),
        ("no type at all", "/messages/0/content/2/text"),
    ]


def test_odd_parts_in_upstream_answers_are_read_leniently() -> None:
    body = {"choices": [{"message": {"content": [7, ["x"], {"type": "text", "text": 3}, "ok"]}}]}
    assert [s.text for s in ChatAdapter().output_segments(body)] == ["ok"]


@pytest.mark.parametrize("body", [[], "x", None, 3])
def test_chat_body_must_be_an_object(body: Any) -> None:
    with pytest.raises(ProtocolError, match="JSON object"):
        ChatAdapter().input_segments(body)


def test_chat_output_segments() -> None:
    body = {
        "id": "chatcmpl-1",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"},
            {
                "index": 1,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": "I can't",
                    "tool_calls": [{"function": {"name": "f", "arguments": '{"a":1}'}}],
                },
            },
            "garbage",
            {"index": 3},
        ],
    }
    assert seg_tuples(ChatAdapter().output_segments(body)) == [
        ("assistant", "Hello", "/choices/0/message/content"),
        ("assistant", "I can't", "/choices/1/message/refusal"),
        ("assistant", '{"a":1}', "/choices/1/message/tool_calls/0/function/arguments"),
    ]


@pytest.mark.parametrize("body", [{}, {"choices": None}, {"choices": "x"}, [], "text", None])
def test_chat_output_segments_tolerates_odd_bodies(body: Any) -> None:
    assert ChatAdapter().output_segments(body) == []


def chat_chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-42",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "llama-3",
        "choices": choices,
        **extra,
    }


def test_chat_stream_deltas_multiple_choices() -> None:
    adapter = ChatAdapter()
    state = StreamState()
    first = chat_chunk(
        [
            {"index": 0, "delta": {"role": "assistant", "content": ""}},
            {"index": 1, "delta": {"role": "assistant", "content": ""}},
        ]
    )
    assert adapter.stream_deltas(first, state) == []
    assert state.channels == ["0", "1"]
    assert (state.response_id, state.model, state.created) == ("chatcmpl-42", "llama-3", 1700000000)
    second = chat_chunk(
        [{"index": 1, "delta": {"content": "Bon"}}, {"index": 0, "delta": {"content": "Hel"}}]
    )
    assert adapter.stream_deltas(second, state) == [("1", "Bon"), ("0", "Hel")]
    tools = chat_chunk(
        [{"index": 2, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"q":'}}]}}]
    )
    assert adapter.stream_deltas(tools, state) == [("2", '{"q":')]
    assert state.channels == ["0", "1", "2"]
    # Later chunks do not overwrite what the first one said.
    adapter.stream_deltas(chat_chunk([], id="other", model="other"), state)
    assert (state.response_id, state.model) == ("chatcmpl-42", "llama-3")


def test_chat_stream_refusal_deltas_are_screened() -> None:
    # Non-streaming output screens message.refusal; the streamed form must be screened too.
    state = StreamState()
    deltas = ChatAdapter().stream_deltas(chat_chunk([{"index": 0, "delta": {"refusal": "No way"}}]), state)
    assert deltas == [("0", "No way")]


@pytest.mark.parametrize(
    "data",
    [None, "text", [], {"choices": None}, {"choices": ["x"]}, {"choices": [{"index": 0, "delta": None}]}],
)
def test_chat_stream_deltas_tolerate_odd_events(data: Any) -> None:
    assert ChatAdapter().stream_deltas(data, StreamState()) == []


def test_chat_stream_deltas_missing_index_is_channel_zero() -> None:
    state = StreamState()
    assert ChatAdapter().stream_deltas({"choices": [{"delta": {"content": "x"}}]}, state) == [("0", "x")]
    assert state.channels == ["0"]


def test_chat_terminal_events_content_filter() -> None:
    adapter = ChatAdapter()
    state = StreamState()
    adapter.stream_deltas(
        chat_chunk([{"index": 0, "delta": {"content": "a"}}, {"index": 2, "delta": {"content": "b"}}]), state
    )
    events = parse_sse(adapter.terminal_events(state, "blocked by policy", "content_filter"))
    assert len(events) == 2
    (_, data), (_, done) = events
    assert done == "[DONE]"
    assert data is not None
    chunk = orjson.loads(data)
    assert chunk["id"] == "chatcmpl-42"
    assert chunk["model"] == "llama-3"
    assert chunk["created"] == 1700000000
    assert chunk["object"] == "chat.completion.chunk"
    assert [c["index"] for c in chunk["choices"]] == [0, 2]
    assert {c["finish_reason"] for c in chunk["choices"]} == {"content_filter"}
    assert all(c["delta"] == {} for c in chunk["choices"])


def test_chat_terminal_events_without_any_chunk_seen() -> None:
    events = parse_sse(ChatAdapter().terminal_events(StreamState(), "blocked", "content_filter"))
    chunk = orjson.loads(events[0][1] or "")
    assert [c["index"] for c in chunk["choices"]] == [0]
    assert chunk["choices"][0]["finish_reason"] == "content_filter"
    assert isinstance(chunk["created"], int)
    assert isinstance(chunk["id"], str)
    assert chunk["id"]
    assert events[1][1] == "[DONE]"


@pytest.mark.parametrize("adapter", [ChatAdapter(), CompletionsAdapter(), JsonFieldsAdapter(["/a"], ["/b"])])
def test_error_style_terminal_event(adapter: Any) -> None:
    events = parse_sse(adapter.terminal_events(StreamState(), "blocked by policy", "error"))
    assert len(events) == 1
    body = orjson.loads(events[0][1] or "")
    assert body == {
        "error": {
            "message": "blocked by policy",
            "type": "invalid_request_error",
            "param": None,
            "code": "content_filter",
        }
    }


def test_chat_filtered_response() -> None:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "model": "m",
        "usage": {"total_tokens": 3},
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "secret"}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "secret2"}, "finish_reason": "stop"},
        ],
    }
    out = ChatAdapter().filtered_response(body, "withheld")
    assert out is not None
    assert out["id"] == "chatcmpl-1"
    assert out["model"] == "m"
    assert out["usage"] == {"total_tokens": 3}
    assert out["choices"] == [
        {
            "index": i,
            "message": {"role": "assistant", "content": None, "refusal": "withheld"},
            "finish_reason": "content_filter",
        }
        for i in (0, 1)
    ]
    assert "secret" not in orjson.dumps(out).decode()
    assert body["choices"][0]["message"]["content"] == "secret"  # input untouched


@pytest.mark.parametrize("body", [None, [], {"choices": None}, {"error": {}}])
def test_chat_filtered_response_without_choices(body: Any) -> None:
    assert ChatAdapter().filtered_response(body, "x") is None


# =========================================================================== completions


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"prompt": "Once upon"}, [("user", "Once upon", "/prompt")], id="string"),
        pytest.param(
            {"prompt": ["a", "b"]},
            [("user", "a", "/prompt/0"), ("user", "b", "/prompt/1")],
            id="list-of-strings",
        ),
        pytest.param({}, [], id="no-prompt"),
        pytest.param(
            {"prompt": "p", "suffix": "s"}, [("user", "p", "/prompt"), ("user", "s", "/suffix")], id="suffix"
        ),
    ],
)
def test_completions_input_segments(body: dict[str, Any], expected: list[tuple[str, str, str]]) -> None:
    assert seg_tuples(CompletionsAdapter().input_segments(body)) == expected


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"prompt": 5}, id="int"),
        pytest.param({"prompt": {"text": "x"}}, id="object"),
        pytest.param({"prompt": ["ok", {"text": "x"}]}, id="object-item"),
        pytest.param({"prompt": ["ok", 1.5]}, id="float-item"),
        pytest.param([], id="body-not-object"),
    ],
)
def test_completions_bad_prompts(body: Any) -> None:
    with pytest.raises(ProtocolError):
        CompletionsAdapter().input_segments(body)


@pytest.mark.parametrize(
    ("adapter", "body"),
    [
        pytest.param(CompletionsAdapter(), {"prompt": [["hidden trigger"]]}, id="completions"),
        pytest.param(CompletionsAdapter(), {"prompt": [[1, "hidden trigger"]]}, id="completions-mixed"),
        pytest.param(EmbeddingsAdapter(), {"input": [["hidden trigger"]]}, id="embeddings"),
    ],
)
def test_text_nested_where_token_ids_belong_is_not_waved_through(adapter: Any, body: dict[str, Any]) -> None:
    # A nested list is assumed to be token ids; if it holds text, that text must be
    # screened or the request refused, never forwarded unscreened.
    try:
        segments = adapter.input_segments(body)
    except ProtocolError:
        return
    assert "hidden trigger" in [s.text for s in segments]


def test_completions_output_and_stream() -> None:
    adapter = CompletionsAdapter()
    body = {"choices": [{"index": 0, "text": "one"}, {"index": 1, "text": "two"}, {"index": 2}, "x"]}
    assert seg_tuples(adapter.output_segments(body)) == [
        ("assistant", "one", "/choices/0/text"),
        ("assistant", "two", "/choices/1/text"),
    ]
    assert adapter.output_segments({"choices": "x"}) == []
    state = StreamState()
    chunk = {
        "id": "cmpl-7",
        "object": "text_completion",
        "created": 1,
        "model": "gpt-x",
        "choices": [{"index": 0, "text": "Hi"}, {"index": 1, "text": ""}],
    }
    assert adapter.stream_deltas(chunk, state) == [("0", "Hi")]
    assert state.channels == ["0", "1"]
    assert (state.response_id, state.model) == ("cmpl-7", "gpt-x")
    assert adapter.stream_deltas("[DONE]", state) == []


def test_completions_terminal_events() -> None:
    adapter = CompletionsAdapter()
    state = StreamState()
    adapter.stream_deltas({"id": "cmpl-7", "model": "gpt-x", "choices": [{"index": 1, "text": "x"}]}, state)
    events = parse_sse(adapter.terminal_events(state, "blocked", "content_filter"))
    assert events[-1][1] == "[DONE]"
    chunk = orjson.loads(events[0][1] or "")
    assert chunk["id"] == "cmpl-7"
    assert chunk["model"] == "gpt-x"
    assert chunk["object"] == "text_completion"
    assert chunk["choices"] == [{"index": 1, "text": "", "logprobs": None, "finish_reason": "content_filter"}]


def test_completions_filtered_response() -> None:
    body = {"id": "cmpl-1", "choices": [{"index": 0, "text": "bad"}, {"index": 1, "text": "bad"}]}
    out = CompletionsAdapter().filtered_response(body, "withheld")
    assert out is not None
    assert out["id"] == "cmpl-1"
    assert [c["finish_reason"] for c in out["choices"]] == ["content_filter", "content_filter"]
    assert [c["text"] for c in out["choices"]] == ["", ""]
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert CompletionsAdapter().filtered_response({"error": 1}, "x") is None


# =========================================================================== responses


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {"instructions": "Be terse.", "input": "Hello"},
            [("system", "Be terse.", "/instructions"), ("user", "Hello", "/input")],
            id="instructions-and-string",
        ),
        pytest.param(
            {
                "input": [
                    {"role": "user", "content": "plain"},
                    {
                        "type": "message",
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "typed"},
                            {"type": "input_image", "image_url": "https://x/y.png"},
                        ],
                    },
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "prev"}],
                    },
                    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"x": 1}'},
                    {"type": "function_call_output", "call_id": "c1", "output": "result text"},
                    {"type": "reasoning", "summary": []},
                ]
            },
            [
                ("user", "plain", "/input/0/content"),
                ("user", "typed", "/input/1/content/0/text"),
                ("assistant", "prev", "/input/2/content/0/text"),
                ("assistant", '{"x": 1}', "/input/3/arguments"),
                ("tool", "result text", "/input/4/output"),
            ],
            id="input-items",
        ),
        pytest.param(
            {"input": [{"content": "no role"}]}, [("user", "no role", "/input/0/content")], id="no-role"
        ),
        pytest.param({"model": "m"}, [], id="no-input"),
    ],
)
def test_responses_input_segments(body: dict[str, Any], expected: list[tuple[str, str, str]]) -> None:
    assert seg_tuples(ResponsesAdapter().input_segments(body)) == expected


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({"input": 5}, "input", id="input-int"),
        pytest.param({"input": {"role": "user"}}, "input", id="input-object"),
        pytest.param({"input": ["bare string"]}, "input", id="item-not-object"),
        pytest.param({"input": [{"role": "user", "content": 3}]}, "/input/0/content", id="content-int"),
    ],
)
def test_responses_bad_requests(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ProtocolError) as info:
        ResponsesAdapter().input_segments(body)
    assert info.value.param == param


def test_responses_output_segments() -> None:
    body = {
        "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "Answer", "annotations": []},
                    {"type": "refusal", "refusal": "partly refused"},
                ],
            },
            {"type": "function_call", "name": "f", "arguments": '{"k": "v"}'},
            "junk",
        ]
    }
    assert seg_tuples(ResponsesAdapter().output_segments(body)) == [
        ("assistant", "Answer", "/output/1/content/0/text"),
        ("assistant", "partly refused", "/output/1/content/1/refusal"),
        ("assistant", '{"k": "v"}', "/output/2/arguments"),
    ]
    assert ResponsesAdapter().output_segments({"output": None}) == []


def test_responses_stream_deltas() -> None:
    adapter = ResponsesAdapter()
    state = StreamState()
    created = {
        "type": "response.created",
        "response": {"id": "resp_1", "model": "gpt-4o", "status": "in_progress"},
    }
    assert adapter.stream_deltas(created, state) == []
    assert (state.response_id, state.model) == ("resp_1", "gpt-4o")
    events = [
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "message"}},
        {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": "Hel"},
        {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": "lo"},
        {"type": "response.refusal.delta", "output_index": 1, "content_index": 0, "delta": "No"},
        {"type": "response.function_call_arguments.delta", "output_index": 2, "delta": '{"a"'},
        {"type": "response.output_text.delta", "output_index": 0, "delta": ""},
        {"type": "response.output_text.done", "output_index": 0, "text": "Hello"},
        {"type": "response.completed", "response": {"id": "resp_1"}},
    ]
    deltas = [d for e in events for d in adapter.stream_deltas(e, state)]
    assert deltas == [("0", "Hel"), ("0", "lo"), ("1", "No"), ("2", '{"a"')]
    assert state.channels == ["0", "1", "2"]
    assert adapter.stream_deltas(None, state) == []


def test_responses_terminal_events() -> None:
    adapter = ResponsesAdapter()
    assert adapter.uses_done_sentinel is False
    state = StreamState(response_id="resp_1", model="gpt-4o")
    ((event, data),) = parse_sse(adapter.terminal_events(state, "blocked", "content_filter"))
    assert event == "response.incomplete"
    body = orjson.loads(data or "")
    assert body["type"] == "response.incomplete"
    assert body["response"]["id"] == "resp_1"
    assert body["response"]["model"] == "gpt-4o"
    assert body["response"]["status"] == "incomplete"
    assert body["response"]["incomplete_details"] == {"reason": "content_filter"}

    ((event, data),) = parse_sse(adapter.terminal_events(state, "blocked", "error"))
    assert event == "error"
    body = orjson.loads(data or "")
    assert body["type"] == "error"
    assert body["code"] == "content_filter"
    assert body["message"] == "blocked"


def test_responses_filtered_response() -> None:
    body = {
        "id": "resp_1",
        "model": "m",
        "status": "completed",
        "output": [{"type": "message", "content": []}],
    }
    out = ResponsesAdapter().filtered_response(body, "withheld")
    assert out is not None
    assert out["id"] == "resp_1"
    assert out["status"] == "incomplete"
    assert out["incomplete_details"] == {"reason": "content_filter"}
    assert out["output"] == [
        {
            "type": "message",
            "role": "assistant",
            "status": "incomplete",
            "content": [{"type": "refusal", "refusal": "withheld"}],
        }
    ]
    assert body["status"] == "completed"
    assert ResponsesAdapter().filtered_response([], "x") is None


# =========================================================================== embeddings


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"input": "embed me"}, [("user", "embed me", "/input")], id="string"),
        pytest.param(
            {"input": ["a", "b"]}, [("user", "a", "/input/0"), ("user", "b", "/input/1")], id="list"
        ),
    ],
)
def test_embeddings_input_segments(body: dict[str, Any], expected: list[tuple[str, str, str]]) -> None:
    assert seg_tuples(EmbeddingsAdapter().input_segments({"model": "e", **body})) == expected


@pytest.mark.parametrize("adapter", [CompletionsAdapter, EmbeddingsAdapter])
@pytest.mark.parametrize("ids", [[1, 2, 3], [[1, 2], [3]], ["text", [5, 6]]])
def test_token_id_prompts_are_refused_unless_forwarded_unscreened(adapter: Any, ids: list[Any]) -> None:
    key = "prompt" if adapter is CompletionsAdapter else "input"
    with pytest.raises(UnscreenableInput) as info:
        adapter().input_segments({key: ids})
    assert info.value.param == key
    texts = [s.text for s in adapter(refuse_token_ids=False).input_segments({key: ids})]
    assert texts == [x for x in ids if isinstance(x, str)]


def _texts_at(body: dict[str, Any]) -> dict[str, str]:
    return {s.source: s.text for s in ChatAdapter().input_segments(body)}


def test_chat_screens_every_model_visible_field() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "hi", "name": "NAME"},
            {
                "role": "assistant",
                "content": [{"type": "thinking", "thinking": "THINK"}, {"type": "text", "text": "ok"}],
                "reasoning_content": "REASON",
            },
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "TOOL",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "q": {"type": "string", "description": "PARAM", "enum": ["ENUM"]},
                            "Name": {"type": "string"},
                        },
                    },
                },
            }
        ],
        "functions": [{"name": "f", "description": "LEGACY"}],
        "documents": [{"title": "DOCTITLE", "text": "DOC"}],
        "chat_template_kwargs": {"persona": "KWARG", "enable_thinking": True},
    }
    texts = _texts_at(body)
    assert texts["/messages/0/name"] == "NAME"
    assert texts["/messages/1/content/0/thinking"] == "THINK"
    assert texts["/messages/1/reasoning_content"] == "REASON"
    assert texts["/tools/0/function/description"] == "TOOL"
    assert texts["/tools/0/function/parameters/properties/q/description"] == "PARAM"
    assert texts["/tools/0/function/parameters/properties/q/enum/0"] == "ENUM"
    assert texts["/functions/0/description"] == "LEGACY"
    assert texts["/documents/0/title"] == "DOCTITLE"
    assert texts["/documents/0/text"] == "DOC"
    assert texts["/chat_template_kwargs/persona"] == "KWARG"
    assert "string" not in texts.values()  # schema types and property names are not prose


def test_chat_refuses_a_per_request_template() -> None:
    with pytest.raises(UnscreenableInput):
        ChatAdapter().input_segments({"messages": [], "chat_template": "{{ 'x' }}"})


def test_responses_screens_reasoning_custom_tools_variables_and_unknown_items() -> None:
    body = {
        "input": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "SUMMARY"}]},
            {"type": "custom_tool_call", "call_id": "c", "name": "x", "input": "CUSTOMIN"},
            {"type": "custom_tool_call_output", "call_id": "c", "output": "CUSTOMOUT"},
            {"type": "some_future_item", "payload": {"note": "FUTURE"}},
        ],
        "prompt": {"id": "pmpt_1", "variables": {"city": "VAR"}},
        "tools": [{"type": "function", "name": "f", "description": "RTOOL", "parameters": {}}],
    }
    texts = set(_texts_of(ResponsesAdapter().input_segments(body)))
    assert {"SUMMARY", "CUSTOMIN", "CUSTOMOUT", "FUTURE", "VAR", "RTOOL"} <= texts


def _texts_of(segments: list[Any]) -> list[str]:
    return [s.text for s in segments]


@pytest.mark.parametrize("body", [{"input": 3}, {"input": [{"x": 1}]}, "string body"])
def test_embeddings_bad_requests(body: Any) -> None:
    with pytest.raises(ProtocolError):
        EmbeddingsAdapter().input_segments(body)


def test_embeddings_have_no_output_text() -> None:
    adapter = EmbeddingsAdapter()
    body = {"data": [{"embedding": [0.1, 0.2], "index": 0}], "model": "e"}
    assert adapter.output_segments(body) == []
    assert adapter.stream_deltas(body, StreamState()) == []
    assert adapter.filtered_response(body, "x") is None


# =========================================================================== shared adapter behaviour


@pytest.mark.parametrize(
    ("body", "wants"),
    [
        ({"stream": True}, True),
        ({"stream": False}, False),
        ({"stream": "true"}, False),
        ({}, False),
        ([], False),
    ],
)
def test_wants_stream(body: Any, wants: bool) -> None:
    assert ChatAdapter().wants_stream(body) is wants


@pytest.mark.parametrize(
    ("body", "model"), [({"model": "m"}, "m"), ({"model": 3}, None), ({}, None), ("x", None)]
)
def test_model(body: Any, model: str | None) -> None:
    assert ResponsesAdapter().model(body) == model


def test_sse_event_and_error_body() -> None:
    assert sse_event({"a": 1}) == b'data: {"a":1}\n\n'
    assert sse_event(b"[DONE]") == b"data: [DONE]\n\n"
    assert sse_event({}, event="x") == b"event: x\ndata: {}\n\n"
    assert error_body("m", code="c", error_type="t", param="p") == {
        "error": {"message": "m", "type": "t", "param": "p", "code": "c"}
    }


@pytest.mark.parametrize(
    ("protocol", "cls"),
    [
        ("openai_chat", ChatAdapter),
        ("openai_completions", CompletionsAdapter),
        ("openai_responses", ResponsesAdapter),
        ("openai_embeddings", EmbeddingsAdapter),
    ],
)
def test_adapter_for_openai(protocol: str, cls: type) -> None:
    route = RouteConfig(name="r", path="/x", protocol=protocol)
    assert isinstance(adapter_for(route), cls)


def test_adapter_for_json() -> None:
    route = RouteConfig(name="r", path="/x", protocol="json", input_fields=("/a",), output_fields=("/b",))
    adapter = adapter_for(route)
    assert isinstance(adapter, JsonFieldsAdapter)
    assert (adapter.input_fields, adapter.output_fields) == (("/a",), ("/b",))


# =========================================================================== JSON pointers


DOC = {
    "a": {"b": "x", "c": ["p", "q"]},
    "a/b": "slash",
    "m~n": "tilde",
    "~1": "literal tilde-one",
    "": "empty key",
    "list": [{"t": "one"}, {"t": "two"}, {"u": "three"}],
    "n": 5,
}


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("", [("", DOC)]),
        ("/a/b", [("/a/b", "x")]),
        ("/a/c/1", [("/a/c/1", "q")]),
        ("/a/c/2", []),
        ("/a/c/x", []),
        ("/missing", []),
        ("/a/b/deeper", []),
        ("/a~1b", [("/a~1b", "slash")]),
        ("/m~0n", [("/m~0n", "tilde")]),
        ("/~01", [("/~01", "literal tilde-one")]),
        ("/", [("/", "empty key")]),
        ("/list/*/t", [("/list/0/t", "one"), ("/list/1/t", "two")]),
        ("/a/*", [("/a/b", "x"), ("/a/c", ["p", "q"])]),
        ("/a/c/*", [("/a/c/0", "p"), ("/a/c/1", "q")]),
        ("/n", [("/n", 5)]),
        ("/n/*", []),
    ],
)
def test_resolve_pointer(pointer: str, expected: list[tuple[str, Any]]) -> None:
    assert list(resolve_pointer(DOC, pointer)) == expected


def test_wildcard_over_object_escapes_keys() -> None:
    doc = {"x": {"a/b": "1", "c~d": "2"}}
    assert list(resolve_pointer(doc, "/x/*")) == [("/x/a~1b", "1"), ("/x/c~0d", "2")]


def test_json_adapter_collects_all_strings_under_a_pointer() -> None:
    adapter = JsonFieldsAdapter(input_fields=["/inputs"], output_fields=[])
    body = {"inputs": [["a", ["b", 1, None, True]], {"k": "c", "n": 2.5}], "other": "not screened"}
    assert seg_tuples(adapter.input_segments(body)) == [
        ("user", "a", "/inputs/0/0"),
        ("user", "b", "/inputs/0/1/0"),
        ("user", "c", "/inputs/1/k"),
    ]


def test_json_adapter_kserve_v2() -> None:
    route = RouteConfig(
        name="kserve",
        path="/v2/models/{model}/infer",
        protocol="json",
        input_fields=("/inputs/*/data",),
        output_fields=("/outputs/*/data",),
    )
    adapter = adapter_for(route)
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}
    assert seg_tuples(adapter.input_segments(body)) == [("user", "hello", "/inputs/0/data/0")]
    two = {
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [["first"], ["second"]]},
            {"name": "ids", "datatype": "INT64", "shape": [2], "data": [1, 2]},
        ]
    }
    assert seg_tuples(adapter.input_segments(two)) == [
        ("user", "first", "/inputs/0/data/0/0"),
        ("user", "second", "/inputs/0/data/1/0"),
    ]
    response = {
        "model_name": "clf",
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [1], "data": ["ok"]}],
    }
    assert seg_tuples(adapter.output_segments(response)) == [("assistant", "ok", "/outputs/0/data/0")]


def test_json_adapter_several_pointers_in_order() -> None:
    adapter = JsonFieldsAdapter(input_fields=["/prompt", "/system"], output_fields=["/generated_text"])
    body = {"system": "sys", "prompt": "user text"}
    assert seg_tuples(adapter.input_segments(body)) == [
        ("user", "user text", "/prompt"),
        ("user", "sys", "/system"),
    ]
    assert seg_tuples(adapter.output_segments({"generated_text": "out"})) == [
        ("assistant", "out", "/generated_text")
    ]


def test_json_adapter_stream_deltas() -> None:
    adapter = JsonFieldsAdapter(input_fields=["/inputs"], output_fields=["/token/text"])
    state = StreamState()
    assert adapter.stream_deltas({"token": {"id": 1, "text": "Hel"}}, state) == [("0", "Hel")]
    assert adapter.stream_deltas({"token": {"id": 2, "text": ""}}, state) == []
    assert adapter.stream_deltas({"details": {}}, state) == []
    assert state.channels == ["0"]
    assert adapter.uses_done_sentinel is False


def test_json_adapter_deeply_nested_text_is_not_silently_skipped() -> None:
    # Text the adapter does not read would be forwarded unscreened: it must be read
    # or the request refused.
    deep: Any = "hidden trigger"
    for _ in range(40):
        deep = [deep]
    adapter = JsonFieldsAdapter(input_fields=["/inputs"], output_fields=[])
    try:
        segments = adapter.input_segments({"inputs": deep})
    except ProtocolError:
        return
    assert [s.text for s in segments] == ["hidden trigger"]


def test_json_adapter_filtered_response_is_none() -> None:
    assert JsonFieldsAdapter(["/a"], ["/b"]).filtered_response({"b": "x"}, "m") is None


def test_a_message_name_without_content_is_screened() -> None:
    assert _texts_at({"messages": [{"role": "user", "name": "NAME"}]}) == {"/messages/0/name": "NAME"}


@pytest.mark.parametrize(
    ("adapter", "body", "param"),
    [
        pytest.param(TritonGenerateAdapter, {"text_input": ["hi", [7, 8]]}, None, id="triton-mixed"),
        pytest.param(PoolingAdapter, {"input": ["hi", [7, 8]]}, "input", id="pooling-mixed"),
        pytest.param(PoolingAdapter, {"input": [[7, 8], [9]]}, "input", id="pooling-batch"),
    ],
)
def test_token_ids_mixed_with_text_are_refused_by_the_native_adapters(
    adapter: Any, body: dict[str, Any], param: str | None
) -> None:
    # The ids reach the model unread whatever the strings beside them say.
    with pytest.raises(UnscreenableInput) as info:
        adapter().input_segments(body)
    if param is not None:
        assert info.value.param == param
