"""Protocol adapters, chosen per route by the ``protocol`` key of its config."""

from __future__ import annotations

from typing import Protocol

from firewall.config.schema import RouteConfig
from firewall.protocols.anthropic import MessagesAdapter
from firewall.protocols.base import ProtocolAdapter, StreamState
from firewall.protocols.json_fields import JsonFieldsAdapter
from firewall.protocols.kserve import KServeInferAdapter, TritonGenerateAdapter
from firewall.protocols.llama_cpp import LlamaCppCompletionAdapter
from firewall.protocols.ollama import OllamaChatAdapter, OllamaEmbedAdapter, OllamaGenerateAdapter
from firewall.protocols.openai import (
    ChatAdapter,
    CompletionsAdapter,
    EmbeddingsAdapter,
    ResponsesAdapter,
)
from firewall.protocols.pooling import PoolingAdapter
from firewall.protocols.tgi import TgiGenerateAdapter

__all__ = ["ProtocolAdapter", "StreamState", "adapter_for"]


class _TakesTokenIds(Protocol):
    def __call__(self, *, refuse_token_ids: bool = True) -> ProtocolAdapter: ...


#: Adapters that take no settings.
_PLAIN: dict[str, type[ProtocolAdapter]] = {
    "openai_chat": ChatAdapter,
    "openai_responses": ResponsesAdapter,
    "anthropic_messages": MessagesAdapter,
    "ollama_chat": OllamaChatAdapter,
    "ollama_embed": OllamaEmbedAdapter,
    "tgi_generate": TgiGenerateAdapter,
}
#: Adapters whose prompts may be token ids (refused or forwarded as the route says).
_TOKEN_IDS: dict[str, _TakesTokenIds] = {
    "openai_completions": CompletionsAdapter,
    "openai_embeddings": EmbeddingsAdapter,
    "ollama_generate": OllamaGenerateAdapter,
    "llama_cpp_completion": LlamaCppCompletionAdapter,
    "kserve_v2_infer": KServeInferAdapter,
    "triton_generate": TritonGenerateAdapter,
    "vllm_pooling": PoolingAdapter,
}


def adapter_for(route: RouteConfig) -> ProtocolAdapter:
    """Build the adapter a route's config asks for."""
    if route.protocol == "json":
        return JsonFieldsAdapter(route.input_fields, route.output_fields)
    if route.protocol in _TOKEN_IDS:
        refuse_ids = route.token_ids == "refuse"  # noqa: S105 - a policy name, not a secret
        return _TOKEN_IDS[route.protocol](refuse_token_ids=refuse_ids)
    return _PLAIN[route.protocol]()
