"""The Anthropic Messages API (``/v1/messages``), which vLLM and llama.cpp serve too.

What is screened on input, every model-visible text:

- ``system``: a string or a list of text blocks;
- each message's ``content``: a string or a list of blocks, where ``text``,
  ``thinking`` (and ``redacted_thinking``'s data is not text), ``tool_use`` inputs
  (every key and string in the input object), ``tool_result`` contents (a string or blocks)
  and plain-text ``document`` sources are read; a block of a type not known here is
  screened by every string it holds;
- ``tools``: names, descriptions and parameter text (names too) of their ``input_schema``.

Images and base64 documents are not screened by the text detectors.

Output: the response's ``text``, ``thinking`` and ``tool_use`` input blocks. Streams:
``content_block_delta`` events (``text_delta``, ``thinking_delta``,
``input_json_delta``) on one channel; there is no ``[DONE]`` sentinel. A blocked
stream ends with a ``message_delta`` whose ``stop_reason`` is ``"refusal"`` and a
``message_stop`` (or, in the error style, an ``error`` event).
"""

from __future__ import annotations

from typing import Any

from firewall.core.errors import ProtocolError
from firewall.core.types import Segment
from firewall.protocols.base import ProtocolAdapter, StreamState, probe_fields, sse_event
from firewall.protocols.fields import function_segments, messages_of, require_object, string_leaves

__all__ = ["MessagesAdapter"]

_CHANNEL = "0"  # one message per response


def _block_segments(role: str, content: Any, source: str, out: list[Segment], *, strict: bool) -> None:
    """Texts of a ``content`` value: a string or a list of typed blocks."""
    if isinstance(content, str):
        out.append(Segment(role, content, source))
        return
    if not isinstance(content, list):
        if content is not None and strict:
            raise ProtocolError(
                f"{source.lstrip('/')} must be a string or a list of blocks", param=source[1:]
            )
        return
    for j, block in enumerate(content):
        where = f"{source}/{j}"
        if isinstance(block, str):
            out.append(Segment(role, block, where))
            continue
        if not isinstance(block, dict):
            if strict:
                raise ProtocolError(f"{where.lstrip('/')} must be an object", param=source[1:])
            continue
        kind = block.get("type")
        if kind == "text" or kind == "thinking":
            key = "text" if kind == "text" else "thinking"
            if isinstance(block.get(key), str):
                out.append(Segment(role, block[key], f"{where}/{key}"))
            elif strict:
                raise ProtocolError(f"{where.lstrip('/')}/{key} must be a string", param=source[1:])
        elif kind == "tool_use":
            string_leaves(block.get("input"), f"{where}/input", "assistant", out, keys=True)
        elif kind == "tool_result":
            _block_segments("tool", block.get("content"), f"{where}/content", out, strict=strict)
        elif kind == "document":
            src = block.get("source")
            if isinstance(src, dict) and src.get("type") == "text" and isinstance(src.get("data"), str):
                out.append(Segment(role, src["data"], f"{where}/source/data"))
            elif isinstance(src, dict) and src.get("type") == "content":
                _block_segments(role, src.get("content"), f"{where}/source/content", out, strict=strict)
            for key in ("title", "context"):
                if isinstance(block.get(key), str):
                    out.append(Segment(role, block[key], f"{where}/{key}"))
        elif kind in ("image", "redacted_thinking"):
            continue  # pixels, or an encrypted blob the model server decrypts itself
        else:
            # A block type added after this adapter was written: screen what text it has.
            string_leaves(block, where, role, out)


class MessagesAdapter(ProtocolAdapter):
    """``/v1/messages`` (Anthropic Messages)."""

    name = "anthropic_messages"
    prompt_param = "messages"
    uses_done_sentinel = False
    probe_safe = True

    def probe_body(self, body: Any, max_tokens: int, seed: int) -> Any:
        """No tools or servers to call, no streaming, no extended thinking (its budget must
        exceed max_tokens, so a short probe would be refused); the API takes no seed."""
        return probe_fields(
            body,
            drop=("tools", "tool_choice", "mcp_servers", "container", "thinking", "stream"),
            put={"stream": False, "max_tokens": max_tokens, "temperature": 0},
        )

    def error_body(self, message: str, *, code: str, error_type: str, param: str | None) -> dict[str, Any]:
        """Anthropic's envelope (``{"type": "error", "error": {"type", "message"}}``), which
        the anthropic SDK reads; ``code`` and ``param`` ride along inside ``error``."""
        kind = "api_error" if error_type == "server_error" else error_type
        return {"type": "error", "error": {"type": kind, "message": message, "code": code, "param": param}}

    def input_segments(self, body: Any) -> list[Segment]:
        body = require_object(body)
        messages = list(messages_of(body))  # validated before anything is read
        out: list[Segment] = []
        _block_segments("system", body.get("system"), "/system", out, strict=True)
        for i, msg, role in messages:
            _block_segments(role, msg.get("content"), f"/messages/{i}/content", out, strict=True)
        tools = body.get("tools")
        if isinstance(tools, list):
            for i, tool in enumerate(tools):
                if isinstance(tool, dict):
                    function_segments(tool, f"/tools/{i}", out)
        return out

    def output_segments(self, body: Any) -> list[Segment]:
        out: list[Segment] = []
        if isinstance(body, dict):
            _block_segments("assistant", body.get("content"), "/content", out, strict=False)
        return out

    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        if not isinstance(data, dict):
            return []
        kind = data.get("type")
        if kind == "message_start" and isinstance(data.get("message"), dict):
            message = data["message"]
            state.response_id = message.get("id") if isinstance(message.get("id"), str) else None
            state.model = message.get("model") if isinstance(message.get("model"), str) else None
            state.see_channel(_CHANNEL)
            return []
        if kind != "content_block_delta" or not isinstance(data.get("delta"), dict):
            return []
        delta = data["delta"]
        for key in ("text", "thinking", "partial_json"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                return [(_CHANNEL, text)]
        return []

    def terminal_events(self, state: StreamState, message: str, style: str) -> bytes:
        if style == "error":
            error = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
            return sse_event(error, event="error")
        stop = {"type": "message_delta", "delta": {"stop_reason": "refusal", "stop_sequence": None}}
        return sse_event(stop, event="message_delta") + sse_event(
            {"type": "message_stop"}, event="message_stop"
        )

    def filtered_response(self, body: Any, message: str) -> Any | None:
        if not isinstance(body, dict):
            return None
        out = dict(body)
        out["content"] = [{"type": "text", "text": message}]
        out["stop_reason"] = "refusal"
        return out
