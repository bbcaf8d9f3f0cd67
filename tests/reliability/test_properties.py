"""Property-based tests: the request parsers and the SSE parser on arbitrary input.

The contract under test is the one the proxy relies on: a parser either
returns its result or raises :class:`ProtocolError` (answered 400), and the SSE
parser either yields events or raises :class:`SseProtocolError` (the stream ends
with an error event). Any other exception would be a 500 or a dead stream.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from firewall.core.errors import ProtocolError
from firewall.core.types import Segment
from firewall.protocols import StreamState
from firewall.protocols.json_fields import JsonFieldsAdapter, resolve_pointer
from firewall.protocols.openai import ChatAdapter, CompletionsAdapter, EmbeddingsAdapter, ResponsesAdapter
from firewall.proxy.handler import _parse_json
from firewall.proxy.streaming import SseParser, SseProtocolError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text with the characters that break naive code: NUL, lone surrogates are excluded by
# JSON itself, so use controls, bidi marks, invisible characters and astral planes.
text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\x00", "\u200b", "\u202e", "\ufeff", "\U000e0041", "\r", "\n", "~", "/", "*"]),
    ),
    max_size=40,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
    max_leaves=20,
)
# Bodies shaped like the APIs' (so the parsers get past their first checks), with junk inside.
part = st.one_of(
    json_values,
    st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text", "refusal", "image_url"])}).flatmap(
        lambda d: st.fixed_dictionaries({**{k: st.just(v) for k, v in d.items()}, "text": json_values})
    ),
)
message = st.dictionaries(
    st.sampled_from(["role", "content", "tool_calls", "function_call", "name", "x"]),
    st.one_of(json_values, st.lists(part, max_size=4)),
    max_size=5,
)
api_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"messages": st.one_of(json_values, st.lists(message, max_size=4))}),
    st.fixed_dictionaries({"prompt": json_values, "suffix": json_values}),
    st.fixed_dictionaries({"input": st.one_of(json_values, st.lists(message, max_size=4))}),
    st.fixed_dictionaries({"instructions": json_values, "input": json_values}),
)
ADAPTERS = [ChatAdapter(), CompletionsAdapter(), ResponsesAdapter(), EmbeddingsAdapter()]


def check_segments(segments: list[Segment]) -> None:
    for seg in segments:
        assert isinstance(seg.text, str)
        assert isinstance(seg.role, str)
        assert seg.source == "" or seg.source.startswith("/")  # "" is the whole document (RFC 6901)


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.name)
@SETTINGS
@given(body=api_bodies)
def test_request_parsers_answer_or_refuse(adapter, body: Any):
    try:
        segments = adapter.input_segments(body)
    except ProtocolError:
        return
    check_segments(segments)
    # Every text the parser found is a string that really is in the body, at the pointer it gave.
    for seg in segments:
        found = [v for _, v in resolve_pointer(body, seg.source)]
        assert found == [seg.text], seg.source


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.name)
@SETTINGS
@given(body=api_bodies, events=st.lists(json_values, max_size=6))
def test_response_and_stream_parsers_never_raise(adapter, body: Any, events: list[Any]):
    check_segments(adapter.output_segments(body))
    state = StreamState()
    for event in events:
        for channel, delta in adapter.stream_deltas(event, state):
            assert isinstance(channel, str)
            assert isinstance(delta, str)
    for style in ("content_filter", "error"):
        terminal = adapter.terminal_events(state, "withheld", style)
        parsed = SseParser().feed(terminal)
        assert parsed
        assert b"".join(e.raw for e in parsed) == terminal


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_body_parser_on_arbitrary_bytes(raw: bytes):
    try:
        value = _parse_json(raw)
    except ProtocolError as exc:
        status = exc.status
    else:
        assert orjson.loads(raw) == value  # what the proxy screens is what the upstream reads
        return
    assert status == 400


@pytest.mark.parametrize("depth", [10, 500, 1023, 1024, 5000, 200_000])
def test_deep_nesting_is_refused_not_a_recursion_error(depth: int):
    for opener, closer in ((b"[", b"]"), (b'{"a":', b"}")):
        raw = opener * depth + b"1" + closer * depth
        if depth > 1024:  # past orjson's bound: a 400, never a RecursionError
            with pytest.raises(ProtocolError) as refused:
                _parse_json(raw)
            assert refused.value.status == 400
            continue
        value = _parse_json(raw)
        for adapter in ADAPTERS:
            with contextlib.suppress(ProtocolError):
                adapter.input_segments({"messages": [value], "input": [value], "prompt": [value]})
        list(JsonFieldsAdapter(["/*"], ()).input_segments([1]))


pointer = st.lists(st.one_of(text, st.just("*"), st.integers(0, 5).map(str)), max_size=5).map(
    lambda tokens: "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)
)


@SETTINGS
@given(doc=json_values, pointers=st.lists(pointer, min_size=1, max_size=3))
def test_configured_json_pointers_extract_exactly_the_strings_they_name(doc: Any, pointers: list[str]):
    adapter = JsonFieldsAdapter(pointers, pointers)
    try:
        segments = adapter.input_segments(doc)
    except ProtocolError:
        return  # nested past the bound under a screened field: refused, never forwarded unscreened
    check_segments(segments)
    for seg in segments:
        assert [v for _, v in resolve_pointer(doc, seg.source)] == [seg.text]
    state = StreamState()
    assert [t for _, t in adapter.stream_deltas(doc, state)] == [s.text for s in segments if s.text]


def test_json_pointer_depth_bound_refuses_instead_of_recursing():
    doc: Any = "deep text"
    for _ in range(5000):
        doc = [doc]
    with pytest.raises(ProtocolError):
        JsonFieldsAdapter(["/*"], ()).input_segments([doc])


sse_bytes = st.lists(
    st.one_of(
        st.binary(max_size=30),
        st.sampled_from(
            [b"\n", b"\r", b"\r\n", b"\n\n", b"\r\r", b"data: ", b"event: x\n", b":c\n", b"\x00"]
        ),
        st.sampled_from([b"data: [DONE]\n\n", b'data: {"a": 1}\n\n', b"\xff\xfe\n\n"]),
    ),
    max_size=30,
).map(b"".join)


@SETTINGS
@given(data=sse_bytes, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_sse_parser_relays_bytes_verbatim_whatever_the_chunking(data: bytes, cuts: list[int]):
    """Events carry their raw bytes: what comes out, concatenated, is exactly what went in."""
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    parser = SseParser()
    out = chunked = b"".join(e.raw for chunk in chunks for e in parser.feed(chunk))
    tail = parser.flush()
    whole = SseParser()
    reference = b"".join(e.raw for e in whole.feed(data))
    reference_tail = whole.flush()
    if tail is not None:
        rest = data[len(out) :]
        assert tail.raw.startswith(rest)  # flush may only add a terminator
        out += rest
    else:
        assert not data[len(out) :].strip()
        out = data
    assert out == data
    assert (tail is None) == (reference_tail is None)
    assert chunked == reference  # chunk boundaries never change which events come out


@SETTINGS
@given(
    size=st.integers(1024, 8192),
    pad=st.binary(min_size=1, max_size=20).filter(lambda b: b"\n" not in b and b"\r" not in b),
)
def test_sse_parser_bounds_an_event_that_never_ends(size: int, pad: bytes):
    parser = SseParser(max_event_bytes=size)
    for _ in range(size // len(pad) - 1):
        parser.feed(pad)  # below the bound: buffered
    with pytest.raises(SseProtocolError):
        parser.feed(pad * 3)


@SETTINGS
@given(token=st.text(min_size=1, max_size=5).map(lambda t: t * 20_000))
def test_huge_single_tokens_parse_and_extract(token: str):
    body = {"model": "m", "messages": [{"role": "user", "content": token}]}
    raw = orjson.dumps(body)
    parsed = _parse_json(raw)
    assert ChatAdapter().input_segments(parsed)[0].text == token
    frame = b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": token}}]}) + b"\n\n"
    events = SseParser(max_event_bytes=len(frame) + 1).feed(frame)
    assert ChatAdapter().stream_deltas(orjson.loads(events[0].data or "null"), StreamState()) == [
        ("0", token)
    ]
