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
from dataclasses import dataclass, field

__all__ = ["HoldbackBuffer", "SseEvent", "SseParser", "SseProtocolError", "TextChannels"]

# A line ending (CRLF, lone CR, lone LF) followed by another: the blank line that ends an event.
_TERMINATOR = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_LINE = re.compile(r"\r\n|\r|\n")


class SseProtocolError(ValueError):
    """The upstream stream broke the SSE framing (e.g. an event larger than allowed)."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One SSE event: its raw bytes (terminator included) and parsed fields."""

    raw: bytes
    event: str | None
    data: str | None

    @property
    def is_done(self) -> bool:
        return self.data is not None and self.data.strip() == "[DONE]"


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


class SseParser:
    """Splits a byte stream into events, whatever the chunk boundaries are."""

    def __init__(self, max_event_bytes: int = 1024 * 1024) -> None:
        self._buf = bytearray()
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Add bytes; return every event completed by them."""
        self._buf += chunk
        events: list[SseEvent] = []
        start = 0
        while True:
            match = _TERMINATOR.search(self._buf, start)
            if match is None:
                break
            if match.end() == len(self._buf) and self._buf.endswith(b"\r"):
                break  # a CR that ends the data may be the first half of a CRLF: wait for more
            if match.start() - start > self._max:
                raise SseProtocolError(f"SSE event larger than {self._max} bytes")
            events.append(parse_event(bytes(self._buf[start : match.end()])))
            start = match.end()
        if start:
            del self._buf[:start]
        if len(self._buf) > self._max:
            raise SseProtocolError(f"SSE event larger than {self._max} bytes")
        return events

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


@dataclass(slots=True)
class TextChannels:
    """Text accumulated per channel (per choice) from a stream's deltas."""

    parts: dict[str, list[str]] = field(default_factory=dict)
    total: int = 0

    def add(self, channel: str, text: str) -> None:
        self.parts.setdefault(channel, []).append(text)
        self.total += len(text)

    def texts(self) -> list[tuple[str, str]]:
        return [(ch, "".join(parts)) for ch, parts in self.parts.items()]


class HoldbackBuffer:
    """Events waiting for their text to be scanned with enough context after it.

    Each pending event remembers the cumulative character count at which its
    text ended. After a scan that covered ``scanned`` characters, events ending
    at or before ``scanned - holdback_chars`` are safe to release.
    """

    def __init__(self, holdback_chars: int, scan_every_chars: int) -> None:
        self.holdback = holdback_chars
        self.scan_every = scan_every_chars
        self._pending: deque[tuple[bytes, int]] = deque()
        self.total = 0
        self.scanned = 0
        self.released_chars = 0

    def add(self, raw: bytes, chars: int) -> None:
        self.total += chars
        self._pending.append((raw, self.total))

    @property
    def scan_due(self) -> bool:
        return self.total - self.scanned >= self.scan_every

    @property
    def held_chars(self) -> int:
        return self.total - self.released_chars

    def mark_scanned(self) -> bytes:
        """Record a clean scan of everything so far; return the bytes now releasable."""
        self.scanned = self.total
        limit = self.scanned - self.holdback
        out: list[bytes] = []
        while self._pending and self._pending[0][1] <= limit:
            raw, end = self._pending.popleft()
            out.append(raw)
            self.released_chars = end
        return b"".join(out)

    def release_all(self) -> bytes:
        """Everything pending (after a final clean scan at the end of the stream)."""
        out = b"".join(raw for raw, _ in self._pending)
        self._pending.clear()
        self.released_chars = self.total
        return out
