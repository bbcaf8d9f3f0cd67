"""Unit tests for firewall/proxy/streaming.py: SSE parsing, the hold-back window, text channels."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings, strategies as st

from firewall.proxy.streaming import (
    HoldbackBuffer,
    SseEvent,
    SseParser,
    SseProtocolError,
    TextChannels,
    parse_event,
)

# A stream that exercises every field kind; written with LF and converted for CRLF / CR.
STREAM_LF = (
    b": keep-alive\n\n"
    b'event: message\ndata: {"a": 1}\n\n'
    b"data: line1\ndata:line2\n\n"
    b"id: 7\nretry: 100\ndata: x\n\n"
    b"data: caf\xc3\xa9\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    (None, None),
    ("message", '{"a": 1}'),
    (None, "line1\nline2"),
    (None, "x"),
    (None, "café"),
    (None, "[DONE]"),
]
LINE_ENDINGS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def stream_with(eol: bytes) -> bytes:
    return STREAM_LF.replace(b"\n", eol)


def parse_chunks(
    chunks: list[bytes], parser: SseParser | None = None
) -> tuple[list[SseEvent], SseEvent | None]:
    parser = parser or SseParser()
    events: list[SseEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events, parser.flush()


def complete_events(chunks: list[bytes]) -> list[SseEvent]:
    """All events of a well-formed stream, the one flush() releases included.

    feed() holds back an event whose blank line is a lone CR at the very end of
    the data (it could be half of a CRLF); flush() releases it unchanged.
    """
    events, tail = parse_chunks(chunks)
    if tail is not None:
        assert tail.raw.endswith(b"\r"), tail
        events.append(tail)
    return events


def fields(events: list[SseEvent]) -> list[tuple[str | None, str | None]]:
    return [(e.event, e.data) for e in events]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --------------------------------------------------------------------------- SseParser


@pytest.mark.parametrize("eol", LINE_ENDINGS.values(), ids=LINE_ENDINGS.keys())
def test_whole_stream_in_one_chunk(eol: bytes) -> None:
    data = stream_with(eol)
    events, tail = parse_chunks([data])
    if eol == b"\r":
        # A lone CR at the very end could be half of a CRLF, so feed() holds the last
        # event back until more data or flush() tells.
        assert tail is not None
        events.append(tail)
    else:
        assert tail is None
    assert fields(events) == EXPECTED
    assert b"".join(e.raw for e in events) == data
    assert events[1].raw == b"event: message" + eol + b'data: {"a": 1}' + eol + eol


@pytest.mark.parametrize("eol", LINE_ENDINGS.values(), ids=LINE_ENDINGS.keys())
def test_byte_by_byte(eol: bytes) -> None:
    data = stream_with(eol)
    events = complete_events([data[i : i + 1] for i in range(len(data))])
    assert fields(events) == EXPECTED
    assert b"".join(e.raw for e in events) == data


@pytest.mark.parametrize("eol", LINE_ENDINGS.values(), ids=LINE_ENDINGS.keys())
def test_every_two_chunk_and_three_chunk_split(eol: bytes) -> None:
    data = stream_with(eol)
    n = len(data)
    for i in range(n + 1):
        events = complete_events([data[:i], data[i:]])
        assert fields(events) == EXPECTED, f"split at {i}"
        assert b"".join(e.raw for e in events) == data
    for i in range(1, n):
        for j in range(i, n):
            events = complete_events(split_at(data, [i, j]))
            assert fields(events) == EXPECTED, f"split at {i}, {j}"
            assert b"".join(e.raw for e in events) == data


def test_events_are_returned_as_soon_as_complete() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\n") == []
    (event,) = parser.feed(b"\ndata: b")
    assert event.data == "a"
    assert parser.feed(b"\n") == []
    (event,) = parser.feed(b"\n")
    assert event.data == "b"


@pytest.mark.parametrize(
    ("raw", "event", "data"),
    [
        (b"data: hello\n\n", None, "hello"),
        (b"data:hello\n\n", None, "hello"),
        (b"data:  two spaces\n\n", None, " two spaces"),
        (b"data\n\n", None, ""),
        (b"data:\n\n", None, ""),
        (b"data: a\ndata: b\ndata: c\n\n", None, "a\nb\nc"),
        (b"data: a\ndata:\ndata: c\n\n", None, "a\n\nc"),
        (b"event: delta\ndata: x\n\n", "delta", "x"),
        (b"data: x\nevent: delta\n\n", "delta", "x"),
        (b"event: only\n\n", "only", None),
        (b": comment\ndata: x\n: another\n\n", None, "x"),
        (b": only a comment\n\n", None, None),
        (b"id: 1\nretry: 5\nfoo: bar\n\n", None, None),
        (b"data: a: b: c\n\n", None, "a: b: c"),
        (b"data: x\r\ndata: y\r\n\r\n", None, "x\ny"),
        (b"data: x\rdata: y\r\r", None, "x\ny"),
        (b"data: \xff\n\n", None, "\ufffd"),
    ],
)
def test_parse_event_fields(raw: bytes, event: str | None, data: str | None) -> None:
    parsed = parse_event(raw)
    assert (parsed.event, parsed.data) == (event, data)
    assert parsed.raw == raw


@pytest.mark.parametrize(
    ("data", "done"),
    [
        ("[DONE]", True),
        (" [DONE] ", True),
        ("[DONE]x", False),
        ('{"text": "[DONE]"}', False),
        ("", False),
        (None, False),
    ],
)
def test_is_done(data: str | None, done: bool) -> None:
    assert SseEvent(raw=b"", event=None, data=data).is_done is done


def test_is_done_from_the_wire() -> None:
    events, _ = parse_chunks([b"data: {}\n\ndata: [DONE]\n\n"])
    assert [e.is_done for e in events] == [False, True]


def test_flush_trailing_event_without_blank_line() -> None:
    parser = SseParser()
    assert parser.feed(b"data: one\n\ndata: tail") == [SseEvent(b"data: one\n\n", None, "one")]
    tail = parser.flush()
    assert tail is not None
    assert tail.data == "tail"
    assert tail.raw == b"data: tail\n\n"
    assert parser.flush() is None


@pytest.mark.parametrize("rest", [b"", b"\n", b"\r\n", b"   \n"])
def test_flush_without_pending_event(rest: bytes) -> None:
    parser = SseParser()
    parser.feed(b"data: a\n\n" + rest)
    assert parser.flush() is None
    assert parser.flush() is None


def test_flush_resets_the_parser() -> None:
    parser = SseParser()
    parser.feed(b"data: old")
    assert parser.flush() is not None
    (event,) = parser.feed(b"data: new\n\n")
    assert event.data == "new"


def test_oversize_event_raises_when_it_arrives_in_pieces() -> None:
    parser = SseParser(max_event_bytes=64)
    parser.feed(b"data: " + b"x" * 40)
    with pytest.raises(SseProtocolError):
        parser.feed(b"x" * 40)


@pytest.mark.parametrize("chunk_size", [1, 16, 1000])
def test_oversize_event_raises_whatever_the_chunking(chunk_size: int) -> None:
    data = b"data: " + b"x" * 200 + b"\n\n"
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    with pytest.raises(SseProtocolError):
        parse_chunks(chunks, SseParser(max_event_bytes=64))


def test_many_small_events_in_one_large_chunk_are_fine() -> None:
    data = b"data: 0123456789\n\n" * 50
    events = SseParser(max_event_bytes=64).feed(data)
    assert len(events) == 50
    assert {e.data for e in events} == {"0123456789"}


def test_event_at_the_size_limit_is_accepted() -> None:
    parser = SseParser(max_event_bytes=64)
    body = b"data: " + b"x" * 58
    assert len(body) == 64
    assert parser.feed(body) == []
    (event,) = parser.feed(b"\n\n")
    assert event.data == "x" * 58


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"data: a\r\n\ndata: b\n\n", id="crlf-line-then-lf-blank"),
        pytest.param(b"data: a\n\r\ndata: b\n\n", id="lf-line-then-crlf-blank"),
        pytest.param(b"data: a\n\rdata: b\n\n", id="lf-line-then-cr-blank"),
    ],
)
def test_mixed_line_endings_still_split_events(data: bytes) -> None:
    # The SSE spec lets every line end in CRLF, LF or CR independently.
    events, tail = parse_chunks([data])
    assert [e.data for e in [*events, *([tail] if tail else [])]] == ["a", "b"]


# --------------------------------------------------------------------------- property test

_line_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=12
)
_event = st.tuples(
    st.one_of(st.none(), st.text(alphabet="abcdefghijklmnopqrstuvwxyz._", min_size=1, max_size=10)),
    st.lists(_line_text, min_size=1, max_size=3),
    st.one_of(st.none(), _line_text),
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_event, min_size=1, max_size=6),
    eol=st.sampled_from(list(LINE_ENDINGS.values())),
    data=st.data(),
)
def test_any_split_yields_the_same_events(
    events: list[tuple[str | None, list[str], str | None]], eol: bytes, data: st.DataObject
) -> None:
    blocks: list[bytes] = []
    expected: list[tuple[str | None, str | None]] = []
    for name, lines, comment in events:
        out: list[str] = []
        if comment is not None:
            out.append(":" + comment)
        if name is not None:
            out.append("event: " + name)
        out.extend("data: " + line for line in lines)
        blocks.append("".join(line + eol.decode() for line in out).encode() + eol)
        expected.append((name, "\n".join(lines)))
    stream = b"".join(blocks)
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=len(stream) - 1), max_size=12)))
    parsed = complete_events(split_at(stream, cuts))
    assert fields(parsed) == expected
    assert [e.raw for e in parsed] == blocks
    assert b"".join(e.raw for e in parsed) == stream


# --------------------------------------------------------------------------- HoldbackBuffer


def test_holdback_releases_what_the_safe_prefixes_allow() -> None:
    hb = HoldbackBuffer(scan_every_chars=5)
    hb.add(b"A", (("0", 4),))
    hb.add(b"B", (("0", 8),))
    assert hb.total == 8
    assert hb.held_chars == 8
    assert hb.scan_due
    assert hb.mark_scanned({"0": 3}) == b""  # A ends at 4 > 3
    assert hb.scanned == 8
    assert not hb.scan_due
    hb.add(b"C", (("0", 18),))
    assert hb.held_chars == 18
    assert hb.mark_scanned({"0": 8}) == b"AB"
    assert hb.released_chars == 8
    assert hb.held_chars == 10
    assert hb.mark_scanned({"0": 17}) == b""  # C ends at 18
    assert hb.release_all() == b"C"
    assert hb.held_chars == 0
    assert hb.release_all() == b""


def test_every_channel_an_event_touches_must_be_safe() -> None:
    hb = HoldbackBuffer(scan_every_chars=1)
    hb.add(b"AB", (("0", 5), ("1", 5)))
    hb.add(b"A2", (("0", 9),))
    assert hb.mark_scanned({"0": 9, "1": 4}) == b""  # channel 1 is not safe yet; order holds A2 too
    assert hb.mark_scanned({"0": 9, "1": 5}) == b"ABA2"
    assert hb.released_chars == 14


@pytest.mark.parametrize(
    ("scan_every", "added", "due"),
    [(5, 4, False), (5, 5, True), (5, 6, True), (1, 0, False), (1, 1, True)],
)
def test_scan_due_after_first_release(scan_every: int, added: int, due: bool) -> None:
    hb = HoldbackBuffer(scan_every_chars=scan_every)
    hb.add(b"w", (("0", 3),))
    assert hb.mark_scanned({"0": 3}) == b"w"  # the first text went out
    hb.add(b"x", (("0", 3 + added),))
    assert hb.scan_due is due


@pytest.mark.parametrize(("added", "due"), [(0, False), (1, True), (4, True)])
def test_scan_due_at_every_chunk_until_text_went_out(added: int, due: bool) -> None:
    """Time to first content: before anything was released, any new text is worth a scan."""
    hb = HoldbackBuffer(scan_every_chars=64)
    hb.add(b"x", (("0", added),))
    assert hb.scan_due is due
    if due:
        assert hb.mark_scanned({"0": 0}) == b""  # held (e.g. an open code block): still nothing out
        hb.add(b"y", (("0", added + 1),))
        assert hb.scan_due  # so the next chunk is scanned too


def test_events_without_text_keep_their_place() -> None:
    hb = HoldbackBuffer(scan_every_chars=1)
    hb.add(b"<role>")
    hb.add(b"A", (("0", 3),))
    hb.add(b"<empty>")
    hb.add(b"B", (("0", 6),))
    assert hb.mark_scanned({"0": 3}) == b"<role>A<empty>"
    hb.add(b"<finish>")
    assert hb.mark_scanned({"0": 3}) == b""
    assert hb.release_all() == b"B<finish>"


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.one_of(st.integers(min_value=0, max_value=8), st.integers(min_value=-1, max_value=60).map(str)),
        max_size=40,
    ),
)
def test_holdback_invariants(ops: list[int | str]) -> None:
    """Released bytes are always the longest in-order prefix whose text is within the safe limit."""
    hb = HoldbackBuffer(scan_every_chars=1)
    added: list[tuple[bytes, int]] = []  # (raw, channel length after it)
    released = b""
    total = 0
    for k, op in enumerate(ops):
        if isinstance(op, str):
            limit = int(op)
            released += hb.mark_scanned({"0": limit})
            expected = b""
            for raw, end in added:
                if end > limit:
                    break
                expected += raw
            assert released.startswith(expected) or expected.startswith(released)
            assert len(released) >= len(expected)
        else:
            raw = f"<{k}>".encode()
            total += op
            hb.add(raw, (("0", total),))
            added.append((raw, total))
    rest = hb.release_all()
    assert released + rest == b"".join(raw for raw, _ in added)
    assert hb.held_chars == 0


# --------------------------------------------------------------------------- TextChannels


def test_text_channels() -> None:
    channels = TextChannels()
    assert channels.texts() == []
    channels.add("0", "Hel")
    channels.add("1", "Bon")
    channels.add("0", "lo")
    channels.add("1", "jour")
    assert channels.add("0", "") == 5
    assert channels.texts() == [("0", "Hello"), ("1", "Bonjour")]
    assert channels.texts() == [("0", "Hello"), ("1", "Bonjour")]  # joined once, stable
    assert channels.total == 12


def test_text_channels_are_independent_instances() -> None:
    a, b = TextChannels(), TextChannels()
    a.add("0", "x")
    assert b.texts() == []
    assert b.total == 0
