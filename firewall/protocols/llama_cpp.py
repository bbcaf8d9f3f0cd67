"""llama.cpp's native server API: ``/completion`` and ``/infill``.

(``/completions`` without the ``v1`` is the same native endpoint on llama.cpp's server
and an OpenAI alias elsewhere: the built-in ``completions`` route reads both answer
shapes, see :class:`~firewall.protocols.openai.CompletionsAdapter`.)

Screened on input:

- ``prompt``: a string; a list of strings (one completion each); the multimodal form
  ``{"prompt_string": ..., "multimodal_data": [...]}`` (its ``prompt_string``). Token
  ids, alone or mixed with strings (``[12, "text", 34]``), are refused unless the route
  says ``token_ids: forward_unscreened``;
- ``/infill``: ``input_prefix``, ``input_suffix`` and each ``input_extra`` chunk's
  ``text`` and ``filename`` (all rendered into the fill-in-the-middle prompt);
- an older server's ``system_prompt`` (every string in it).

Not screened: ``grammar`` and ``json_schema`` (they constrain the answer's form),
``lora`` (which loaded adapters apply, with what scale: a choice of model, not text),
``image_data`` and ``multimodal_data`` (pixels and audio), sampling settings.

Output: ``content`` (of the answer, or of each answer of a list). Streams: SSE events
with ``content`` and ``stop``, and no ``[DONE]``; a blocked stream ends with
``{"content": "", "stop": true, "stop_type": "content_filter"}`` (or, in the error
style, llama.cpp's error object).
"""

from __future__ import annotations

from typing import Any

from firewall.core.errors import ProtocolError
from firewall.core.types import Segment
from firewall.protocols.base import StreamState, TokenIdsAdapter, probe_fields, sse_event
from firewall.protocols.fields import prompt_segments, require_object, string_leaves

__all__ = ["LlamaCppCompletionAdapter"]


def _native_prompt(value: Any, out: list[Segment], *, refuse_token_ids: bool) -> None:
    """The shapes of ``prompt`` llama.cpp's server accepts."""
    if isinstance(value, dict):
        _prompt_object(value, "/prompt", out)
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        for i, item in enumerate(value):
            if isinstance(item, dict):
                _prompt_object(item, f"/prompt/{i}", out)
            else:
                prompt_segments([item], f"/prompt/{i}", out, refuse_token_ids=refuse_token_ids)
    else:
        prompt_segments(value, "/prompt", out, refuse_token_ids=refuse_token_ids)


def _prompt_object(value: dict[str, Any], source: str, out: list[Segment]) -> None:
    text = value.get("prompt_string")
    if not isinstance(text, str):
        raise ProtocolError(f"{source.lstrip('/')}.prompt_string must be a string", param="prompt")
    out.append(Segment("user", text, f"{source}/prompt_string"))


class LlamaCppCompletionAdapter(TokenIdsAdapter):
    """``/completion`` and ``/infill``."""

    name = "llama_cpp_completion"
    prompt_param = "prompt"
    uses_done_sentinel = False
    probe_safe = True

    def probe_body(self, body: Any, max_tokens: int, seed: int) -> Any:
        """Short, greedy, one answer, no grammar or schema that a short answer would break."""
        return probe_fields(
            body,
            drop=("grammar", "json_schema", "n_probs"),
            put={"stream": False, "n_predict": max_tokens, "temperature": 0, "seed": seed},
        )

    def input_segments(self, body: Any) -> list[Segment]:
        body = require_object(body)
        out: list[Segment] = []
        _native_prompt(body.get("prompt"), out, refuse_token_ids=self.refuse_token_ids)
        for key in ("input_prefix", "input_suffix"):
            value = body.get(key)
            if isinstance(value, str):
                out.append(Segment("user", value, f"/{key}"))
            elif value is not None:
                raise ProtocolError(f"'{key}' must be a string", param=key)
        extra = body.get("input_extra")
        if isinstance(extra, list):
            for i, chunk in enumerate(extra):
                if isinstance(chunk, dict):
                    for key in ("filename", "text"):
                        if isinstance(chunk.get(key), str):
                            out.append(Segment("user", chunk[key], f"/input_extra/{i}/{key}"))
        if body.get("system_prompt") is not None:
            string_leaves(body["system_prompt"], "/system_prompt", "system", out)
        return out

    def output_segments(self, body: Any) -> list[Segment]:
        out: list[Segment] = []
        answers = body if isinstance(body, list) else [body]
        for i, answer in enumerate(answers):
            if isinstance(answer, dict) and isinstance(answer.get("content"), str):
                where = f"/{i}/content" if isinstance(body, list) else "/content"
                out.append(Segment("assistant", answer["content"], where))
        return out

    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        if not isinstance(data, dict):
            return []
        channel = str(data.get("index", 0))
        state.see_channel(channel)
        text = data.get("content")
        return [(channel, text)] if isinstance(text, str) and text else []

    def terminal_events(self, state: StreamState, message: str, style: str) -> bytes:
        if style == "error":
            error = {"code": 400, "message": message, "type": "invalid_request_error"}
            return sse_event({"error": error})
        return b"".join(
            sse_event(
                {
                    "index": int(ch) if ch.isdigit() else 0,
                    "content": "",
                    "stop": True,
                    "stop_type": "content_filter",
                }
            )
            for ch in (state.channels or ["0"])
        )
