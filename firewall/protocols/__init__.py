"""Protocol adapters, chosen per route by the ``protocol`` key of its config."""

from __future__ import annotations

from firewall.config.schema import RouteConfig
from firewall.protocols.anthropic import MessagesAdapter
from firewall.protocols.base import ProtocolAdapter, StreamState
from firewall.protocols.json_fields import JsonFieldsAdapter
from firewall.protocols.openai import (
    ChatAdapter,
    CompletionsAdapter,
    EmbeddingsAdapter,
    ResponsesAdapter,
)

__all__ = ["ProtocolAdapter", "StreamState", "adapter_for"]

_OPENAI: dict[str, type[ProtocolAdapter]] = {
    "openai_chat": ChatAdapter,
    "openai_completions": CompletionsAdapter,
    "openai_responses": ResponsesAdapter,
    "openai_embeddings": EmbeddingsAdapter,
    "anthropic_messages": MessagesAdapter,
}


def adapter_for(route: RouteConfig) -> ProtocolAdapter:
    """Build the adapter a route's config asks for."""
    if route.protocol == "json":
        return JsonFieldsAdapter(route.input_fields, route.output_fields)
    refuse_ids = route.token_ids == "refuse"  # noqa: S105 - a policy name, not a secret
    if route.protocol == "openai_completions":
        return CompletionsAdapter(refuse_token_ids=refuse_ids)
    if route.protocol == "openai_embeddings":
        return EmbeddingsAdapter(refuse_token_ids=refuse_ids)
    return _OPENAI[route.protocol]()
