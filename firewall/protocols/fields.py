"""Model-visible text in free-form parts of a request: every string of a value, and the
prose of tool definitions. Shared by the protocol adapters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from firewall.core.errors import ProtocolError, UnscreenableInput
from firewall.core.types import Segment

__all__ = [
    "GENERATION_PARAMS",
    "function_segments",
    "messages_of",
    "require_object",
    "is_token_ids",
    "pointer_token",
    "prompt_segments",
    "schema_segments",
    "string_leaves",
]

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


def require_object(body: Any) -> dict[str, Any]:
    """The request body as an object, or the protocol error every adapter answers."""
    if not isinstance(body, dict):
        raise ProtocolError("request body must be a JSON object")
    return body


def messages_of(data: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any], str]]:
    """``(index, message, role)`` of a chat request's ``messages`` (role "user" when it has
    none), refusing a body whose messages are not a list of objects."""
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise ProtocolError("'messages' must be an array", param="messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ProtocolError(f"messages[{i}] must be an object", param="messages")
        role = msg.get("role")
        yield i, msg, role if isinstance(role, str) else "user"


def string_leaves(value: Any, source: str, role: str, out: list[Segment], *, keys: bool = False) -> None:
    """Every string under ``value`` (documents, template arguments: free-form data that a
    template renders whole), iteratively so nesting cannot exhaust the stack.

    ``keys``: the object keys too, for objects a template renders as JSON (tool-call
    arguments, documents), where a key reaches the model as much as a value does."""
    stack: list[tuple[Any, str]] = [(value, source)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            out.append(Segment(role, node, where))
        elif isinstance(node, dict):
            if keys:
                out.extend(Segment(role, k, f"{where}/{pointer_token(k)}#key") for k in node if k)
            stack.extend((v, f"{where}/{pointer_token(k)}") for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((v, f"{where}/{i}") for i, v in reversed(list(enumerate(node))))


def pointer_token(key: str) -> str:
    """``key`` as one JSON-pointer token (RFC 6901: ``~`` and ``/`` escaped)."""
    return key.replace("~", "~0").replace("/", "~1")


def schema_segments(schema: Any, source: str, out: list[Segment]) -> None:
    """The text of a JSON schema: descriptions, titles, enum values, examples, defaults, and
    property names.

    Templates render tool definitions into the prompt (often as the schema's JSON), so
    a trigger in a parameter's description, or in a parameter's name, reaches the model.
    Types and the other keywords are the schema language's own words.
    """
    stack: list[tuple[Any, str]] = [(schema, source)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{where}/{pointer_token(key)}"
                if key in _SCHEMA_TEXT_KEYS:
                    string_leaves(value, here, "system", out)
                elif key == "properties" and isinstance(value, dict):
                    out.extend(
                        Segment("system", name, f"{here}/{pointer_token(name)}#key") for name in value if name
                    )
                    stack.append((value, here))
                elif isinstance(value, dict | list):
                    stack.append((value, here))
        elif isinstance(node, list):
            stack.extend((v, f"{where}/{i}") for i, v in enumerate(node))


def function_segments(fn: dict[str, Any], source: str, out: list[Segment]) -> None:
    """A tool or function definition: its name, its description and its parameters' text
    (``parameters`` in OpenAI's shape, ``input_schema`` in Anthropic's)."""
    if isinstance(fn.get("name"), str):
        out.append(Segment("system", fn["name"], f"{source}/name"))
    if isinstance(fn.get("description"), str):
        out.append(Segment("system", fn["description"], f"{source}/description"))
    for key in ("parameters", "input_schema"):
        if isinstance(fn.get(key), dict):
            schema_segments(fn[key], f"{source}/{key}", out)


def is_token_ids(value: Any) -> bool:
    """A list of integers: a pre-tokenised prompt, which carries no text to screen."""
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def holds_token_ids(value: Any) -> bool:
    """A non-empty list of token ids, or a list holding one (a batch, or ids mixed with text).

    Mixed lists count: the ids in them reach the model unread whatever the strings beside
    them say, so a batch is refused if any of its prompts is pre-tokenised.
    """
    if not isinstance(value, list) or not value:
        return False
    return is_token_ids(value) or any(isinstance(v, list) and v and is_token_ids(v) for v in value)


def prompt_segments(
    value: Any, source: str, out: list[Segment], role: str = "user", *, refuse_token_ids: bool = True
) -> None:
    """A prompt: a string, a list of strings, or token ids.

    Token ids carry no text the detectors can read and no tokenizer is configured to
    decode them, so they are refused (:class:`UnscreenableInput`) unless the route says
    ``token_ids: forward_unscreened``.
    """
    if isinstance(value, str):
        out.append(Segment(role, value, source))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(Segment(role, item, f"{source}/{i}"))
            elif isinstance(item, bool) or not (isinstance(item, int) or is_token_ids(item)):
                raise ProtocolError(f"{source.lstrip('/')}[{i}] must be a string or token ids")
            elif refuse_token_ids:
                raise UnscreenableInput(
                    f"{source.lstrip('/')} holds token ids, which cannot be screened; send text.",
                    param=source[1:],
                )
    elif value is not None:
        raise ProtocolError(f"{source.lstrip('/')} must be a string or an array", param=source[1:])
