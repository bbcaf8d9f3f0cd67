"""Server-sent events: an incremental parser and the hold-back window for screened streams.

Both pieces are protocol-agnostic and free of I/O so they can be tested alone;
``proxy.py`` drives them with upstream bytes and the protocol adapter.

Events are relayed *verbatim*: the parser keeps each event's raw bytes, so a
stream that is screened but not blocked reaches the client byte for byte as
the upstream sent it. The hold-back window keeps events until the text they
carry has been scanned with at least ``holdback_chars`` of later text behind it
(or the stream has ended), so text that is released has always been seen by the
output detectors, with context after it.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from firewall.core.errors import UpstreamError

__all__ = ["HoldbackBuffer", "NdjsonParser", "SseEvent", "SseParser", "SseProtocolError", "TextChannels"]

# A line ending (CRLF, lone CR, lone LF) followed by another: the blank line that ends an event.
_TERMINATOR = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_LINE = re.compile(r"\r\n|\r|\n")


class SseProtocolError(UpstreamError):
    """The upstream stream broke the SSE framing (e.g. an event larger than allowed)."""

    reason = "invalid_sse"


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One SSE event: its raw bytes (terminator included) and parsed fields."""

    raw: bytes
    event: str | None
    data: str | None
    #: Whether ``data: [DONE]`` ends the stream (SSE); NDJSON has no sentinel.
    done_sentinel: bool = True

    @property
    def is_done(self) -> bool:
        return self.done_sentinel and self.data is not None and self.data.strip() == "[DONE]"


def parse_event(raw: bytes) -> SseEvent:
    """Parse one event block; comment-only blocks get ``data=None``."""
    text = raw.decode("utf-8", errors="replace").removeprefix("\ufeff")
    event: str | None = None
    data: list[str] = []
    for line in _LINE.split(text):
        if not line or line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    return SseEvent(raw=raw, event=event, data="\n".join(data) if data else None)


class _Framer:
    """Splits a byte stream into events, whatever the chunk boundaries are: the framing
    (where an event ends, what it holds) is the subclass's."""

    #: What the framing calls an event, for errors.
    unit = "event"

    def __init__(self, max_event_bytes: int = 1024 * 1024) -> None:
        self._buf = bytearray()
        self._max = max_event_bytes

    def _boundary(self, buf: bytearray, start: int) -> tuple[int, int] | None:
        """Where the next event from ``start`` ends: (end of its content, end of its
        terminator), or ``None`` while it is incomplete."""
        raise NotImplementedError

    def _event(self, raw: bytes) -> SseEvent:
        raise NotImplementedError

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Add bytes; return every event completed by them."""
        self._buf += chunk
        events: list[SseEvent] = []
        start = 0
        while (found := self._boundary(self._buf, start)) is not None:
            content_end, end = found
            if content_end - start > self._max:
                raise SseProtocolError(f"{self.unit} larger than {self._max} bytes")
            events.append(self._event(bytes(self._buf[start:end])))
            start = end
        if start:
            del self._buf[:start]
        if len(self._buf) > self._max:
            raise SseProtocolError(f"{self.unit} larger than {self._max} bytes")
        return events


class SseParser(_Framer):
    """Splits an SSE byte stream into events."""

    unit = "SSE event"

    def _boundary(self, buf: bytearray, start: int) -> tuple[int, int] | None:
        match = _TERMINATOR.search(buf, start)
        if match is None:
            return None
        if match.end() == len(buf) and buf.endswith(b"\r"):
            return None  # a CR that ends the data may be the first half of a CRLF: wait for more
        return match.start(), match.end()

    def _event(self, raw: bytes) -> SseEvent:
        return parse_event(raw)

    def flush(self) -> SseEvent | None:
        """At end of stream: the last event, if the data ended inside or right after it.

        An event whose blank line ended in a lone CR was held back by :meth:`feed`
        (the CR could have been half of a CRLF) and comes out here unchanged; an
        event with no blank line at all gets one, so it is well-formed downstream.
        """
        if not self._buf.strip():
            self._buf.clear()
            return None
        raw = bytes(self._buf)
        self._buf.clear()
        match = _TERMINATOR.search(raw)
        if match is None or match.end() != len(raw):
            raw += b"\n\n"
        return parse_event(raw)


class NdjsonParser(_Framer):
    """Splits an NDJSON stream (Ollama's: one JSON object a line) into line events.

    Each event's ``data`` is the line without its ending and ``raw`` the line as sent,
    ending included, so a stream that is not blocked is relayed byte for byte. Blank
    lines are kept as events without data. There is no end sentinel.
    """

    unit = "NDJSON line"

    def _boundary(self, buf: bytearray, start: int) -> tuple[int, int] | None:
        end = buf.find(b"\n", start)
        return None if end < 0 else (end, end + 1)

    def _event(self, raw: bytes) -> SseEvent:
        line = raw.decode("utf-8", errors="replace").strip()
        return SseEvent(raw=raw, event=None, data=line or None, done_sentinel=False)

    def flush(self) -> SseEvent | None:
        """At end of stream: a last line without its line feed (given one)."""
        if not self._buf.strip():
            self._buf.clear()
            return None
        raw = bytes(self._buf) + b"\n"
        self._buf.clear()
        return self._event(raw)


@dataclass(slots=True)
class TextChannels:
    """Text accumulated per channel (per choice) from a stream's deltas."""

    parts: dict[str, list[str]] = field(default_factory=dict)
    total: int = 0
    lengths: dict[str, int] = field(default_factory=dict)

    def add(self, channel: str, text: str) -> int:
        """Append text to a channel; returns the channel's new length."""
        self.parts.setdefault(channel, []).append(text)
        self.total += len(text)
        length = self.lengths.get(channel, 0) + len(text)
        self.lengths[channel] = length
        return length

    def texts(self) -> list[tuple[str, str]]:
        out = []
        for channel, parts in self.parts.items():
            if len(parts) > 1:
                parts[:] = ["".join(parts)]  # join once; later scans reuse it
            out.append((channel, parts[0] if parts else ""))
        return out


class HoldbackBuffer:
    """Events waiting until the output detectors say their text may go out.

    Each pending event remembers, for every channel it added text to, the length
    of that channel's text once the event is applied. After a clean scan the
    relay computes, per channel, a *safe prefix*: the number of leading
    characters no detector will need to block (a fixed window behind the newest
    text, or what a structure-aware detector says, e.g. "up to the open code
    block"). Events are released in order while every channel they touch ends
    within its safe prefix; an event that carries no text follows its
    predecessors.
    """

    def __init__(self, scan_every_chars: int) -> None:
        self.scan_every = scan_every_chars
        self._pending: deque[tuple[bytes, tuple[tuple[str, int], ...]]] = deque()
        self.total = 0
        self.scanned = 0
        self.released_chars = 0
        self._released: dict[str, int] = {}
        self._lengths: dict[str, int] = {}

    def add(self, raw: bytes, positions: tuple[tuple[str, int], ...] = ()) -> None:
        """Queue an event; ``positions`` are (channel, channel length after it)."""
        for channel, length in positions:
            self.total += length - self._lengths.get(channel, 0)
            self._lengths[channel] = length
        self._pending.append((raw, positions))

    @property
    def scan_due(self) -> bool:
        """Whether the relay should screen now.

        Until some text has reached the client, at every upstream chunk that adds text:
        time to the first token is what a user feels, and detectors that judge text
        with little look-ahead (``stream_safe_prefix``) can release a first word at
        once. After that, every ``scan_every_chars`` new characters, which bounds the
        cost of rescanning a growing text.
        """
        new = self.total - self.scanned
        if self.released_chars == 0:
            return new > 0
        return new >= self.scan_every

    @property
    def held_chars(self) -> int:
        return self.total - self.released_chars

    def mark_scanned(self, safe: Mapping[str, int]) -> bytes:
        """Record a clean scan; release the events that ``safe`` (channel -> characters) allows."""
        self.scanned = self.total
        out: list[bytes] = []
        while self._pending:
            raw, positions = self._pending[0]
            if any(end > safe.get(channel, 0) for channel, end in positions):
                break
            self._pending.popleft()
            out.append(raw)
            for channel, end in positions:
                self.released_chars += end - self._released.get(channel, 0)
                self._released[channel] = end
        return b"".join(out)

    def release_all(self) -> bytes:
        """Everything pending (after a final clean scan at the end of the stream)."""
        out = b"".join(raw for raw, _ in self._pending)
        self._pending.clear()
        self._released = dict(self._lengths)
        self.released_chars = self.total
        return out
