"""Refuse JSON that two parsers read differently.

The firewall parses a body with orjson and screens what orjson sees; the model server
parses the same bytes with its own parser. Where parsers disagree, an attacker can
show the firewall one prompt and the model another:

- **A key twice** (``{"content": "clean", "content": "trigger"}``): RFC 8259 leaves
  the meaning open. orjson, Python and Go keep the last value, some parsers keep the
  first, some refuse.
- **Keys equal but for case** (``"messages"`` and ``"Messages"``): Go's
  ``encoding/json`` (Ollama, many gateways) matches struct fields case-insensitively
  and keeps whichever comes last; orjson keeps both and the adapter reads one.
  A lone case variant of a field an adapter reads (``"Content"``) is refused too:
  a Go server reads it as the field, the adapter does not. Free-form maps (tool
  parameter schemas, metadata) are decoded into maps, not structs, and are not
  checked for case; duplicates are refused everywhere.

:func:`check_unambiguous` refuses both with :class:`~firewall.core.errors.AmbiguousJson`.

Cost. Duplicates leave no trace in orjson's result, so the raw bytes are consulted.
When orjson's own serialisation of the parsed body gives back the very bytes received
(compact JSON, as orjson, Go, JavaScript and most gateways write it), nothing was
dropped: about 2 us for a chat request. Otherwise (Python's ``json.dumps`` puts spaces
after separators) the standard library's C scanner re-reads the body with a hook that
sees every object's pairs: about 20 us for a 1.6 KB request, 0.2 ms for 200 KB.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from firewall.core.errors import AmbiguousJson
from firewall.protocols.fields import GENERATION_PARAMS

__all__ = ["MODEL_VISIBLE_KEYS", "check_unambiguous"]

#: Field names that some supported API renders into the model's input (or that select
#: what is rendered), and those the firewall's policy reads (``model`` picks per-model
#: overrides, ``stream`` the relay). A key equal to one of these but for case is refused
#: anywhere in a screened body: ``"MODEL"`` would route a Go server to a model whose
#: override the firewall never applied.
MODEL_VISIBLE_KEYS = frozenset(
    {
        "arguments",
        "chat_template",
        "chat_template_kwargs",
        "content",
        "context",
        "description",
        "documents",
        "function",
        "function_call",
        "functions",
        "images",
        "input",
        "inputs",
        "instructions",
        "messages",
        "model",
        "name",
        "parameters",
        "prompt",
        "raw",
        "reasoning",
        "reasoning_content",
        "refusal",
        "role",
        "stream",
        "suffix",
        "system",
        "template",
        "text",
        "think",
        "thinking",
        "tool_calls",
        "tool_name",
        "tools",
        "type",
    }
)
_FOLDED = {k.casefold(): k for k in MODEL_VISIBLE_KEYS}
#: Exact field names of the supported APIs (model-visible or not). An object whose keys are
#: all among them needs no per-key case check.
_PLAIN_KEYS = (
    MODEL_VISIBLE_KEYS
    | GENERATION_PARAMS
    | frozenset(
        {
            "top_k", "tool_choice", "id", "tool_call_id", "image_url", "url", "detail",
            "include_usage", "strict", "audio", "echo", "best_of", "encoding_format", "dimensions",
            "previous_response_id", "max_output_tokens", "truncation", "include", "call_id",
            "output", "status", "summary", "annotations",
        }
    )
)  # fmt: skip
#: Values that are free-form maps (JSON schemas, metadata, options), not structs: a Go
#: server decodes them into maps, which keep keys as sent, so case is not checked there
#: (a tool schema may well have a property "Name").
_FREE_FORM = frozenset(
    {
        "extra_body",
        "format",
        "input_schema",
        "json_schema",
        "logit_bias",
        "metadata",
        "options",
        "parameters",
        "properties",
        "schema",
    }
)


def check_unambiguous(raw: bytes, body: Any) -> None:
    """Raise :class:`AmbiguousJson` when ``raw`` (parsed as ``body``) has a duplicate key
    or a key equal to another, or to a model-visible field, but for case."""
    _check_case(body)
    try:
        if orjson.dumps(body) == raw:
            return  # the same bytes back: no member was dropped
    except orjson.JSONEncodeError:
        pass  # nested past orjson's writer limit: the scanner decides
    _scan_pairs(raw)


def _check_case(body: Any) -> None:
    """Raise on keys equal but for case, in one object or to a model-visible field."""
    stack = [body]
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        kind = type(node)
        if kind is dict:
            # Distinct lower-case names of the APIs cannot fold together and are no
            # variants: only then is the per-key check skipped (the usual case, in C).
            if not _PLAIN_KEYS.issuperset(node):
                _check_keys(node)
            for key, value in node.items():
                inner = type(value)
                if (inner is dict or inner is list) and key not in _FREE_FORM:
                    push(value)
        elif kind is list:
            for value in node:
                inner = type(value)
                if inner is dict or inner is list:
                    push(value)


def _check_keys(node: dict[str, Any]) -> None:
    folded: set[str] = set()
    for key in node:
        lower = key.casefold()
        if lower in folded:
            raise AmbiguousJson(
                f"Request body has keys that differ only by case ({key!r}); send each key once."
            )
        folded.add(lower)
        if lower in _FOLDED and key not in MODEL_VISIBLE_KEYS:
            raise AmbiguousJson(
                f"Request body has the key {key!r}, which servers that ignore case read as "
                f"{_FOLDED[lower]!r}; use the exact field name."
            )


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise AmbiguousJson("Request body has a key twice in one object; send each key once.")
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs_hook)


def _scan_pairs(raw: bytes) -> None:
    try:
        _DECODER.decode(raw.decode("utf-8", "surrogatepass"))
    except RecursionError:
        raise AmbiguousJson("Request body is nested too deeply to check its keys.") from None
    except ValueError as exc:  # orjson read it; the standard library did not
        raise AmbiguousJson(f"Request body is read differently by JSON parsers ({exc}).") from None
