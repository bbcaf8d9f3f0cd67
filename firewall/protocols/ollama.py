"""Ollama's native API: ``/api/chat``, ``/api/generate`` and ``/api/embed``.

Ollama differs from the OpenAI shapes in three ways that matter to a firewall:

- **Streams are NDJSON**, one JSON object a line (``application/x-ndjson``), and a
  request streams unless it says ``"stream": false``. The relay frames them by line
  (see :mod:`firewall.proxy.streaming`); this adapter reads each line's text.
- **Keys are matched case-insensitively** by Go's ``encoding/json``; the JSON check
  (:mod:`firewall.protocols.json_checks`) refuses case variants of the keys read here.
- **Generate takes a template and a context** per request. A ``template`` rewrites how
  the prompt reaches the model and ``context`` is the token ids of an earlier exchange:
  neither is text a detector can judge, so both are refused (``unscreenable_input``), the
  context unless the route says ``token_ids: forward_unscreened``.

Screened on input:

- chat: each message's ``content`` and ``thinking``, the ``arguments`` of its
  ``tool_calls`` (every key and string), and the names and text of ``tools`` definitions;
- generate: ``prompt``, ``suffix`` and ``system``;
- embed: ``input`` (a string or a list of strings), and the legacy ``/api/embeddings``'
  ``prompt``.

Not screened: ``images`` (pixels), ``format`` (a JSON schema constraining the answer,
not rendered as prose), ``options`` and ``keep_alive`` (runtime settings).

Output: chat's ``message`` (``content``, ``thinking``, tool call arguments) and
generate's ``response`` and ``thinking``, whole or per NDJSON line. A blocked stream
ends with a final line whose ``done_reason`` is ``"content_filter"`` (or, in the error
style, an ``{"error": ...}`` line, which Ollama's clients raise as an error).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from firewall.core.errors import ProtocolError, UnscreenableInput
from firewall.core.types import Segment
from firewall.protocols.base import ProtocolAdapter, StreamState, TokenIdsAdapter, probe_fields
from firewall.protocols.fields import function_segments, messages_of, require_object, string_leaves

__all__ = ["OllamaChatAdapter", "OllamaEmbedAdapter", "OllamaGenerateAdapter"]

_CHANNEL = "0"  # Ollama answers one message per request


def _text(data: dict[str, Any], key: str, role: str, source: str, out: list[Segment]) -> None:
    value = data.get(key)
    if isinstance(value, str):
        out.append(Segment(role, value, f"{source}/{key}"))
    elif value is not None:
        raise ProtocolError(f"{(source + '/' + key).lstrip('/')} must be a string", param=key)


def _tool_calls(calls: Any, role: str, source: str, out: list[Segment]) -> None:
    """Tool call arguments: an object in Ollama (a string in OpenAI's shape): every string."""
    if isinstance(calls, list):
        for k, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                string_leaves(fn.get("arguments"), f"{source}/{k}/function/arguments", role, out, keys=True)


def _texts_of(data: dict[str, Any], keys: tuple[str, ...]) -> list[tuple[str, str]]:
    """A stream line's non-empty texts under ``keys``, on the one channel."""
    return [(_CHANNEL, data[key]) for key in keys if isinstance(data.get(key), str) and data[key]]


def _created_at() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


class _OllamaAdapter(ProtocolAdapter):
    """What the native endpoints share: NDJSON streams that stream by default, the final
    ``done`` line, the error line."""

    uses_done_sentinel = False
    #: The response field that carries the answer's text ("message" for chat).
    answer_key = "response"
    probe_safe = True

    def probe_body(self, body: Any, max_tokens: int, seed: int) -> Any:
        """One answer, not a stream (Ollama streams unless told not to), no tools, no output
        format; length, temperature and seed go in ``options``."""
        options = body.get("options") if isinstance(body, dict) else None
        merged = {**(options if isinstance(options, dict) else {}), "num_predict": max_tokens}
        merged.update(temperature=0, seed=seed)
        return probe_fields(body, drop=("tools", "format"), put={"stream": False, "options": merged})

    def error_body(self, message: str, *, code: str, error_type: str, param: str | None) -> dict[str, Any]:
        """Ollama's envelope: ``error`` is the message, which its clients raise; the code,
        type and parameter beside it."""
        return {"error": message, "code": code, "type": error_type, "param": param}

    def wants_stream(self, body: Any) -> bool:
        return isinstance(body, dict) and body.get("stream") is not False

    def _answer(self, message: str) -> dict[str, Any]:
        return {"response": message}

    def terminal_events(self, state: StreamState, message: str, style: str) -> bytes:
        if style == "error":
            return orjson.dumps({"error": message}) + b"\n"
        final = {
            "model": state.model or "",
            "created_at": _created_at(),
            **self._answer(""),
            "done": True,
            "done_reason": "content_filter",
        }
        return orjson.dumps(final) + b"\n"

    def filtered_response(self, body: Any, message: str) -> Any | None:
        if not isinstance(body, dict):
            return None
        out = {k: v for k, v in body.items() if k not in ("message", "response", "thinking", "context")}
        out.update(self._answer(message))
        out["done"] = True
        out["done_reason"] = "content_filter"
        return out

    def _remember(self, data: dict[str, Any], state: StreamState) -> None:
        if state.model is None and isinstance(data.get("model"), str):
            state.model = data["model"]
        state.see_channel(_CHANNEL)


class OllamaChatAdapter(_OllamaAdapter):
    """``/api/chat``."""

    name = "ollama_chat"
    prompt_param = "messages"

    def input_segments(self, body: Any) -> list[Segment]:
        data = require_object(body)
        out: list[Segment] = []
        for i, msg, role in messages_of(data):
            source = f"/messages/{i}"
            _text(msg, "content", role, source, out)
            _text(msg, "thinking", role, source, out)
            _tool_calls(msg.get("tool_calls"), role, f"{source}/tool_calls", out)
        tools = data.get("tools")
        if isinstance(tools, list):
            for i, tool in enumerate(tools):
                fn = tool.get("function") if isinstance(tool, dict) else None
                if isinstance(fn, dict):
                    function_segments(fn, f"/tools/{i}/function", out)
        return out

    def _answer(self, message: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": message}}

    def output_segments(self, body: Any) -> list[Segment]:
        out: list[Segment] = []
        msg = body.get("message") if isinstance(body, dict) else None
        if isinstance(msg, dict):
            for key in ("content", "thinking"):
                if isinstance(msg.get(key), str):
                    out.append(Segment("assistant", msg[key], f"/message/{key}"))
            _tool_calls(msg.get("tool_calls"), "assistant", "/message/tool_calls", out)
        return out

    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        if not isinstance(data, dict):
            return []
        self._remember(data, state)
        msg = data.get("message")
        if not isinstance(msg, dict):
            return []
        out = [
            (_CHANNEL, msg[key])
            for key in ("thinking", "content")
            if isinstance(msg.get(key), str) and msg[key]
        ]
        calls: list[Segment] = []
        _tool_calls(msg.get("tool_calls"), "assistant", "", calls)
        out.extend((_CHANNEL, s.text) for s in calls if s.text)
        return out


class OllamaGenerateAdapter(_OllamaAdapter, TokenIdsAdapter):
    """``/api/generate``."""

    name = "ollama_generate"
    prompt_param = "prompt"

    def input_segments(self, body: Any) -> list[Segment]:
        data = require_object(body)
        if data.get("template") not in (None, ""):
            raise UnscreenableInput(
                "A per-request 'template' cannot be screened; configure templates in the Modelfile.",
                param="template",
            )
        context = data.get("context")
        if context not in (None, []) and self.refuse_token_ids:
            raise UnscreenableInput(
                "'context' holds token ids of an earlier exchange, which cannot be screened; "
                "send the conversation as text (/api/chat).",
                param="context",
            )
        out: list[Segment] = []
        _text(data, "system", "system", "", out)
        _text(data, "prompt", "user", "", out)
        _text(data, "suffix", "user", "", out)
        return out

    def output_segments(self, body: Any) -> list[Segment]:
        out: list[Segment] = []
        if isinstance(body, dict):
            for key in ("thinking", "response"):
                if isinstance(body.get(key), str):
                    out.append(Segment("assistant", body[key], f"/{key}"))
        return out

    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        if not isinstance(data, dict):
            return []
        self._remember(data, state)
        return [
            (_CHANNEL, data[key])
            for key in ("thinking", "response")
            if isinstance(data.get(key), str) and data[key]
        ]


class OllamaEmbedAdapter(_OllamaAdapter):
    """``/api/embed`` (``input``) and the legacy ``/api/embeddings`` (``prompt``): vectors
    come back, so only the input is screened."""

    name = "ollama_embed"
    prompt_param = "input"
    has_output_text = False

    def wants_stream(self, body: Any) -> bool:
        return False

    def input_segments(self, body: Any) -> list[Segment]:
        data = require_object(body)
        out: list[Segment] = []
        value = data.get("input")
        if isinstance(value, str):
            out.append(Segment("user", value, "/input"))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise ProtocolError(f"input[{i}] must be a string", param="input")
                out.append(Segment("user", item, f"/input/{i}"))
        elif value is not None:
            raise ProtocolError("'input' must be a string or an array of strings", param="input")
        _text(data, "prompt", "user", "", out)
        return out

    def output_segments(self, body: Any) -> list[Segment]:
        return []

    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        return []
