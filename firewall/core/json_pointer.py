"""Replacing one string inside a parsed JSON body, by the JSON pointer its segment names.

A behavioural check asks the model again about a request with one span taken out, in the
request's own API (:class:`~firewall.core.types.Resend`). Every screened
:class:`~firewall.core.types.Segment` names where its text sits (``source``, an RFC 6901
pointer), so the edit is "this string, at that pointer, becomes that one". Only the
containers on the pointer's path are copied: the rest of a large body (tool schemas,
earlier turns, images) is shared with the original, which is never changed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["replace_string"]


def _tokens(pointer: str) -> list[str] | None:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        return None  # a source that is not a pointer (a derived text): nothing to edit
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def replace_string(doc: Any, pointer: str, expected: str, text: str) -> Any | None:
    """A copy of ``doc`` whose string at ``pointer`` is ``text`` instead of ``expected``.

    ``None`` when the pointer does not lead to a string equal to ``expected``: a segment
    whose text is derived from the body (a key, a joined list) cannot be edited in place,
    and a probe of anything else would not test the span.
    """
    tokens = _tokens(pointer)
    if tokens is None:
        return None
    return _replace(doc, tokens, 0, expected, text)


def _replace(node: Any, tokens: list[str], i: int, expected: str, text: str) -> Any | None:
    if i == len(tokens):
        return text if isinstance(node, str) and node == expected else None
    step = tokens[i]
    if isinstance(node, dict):
        if step not in node:
            return None
        child = _replace(node[step], tokens, i + 1, expected, text)
        if child is None:
            return None
        copy = dict(node)
        copy[step] = child
        return copy
    if isinstance(node, list):
        if not (step.isascii() and step.isdigit()) or int(step) >= len(node):
            return None
        index = int(step)
        child = _replace(node[index], tokens, i + 1, expected, text)
        if child is None:
            return None
        items = list(node)
        items[index] = child
        return items
    return None
