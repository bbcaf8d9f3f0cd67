"""Model-visible text in free-form parts of a request: every string of a value, and the
prose of tool definitions. Shared by the protocol adapters."""

from __future__ import annotations

from typing import Any

from firewall.core.types import Segment

__all__ = ["GENERATION_PARAMS", "function_segments", "pointer_token", "schema_segments", "string_leaves"]

#: Request fields of the OpenAI-style APIs that set up generation and carry no text a
#: template renders.
GENERATION_PARAMS = frozenset(
    {
        "model", "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stream",
        "stream_options", "stop", "seed", "user", "logprobs", "top_logprobs", "presence_penalty",
        "frequency_penalty", "response_format", "logit_bias", "store", "metadata", "service_tier",
        "parallel_tool_calls", "modalities",
    }
)  # fmt: skip

#: Keys of a JSON schema (tool parameters) whose strings are prose a template renders.
_SCHEMA_TEXT_KEYS = frozenset({"description", "title", "enum", "examples", "default", "const"})


def string_leaves(value: Any, source: str, role: str, out: list[Segment]) -> None:
    """Every string under ``value`` (documents, template arguments: free-form data that a
    template renders whole), iteratively so nesting cannot exhaust the stack."""
    stack: list[tuple[Any, str]] = [(value, source)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            out.append(Segment(role, node, where))
        elif isinstance(node, dict):
            stack.extend((v, f"{where}/{pointer_token(k)}") for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((v, f"{where}/{i}") for i, v in reversed(list(enumerate(node))))


def pointer_token(key: str) -> str:
    """``key`` as one JSON-pointer token (RFC 6901: ``~`` and ``/`` escaped)."""
    return key.replace("~", "~0").replace("/", "~1")


def schema_segments(schema: Any, source: str, out: list[Segment]) -> None:
    """The prose of a JSON schema: descriptions, titles, enum values, examples, defaults.

    Templates render tool definitions into the prompt (often as the schema's JSON), so
    a trigger in a parameter's description reaches the model. Property names and types
    are identifiers, not prose, and are left to the model server's validation.
    """
    stack: list[tuple[Any, str]] = [(schema, source)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{where}/{pointer_token(key)}"
                if key in _SCHEMA_TEXT_KEYS:
                    string_leaves(value, here, "system", out)
                elif isinstance(value, dict | list):
                    stack.append((value, here))
        elif isinstance(node, list):
            stack.extend((v, f"{where}/{i}") for i, v in enumerate(node))


def function_segments(fn: dict[str, Any], source: str, out: list[Segment]) -> None:
    """A tool or function definition: its description and its parameters' prose
    (``parameters`` in OpenAI's shape, ``input_schema`` in Anthropic's)."""
    if isinstance(fn.get("description"), str):
        out.append(Segment("system", fn["description"], f"{source}/description"))
    for key in ("parameters", "input_schema"):
        if isinstance(fn.get(key), dict):
            schema_segments(fn[key], f"{source}/{key}", out)
