"""Screening any JSON endpoint through configured JSON pointers.

A KServe v2 classifier (``/v2/models/{model}/infer``), a text-generation-inference
``/generate`` or a custom route names where its texts are: ``input_fields`` and
``output_fields`` are RFC 6901 JSON pointers in which a ``*`` segment matches
every element of an array or every member of an object. A pointer that lands on
an array or object screens every string inside it, so ``/inputs/*/data`` covers
a KServe tensor of strings however it is nested. Streams are read the same way:
each SSE event's JSON is matched against ``output_fields``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from firewall.core.errors import ProtocolError
from firewall.core.types import Phase, Segment
from firewall.protocols.base import ProtocolAdapter, StreamState
from firewall.protocols.fields import pointer_token

__all__ = ["JsonFieldsAdapter", "resolve_pointer"]

_MAX_DEPTH = 32


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def resolve_pointer(doc: Any, pointer: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(concrete_pointer, value)`` for every match of ``pointer`` in ``doc``."""
    tokens = [_unescape(t) for t in pointer.split("/")[1:]] if pointer else []

    def walk(node: Any, i: int, path: str) -> Iterator[tuple[str, Any]]:
        if i == len(tokens):
            yield path, node
            return
        step = tokens[i]
        if isinstance(node, list):
            if step == "*":
                for k, child in enumerate(node):
                    yield from walk(child, i + 1, f"{path}/{k}")
            elif step.isascii() and step.isdigit() and int(step) < len(node):
                yield from walk(node[int(step)], i + 1, f"{path}/{step}")
        elif isinstance(node, dict):
            if step == "*":
                for key, child in node.items():
                    yield from walk(child, i + 1, f"{path}/{pointer_token(str(key))}")
            elif step in node:
                yield from walk(node[step], i + 1, f"{path}/{pointer_token(step)}")

    yield from walk(doc, 0, "")


def _strings(node: Any, path: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    """Every string leaf under ``node``, with its pointer.

    Text nested deeper than the bound is refused rather than forwarded unscreened.
    """
    if isinstance(node, str):
        yield path, node
        return
    if isinstance(node, list | dict) and node and depth >= _MAX_DEPTH:
        raise ProtocolError(f"body nested more than {_MAX_DEPTH} levels under a screened field")
    if isinstance(node, list):
        for k, child in enumerate(node):
            yield from _strings(child, f"{path}/{k}", depth + 1)
    elif isinstance(node, dict):
        for key, child in node.items():
            yield from _strings(child, f"{path}/{pointer_token(str(key))}", depth + 1)


def _segments(doc: Any, pointers: Sequence[str], role: str) -> list[Segment]:
    out: list[Segment] = []
    for pointer in pointers:
        for path, value in resolve_pointer(doc, pointer):
            out.extend(Segment(role, text, src) for src, text in _strings(value, path))
    return out


class JsonFieldsAdapter(ProtocolAdapter):
    """A route whose texts are named by JSON pointers in config."""

    name = "json"
    uses_done_sentinel = False

    def __init__(self, input_fields: Sequence[str], output_fields: Sequence[str]) -> None:
        self.input_fields = tuple(input_fields)
        self.output_fields = tuple(output_fields)

    def screens(self, phase: Phase) -> bool:
        """Only the sides the route names pointers for have text."""
        return bool(self.output_fields if phase is Phase.OUTPUT else self.input_fields)

    def input_segments(self, body: Any) -> list[Segment]:
        return _segments(body, self.input_fields, "user")

    def output_segments(self, body: Any) -> list[Segment]:
        return _segments(body, self.output_fields, "assistant")

    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        state.see_channel("0")
        return [("0", s.text) for s in _segments(data, self.output_fields, "assistant") if s.text]
