"""atheris fuzz target: upstream SSE bytes through the parser and the stream adapters.

    .venv/bin/python tests/fuzz/fuzz_sse_parser.py -runs=100000

The first input byte picks chunk boundaries, so the parser sees the same bytes
split in many ways. The contract: only ``SseProtocolError`` escapes, and the
events' raw bytes always concatenate back to the input (events are relayed
verbatim).
"""

from __future__ import annotations

import sys

import aiohttp  # noqa: F401 - heavy dependencies load uninstrumented
import atheris
import orjson
import pydantic  # noqa: F401
import yaml  # noqa: F401

with atheris.instrument_imports(include=["firewall.proxy.streaming", "firewall.protocols"]):
    from firewall.protocols.base import StreamState
    from firewall.protocols.openai import ChatAdapter, CompletionsAdapter, ResponsesAdapter
    from firewall.proxy.streaming import SseParser, SseProtocolError

ADAPTERS = [ChatAdapter(), CompletionsAdapter(), ResponsesAdapter()]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    step = data[0] % 17 + 1
    payload = data[1:]
    parser = SseParser(max_event_bytes=4096)
    states = [StreamState() for _ in ADAPTERS]
    out = bytearray()
    try:
        for start in range(0, len(payload), step):
            for event in parser.feed(payload[start : start + step]):
                out += event.raw
                if event.data is None or event.is_done:
                    continue
                try:
                    doc = orjson.loads(event.data)
                except orjson.JSONDecodeError:
                    continue
                for adapter, state in zip(ADAPTERS, states, strict=True):
                    adapter.stream_deltas(doc, state)
    except SseProtocolError:
        return
    tail = parser.flush()
    rest = payload[len(out) :]
    if tail is not None and not tail.raw.startswith(rest):
        raise AssertionError("flush changed the bytes of the last event")
    if tail is None and rest.strip():
        raise AssertionError("bytes were dropped")
    if bytes(out) != payload[: len(out)]:
        raise AssertionError("events are not a verbatim prefix of the input")
    for adapter, state in zip(ADAPTERS, states, strict=True):
        adapter.terminal_events(state, "withheld", "content_filter")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
