"""vLLM's pooling APIs: ``/classify``, ``/score``, ``/rerank`` and ``/pooling`` (with and
without ``/v1``; ``/v2/rerank`` too).

These run the model over the request's text and answer numbers (labels and
probabilities, relevance scores, vectors), so only the input is screened. Their
request shapes grow with each release (``text_1``/``text_2``, ``queries`` and
``documents``, ``query`` with documents that are strings or content objects, chat
``messages`` for pooling), so the adapter does not list text fields: **every string of
the body is screened** except those under known setting keys (model, encoding format,
truncation, activation switches, ...). A field added by a later release is screened,
not waved through. Lists of integers under a text key are token ids: refused unless the
route says ``token_ids: forward_unscreened``. A per-request ``chat_template`` is
refused, as on chat.
"""

from __future__ import annotations

from typing import Any

from firewall.core.errors import UnscreenableInput
from firewall.core.types import Segment
from firewall.protocols.base import StreamState, TokenIdsAdapter
from firewall.protocols.fields import holds_token_ids, pointer_token, require_object, string_leaves

__all__ = ["PoolingAdapter"]

#: Keys whose values are settings, not text a model reads.
_SETTINGS = frozenset(
    {
        "model", "user", "encoding_format", "dimensions", "truncate_prompt_tokens", "priority",
        "request_id", "activation", "use_activation", "softmax", "normalize", "top_n",
        "return_documents", "embed_dtype", "task", "add_special_tokens", "add_generation_prompt",
        "continue_final_message", "mm_processor_kwargs", "cache_salt", "endianness",
    }
)  # fmt: skip


class PoolingAdapter(TokenIdsAdapter):
    """``/classify``, ``/score``, ``/rerank``, ``/pooling``: every string of the body."""

    name = "vllm_pooling"
    prompt_param = "input"
    has_output_text = False

    def wants_stream(self, body: Any) -> bool:
        return False

    def input_segments(self, body: Any) -> list[Segment]:
        body = require_object(body)
        if body.get("chat_template") is not None:
            raise UnscreenableInput(
                "A per-request 'chat_template' cannot be screened; configure templates on the server.",
                param="chat_template",
            )
        out: list[Segment] = []
        for key, value in body.items():
            if key in _SETTINGS:
                continue
            where = f"/{pointer_token(key)}"
            if self.refuse_token_ids and holds_token_ids(value):
                raise UnscreenableInput(
                    f"{key} holds token ids, which cannot be screened; send text.", param=key
                )
            string_leaves(value, where, "user", out)
        return out

    def output_segments(self, body: Any) -> list[Segment]:
        return []

    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        return []
