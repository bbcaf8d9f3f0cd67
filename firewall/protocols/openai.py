"""OpenAI-compatible APIs: chat completions, completions, Responses and embeddings.

What is screened on input: every model-visible text of a request.

- Chat: every message's string content or text / thinking parts, its ``name`` and
  ``reasoning_content``, tool-call arguments, tool results, the names,
  descriptions and parameter text (names, descriptions, titles, enum values, examples) of
  ``tools`` and legacy ``functions``, ``documents`` and ``chat_template_kwargs``. A per-request
  ``chat_template`` is refused.
- Responses: ``instructions``, input items (messages, function and custom tool calls
  and outputs, reasoning summaries; every string of an item type not known here),
  stored-prompt ``variables``, tool names, descriptions and parameter text.
- Completions: prompts and suffixes; embeddings: inputs. Token-id prompts carry no
  text and are refused unless the route forwards them unscreened.

Images, audio and files are not screened by these text detectors.

Streams: each choice (``choices[i]``) or Responses output item is one *channel*;
a blocked stream ends with a chunk whose ``finish_reason`` is
``"content_filter"`` followed by ``data: [DONE]`` (chat, completions), or with a
``response.incomplete`` event whose reason is ``content_filter`` (Responses).
"""

from __future__ import annotations

import time
from typing import Any

from firewall.core.errors import ProtocolError, UnscreenableInput
from firewall.core.types import Segment
from firewall.protocols.base import (
    DONE_EVENT,
    ProtocolAdapter,
    StreamState,
    TokenIdsAdapter,
    error_body,
    probe_fields,
    sse_event,
)
from firewall.protocols.fields import (
    GENERATION_PARAMS,
    function_segments,
    messages_of,
    prompt_segments,
    require_object,
    string_leaves,
)

__all__ = [
    "ChatAdapter",
    "CompletionsAdapter",
    "EmbeddingsAdapter",
    "ResponsesAdapter",
]

#: Fields a Responses probe leaves out: they call tools, run in the background, append to a
#: stored conversation, or constrain the output format (a 32-token answer breaks a schema).
_RESPONSES_PROBE_DROP = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_tool_calls",
    "background",
    "stream_options",
    "include",
    "text",
    "conversation",
    "prompt_cache_key",
)

_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text", "refusal", "thinking"})
#: The key holding a part's text, by part type ("text" for the others). vLLM joins
#: ``thinking`` parts into the message it renders.
_PART_TEXT_KEY = {"refusal": "refusal", "thinking": "thinking"}
#: Message fields besides ``content`` that chat templates render: the author's name and
#: the reasoning of an earlier assistant turn (DeepSeek-style servers, vLLM).
_MESSAGE_TEXT_FIELDS = ("name", "reasoning_content", "reasoning")
_ROLE_AND_CONTENT = frozenset({"role", "content"})
#: Chat request fields that carry no text: a body with only these (and messages) needs no
#: look for tools, documents or templates.
_PLAIN_CHAT_KEYS = GENERATION_PARAMS | {"messages"}


def _content_segments(
    role: str, content: Any, source: str, out: list[Segment], *, strict: bool = True
) -> None:
    """Text from a ``content`` field: a string or a list of typed parts.

    A part of a type we do not know (or one without a type) that still carries a
    string ``text`` is screened too: a lenient upstream may read it, and screening
    more never lets a trigger through. On input (``strict``) a part that is neither a
    string nor an object, or a text part whose text is not a string, is refused
    (400) instead of being forwarded unscreened; OpenAI refuses such bodies too.
    Upstream answers (``strict=False``) are read leniently.
    """
    if isinstance(content, str):
        out.append(Segment(role, content, source))
    elif isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, str):
                out.append(Segment(role, part, f"{source}/{j}"))
            elif isinstance(part, dict):
                kind = part.get("type")
                known = kind in _TEXT_PART_TYPES
                key = _PART_TEXT_KEY.get(kind, "text") if isinstance(kind, str) else "text"
                text = part.get(key)
                if isinstance(text, str):
                    out.append(Segment(role, text, f"{source}/{j}/{key}"))
                elif strict and known:
                    raise ProtocolError(f"{source.lstrip('/')}/{j}/{key} must be a string", param=source)
            elif strict:
                raise ProtocolError(f"{source.lstrip('/')}/{j} must be a string or an object", param=source)
    elif content is not None and strict:
        raise ProtocolError(f"{source.lstrip('/')} must be a string or a list of parts", param=source)


def _tool_segments(data: dict[str, Any], out: list[Segment]) -> None:
    """Tool and legacy function definitions: their descriptions and parameter prose."""
    tools = data.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            if isinstance(tool, dict):
                fn = tool.get("function")
                # Chat nests the definition under "function"; the Responses API does not.
                target, where = (
                    (fn, f"/tools/{i}/function") if isinstance(fn, dict) else (tool, f"/tools/{i}")
                )
                function_segments(target, where, out)
    functions = data.get("functions")
    if isinstance(functions, list):
        for i, fn in enumerate(functions):
            if isinstance(fn, dict):
                function_segments(fn, f"/functions/{i}", out)


def _refuse_template(data: dict[str, Any]) -> None:
    """A per-request chat template (vLLM, llama.cpp accept one) rewrites how every message
    reaches the model; Jinja source is not prose a detector can judge. Refused."""
    if data.get("chat_template") is not None:
        raise UnscreenableInput(
            "A per-request 'chat_template' cannot be screened; configure templates on the server.",
            param="chat_template",
        )


def _tool_call_segments(calls: Any, source: str, out: list[Segment]) -> None:
    if not isinstance(calls, list):
        return
    for k, call in enumerate(calls):
        if isinstance(call, dict):
            fn = call.get("function")
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                out.append(Segment("assistant", fn["arguments"], f"{source}/{k}/function/arguments"))


class ChatAdapter(ProtocolAdapter):
    """``/v1/chat/completions``."""

    name = "openai_chat"
    prompt_param = "messages"
    reprompt = "chat"

    def input_segments(self, body: Any) -> list[Segment]:
        data = require_object(body)
        out: list[Segment] = []
        for i, msg, role in messages_of(data):
            _content_segments(role, msg.get("content"), f"/messages/{i}/content", out)
            if not _ROLE_AND_CONTENT.issuperset(msg):  # more fields: look for the other rendered ones
                for key in _MESSAGE_TEXT_FIELDS:
                    if isinstance(msg.get(key), str):
                        out.append(Segment(role, msg[key], f"/messages/{i}/{key}"))
                _tool_call_segments(msg.get("tool_calls"), f"/messages/{i}/tool_calls", out)
                legacy = msg.get("function_call")  # the deprecated single-function form
                if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
                    out.append(Segment(role, legacy["arguments"], f"/messages/{i}/function_call/arguments"))
        if not _PLAIN_CHAT_KEYS.issuperset(data):  # tools, documents, templates: rarer fields
            _refuse_template(data)
            _tool_segments(data, out)
            # RAG documents and template arguments are rendered by the server's template.
            for key in ("documents", "chat_template_kwargs"):
                if data.get(key) is not None:
                    string_leaves(data[key], f"/{key}", "user", out, keys=key == "documents")
        return out

    def output_segments(self, body: Any) -> list[Segment]:
        out: list[Segment] = []
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list):
            return out
        for i, choice in enumerate(choices):
            msg = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(msg, dict):
                continue
            _content_segments(
                "assistant", msg.get("content"), f"/choices/{i}/message/content", out, strict=False
            )
            if isinstance(msg.get("refusal"), str):
                out.append(Segment("assistant", msg["refusal"], f"/choices/{i}/message/refusal"))
            _tool_call_segments(msg.get("tool_calls"), f"/choices/{i}/message/tool_calls", out)
        return out

    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        if not isinstance(data, dict):
            return []
        _remember(data, state)
        out: list[tuple[str, str]] = []
        choices = data.get("choices")
        if not isinstance(choices, list):
            return out
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            channel = str(choice.get("index", 0))
            state.see_channel(channel)
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            for key in ("content", "refusal"):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    out.append((channel, text))
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                        out.append((channel, fn["arguments"]))
        return out

    def terminal_events(self, state: StreamState, message: str, style: str) -> bytes:
        if style == "error":
            return super().terminal_events(state, message, style)
        chunk = {
            "id": state.response_id or "chatcmpl-firewall",
            "object": "chat.completion.chunk",
            "created": state.created or int(time.time()),
            "model": state.model or "",
            "choices": [
                {"index": int(ch) if ch.isdigit() else 0, "delta": {}, "finish_reason": "content_filter"}
                for ch in (state.channels or ["0"])
            ],
        }
        return sse_event(chunk) + DONE_EVENT

    def filtered_response(self, body: Any, message: str) -> Any | None:
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            return None
        out = dict(body)
        out["choices"] = [
            {
                "index": c.get("index", i) if isinstance(c, dict) else i,
                "message": {"role": "assistant", "content": None, "refusal": message},
                "finish_reason": "content_filter",
            }
            for i, c in enumerate(body["choices"])
        ]
        return out


def _remember(data: dict[str, Any], state: StreamState) -> None:
    if state.response_id is None and isinstance(data.get("id"), str):
        state.response_id = data["id"]
    if state.model is None and isinstance(data.get("model"), str):
        state.model = data["model"]
    if state.created is None and isinstance(data.get("created"), int):
        state.created = data["created"]


class CompletionsAdapter(TokenIdsAdapter):
    """``/v1/completions`` (legacy text completions)."""

    name = "openai_completions"
    prompt_param = "prompt"
    reprompt = "completions"

    def input_segments(self, body: Any) -> list[Segment]:
        data = require_object(body)
        out: list[Segment] = []
        prompt_segments(data.get("prompt"), "/prompt", out, refuse_token_ids=self.refuse_token_ids)
        if isinstance(data.get("suffix"), str):
            out.append(Segment("user", data["suffix"], "/suffix"))
        return out

    def output_segments(self, body: Any) -> list[Segment]:
        out: list[Segment] = []
        choices = body.get("choices") if isinstance(body, dict) else None
        if isinstance(choices, list):
            for i, choice in enumerate(choices):
                if isinstance(choice, dict) and isinstance(choice.get("text"), str):
                    out.append(Segment("assistant", choice["text"], f"/choices/{i}/text"))
        elif isinstance(body, dict) and isinstance(body.get("content"), str):
            # llama.cpp's server answers /completions (no /v1) in its native shape.
            out.append(Segment("assistant", body["content"], "/content"))
        return out

    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        if not isinstance(data, dict):
            return []
        _remember(data, state)
        out: list[tuple[str, str]] = []
        choices = data.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    channel = str(choice.get("index", 0))
                    state.see_channel(channel)
                    text = choice.get("text")
                    if isinstance(text, str) and text:
                        out.append((channel, text))
        elif isinstance(data.get("content"), str) and data["content"]:
            state.see_channel("0")  # llama.cpp's native stream on /completions
            out.append(("0", data["content"]))
        return out

    def terminal_events(self, state: StreamState, message: str, style: str) -> bytes:
        if style == "error":
            return super().terminal_events(state, message, style)
        chunk = {
            "id": state.response_id or "cmpl-firewall",
            "object": "text_completion",
            "created": state.created or int(time.time()),
            "model": state.model or "",
            "choices": [
                {
                    "index": int(ch) if ch.isdigit() else 0,
                    "text": "",
                    "logprobs": None,
                    "finish_reason": "content_filter",
                }
                for ch in (state.channels or ["0"])
            ],
        }
        return sse_event(chunk) + DONE_EVENT

    def filtered_response(self, body: Any, message: str) -> Any | None:
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            return None
        out = dict(body)
        out["choices"] = [
            {"index": i, "text": "", "logprobs": None, "finish_reason": "content_filter"}
            for i, _ in enumerate(body["choices"])
        ]
        return out


class ResponsesAdapter(ProtocolAdapter):
    """``/v1/responses`` (the Responses API)."""

    name = "openai_responses"
    prompt_param = "input"
    # Asked again in its own shape (instructions, input items, previous_response_id kept).
    probe_safe = True
    uses_done_sentinel = False

    def probe_body(self, body: Any, max_tokens: int, seed: int) -> Any:
        """No tools, no background run, nothing stored, no conversation appended to, no output
        format a short answer would break; the Responses API takes no seed."""
        return probe_fields(
            body,
            drop=_RESPONSES_PROBE_DROP,
            put={"stream": False, "store": False, "max_output_tokens": max_tokens, "temperature": 0},
        )

    def input_segments(self, body: Any) -> list[Segment]:
        data = require_object(body)
        out: list[Segment] = []
        if isinstance(data.get("instructions"), str):
            out.append(Segment("system", data["instructions"], "/instructions"))
        items = data.get("input")
        if isinstance(items, str):
            out.append(Segment("user", items, "/input"))
        elif isinstance(items, list):
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise ProtocolError(f"input[{i}] must be an object", param="input")
                kind = item.get("type", "message")
                if kind == "message" or "role" in item:
                    role = item.get("role") if isinstance(item.get("role"), str) else "user"
                    _content_segments(str(role), item.get("content"), f"/input/{i}/content", out)
                elif kind in ("function_call_output", "custom_tool_call_output"):
                    _content_segments("tool", item.get("output"), f"/input/{i}/output", out)
                elif kind == "function_call":
                    if isinstance(item.get("arguments"), str):
                        out.append(Segment("assistant", item["arguments"], f"/input/{i}/arguments"))
                elif kind == "custom_tool_call":
                    if isinstance(item.get("input"), str):
                        out.append(Segment("assistant", item["input"], f"/input/{i}/input"))
                elif kind == "reasoning":
                    for key in ("summary", "content"):
                        _content_segments("assistant", item.get(key), f"/input/{i}/{key}", out, strict=False)
                else:
                    # An item type added after this adapter was written: whatever text it
                    # carries may reach the model, so all of it is screened.
                    string_leaves(item, f"/input/{i}", "user", out)
        elif items is not None:
            raise ProtocolError("'input' must be a string or an array", param="input")
        prompt = data.get("prompt")  # a stored prompt: its variables are filled in server-side
        if isinstance(prompt, dict) and prompt.get("variables") is not None:
            string_leaves(prompt["variables"], "/prompt/variables", "user", out)
        _tool_segments(data, out)
        return out

    def output_segments(self, body: Any) -> list[Segment]:
        out: list[Segment] = []
        items = body.get("output") if isinstance(body, dict) else None
        if not isinstance(items, list):
            return out
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            if item.get("type") == "message":
                _content_segments("assistant", item.get("content"), f"/output/{i}/content", out, strict=False)
            elif item.get("type") == "function_call" and isinstance(item.get("arguments"), str):
                out.append(Segment("assistant", item["arguments"], f"/output/{i}/arguments"))
        return out

    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        if not isinstance(data, dict):
            return []
        kind = data.get("type")
        if kind == "response.created" and isinstance(data.get("response"), dict):
            resp = data["response"]
            state.response_id = resp.get("id") if isinstance(resp.get("id"), str) else None
            state.model = resp.get("model") if isinstance(resp.get("model"), str) else None
        if kind in (
            "response.output_text.delta",
            "response.refusal.delta",
            "response.function_call_arguments.delta",
        ):
            delta = data.get("delta")
            channel = str(data.get("output_index", 0))
            state.see_channel(channel)
            if isinstance(delta, str) and delta:
                return [(channel, delta)]
        return []

    def terminal_events(self, state: StreamState, message: str, style: str) -> bytes:
        if style == "error":
            body = error_body(message, code="content_filter", error_type="invalid_request_error")
            return sse_event({**body["error"], "type": "error"}, event="error")
        event = {
            "type": "response.incomplete",
            "response": {
                "id": state.response_id or "resp_firewall",
                "object": "response",
                "model": state.model or "",
                "status": "incomplete",
                "incomplete_details": {"reason": "content_filter"},
            },
        }
        return sse_event(event, event="response.incomplete")

    def filtered_response(self, body: Any, message: str) -> Any | None:
        if not isinstance(body, dict):
            return None
        out = dict(body)
        out["status"] = "incomplete"
        out["incomplete_details"] = {"reason": "content_filter"}
        out["output"] = [
            {
                "type": "message",
                "role": "assistant",
                "status": "incomplete",
                "content": [{"type": "refusal", "refusal": message}],
            }
        ]
        return out


class EmbeddingsAdapter(TokenIdsAdapter):
    """``/v1/embeddings``: input only; vectors carry no text to screen."""

    name = "openai_embeddings"
    prompt_param = "input"
    has_output_text = False

    def input_segments(self, body: Any) -> list[Segment]:
        data = require_object(body)
        out: list[Segment] = []
        prompt_segments(data.get("input"), "/input", out, refuse_token_ids=self.refuse_token_ids)
        return out

    def output_segments(self, body: Any) -> list[Segment]:
        return []

    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        return []
