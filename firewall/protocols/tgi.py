"""Hugging Face Text Generation Inference's native API: ``/generate``,
``/generate_stream`` and ``/`` (which streams when ``"stream": true``).

Screened on input: ``inputs``, the prompt, which TGI sends to the model as it is (no
chat template). ``parameters`` are decoding settings, not text: ``grammar`` constrains
the answer's form, ``adapter_id`` picks a LoRA adapter the server has loaded (a choice
of model, like ``model`` elsewhere), ``stop`` ends generation.

Output: ``generated_text`` of the answer (or of each item of a list answer) and of
``details.best_of_sequences``. Streams are SSE events that each carry one ``token``;
its ``text`` is screened unless the token is ``special`` (an end-of-sequence marker).
The last event repeats the whole answer in ``generated_text``: not counted twice.
TGI's stream has no ``[DONE]`` and no finish reason a client accepts for a filter, so
a blocked stream always ends with TGI's own error event (``{"error": ...,
"error_type": ...}``), which ``huggingface_hub`` raises as an error.
"""

from __future__ import annotations

from typing import Any

from firewall.core.errors import ProtocolError
from firewall.core.types import Segment
from firewall.protocols.base import ProtocolAdapter, StreamState, probe_fields, sse_event
from firewall.protocols.fields import require_object

__all__ = ["TgiGenerateAdapter"]

_CHANNEL = "0"


class TgiGenerateAdapter(ProtocolAdapter):
    """``/generate``, ``/generate_stream`` and ``/``."""

    name = "tgi_generate"
    prompt_param = "inputs"
    uses_done_sentinel = False
    probe_safe = True

    def probe_path(self, path: str) -> str:
        """``/generate_stream`` answers in events: its probe asks ``/generate``."""
        head, sep, query = path.partition("?")
        if head.rstrip("/").endswith("/generate_stream"):
            head = head.rstrip("/").removesuffix("_stream")
        return head + sep + query

    def probe_body(self, body: Any, max_tokens: int, seed: int) -> Any:
        """Greedy, short, one sequence: no sampling, no best_of, no grammar."""
        params = body.get("parameters") if isinstance(body, dict) else None
        kept = {
            k: v
            for k, v in (params.items() if isinstance(params, dict) else ())
            if k not in ("grammar", "best_of", "details", "decoder_input_details", "top_n_tokens")
        }
        kept.update(max_new_tokens=max_tokens, do_sample=False, seed=seed)
        return probe_fields(body, drop=("stream",), put={"parameters": kept})

    def error_body(self, message: str, *, code: str, error_type: str, param: str | None) -> dict[str, Any]:
        """TGI's envelope (``{"error": message, "error_type": ...}``), with the code beside it."""
        return {"error": message, "error_type": error_type, "code": code}

    def input_segments(self, body: Any) -> list[Segment]:
        inputs = require_object(body).get("inputs")
        if not isinstance(inputs, str):
            raise ProtocolError("'inputs' must be a string", param="inputs")
        return [Segment("user", inputs, "/inputs")]

    def output_segments(self, body: Any) -> list[Segment]:
        out: list[Segment] = []
        answers = body if isinstance(body, list) else [body]
        for i, answer in enumerate(answers):
            if not isinstance(answer, dict):
                continue
            where = f"/{i}" if isinstance(body, list) else ""
            if isinstance(answer.get("generated_text"), str):
                out.append(Segment("assistant", answer["generated_text"], f"{where}/generated_text"))
            details = answer.get("details")
            best = details.get("best_of_sequences") if isinstance(details, dict) else None
            if isinstance(best, list):
                for k, seq in enumerate(best):
                    if isinstance(seq, dict) and isinstance(seq.get("generated_text"), str):
                        source = f"{where}/details/best_of_sequences/{k}/generated_text"
                        out.append(Segment("assistant", seq["generated_text"], source))
        return out

    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        if not isinstance(data, dict):
            return []
        state.see_channel(_CHANNEL)
        token = data.get("token")
        if isinstance(token, dict) and not token.get("special") and isinstance(token.get("text"), str):
            return [(_CHANNEL, token["text"])] if token["text"] else []
        return []

    def terminal_events(self, state: StreamState, message: str, style: str) -> bytes:
        return sse_event({"error": message, "error_type": "content_filter"})
