"""JSON that two parsers read differently is refused; everything else passes."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from firewall.core.errors import AmbiguousJson
from firewall.protocols.json_checks import check_unambiguous


def check(raw: bytes) -> None:
    check_unambiguous(raw, orjson.loads(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"messages":[{"role":"user","content":"hi"}]}',
        b'{"messages": [{"role": "user", "content": "say \\"a\\": b"}]}',
        b'{"a":"\\\\\\":"}',
        b'{"x":{"Foo":1},"arr":[{"a":1},{"a":2}]}',
        b'{"tools":[{"function":{"parameters":{"properties":{"Name":{},"name":{}}}}}]}',
        b"[" * 300 + b"]" * 300,
    ],
)
def test_unambiguous_bodies_pass(raw: bytes) -> None:
    check(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"messages":[{"role":"user","content":"hi","content":"x"}]}',
        b'{"messages":[{"role":"user","content":"a\\\\","content":"b"}]}',
        b'{"messages" : [], "messages": []}',
        b'{"messages":[{"role":"user","Content":"hi"}]}',
        b'{"messages":[],"Messages":[]}',
        b'{"x":{"Foo":1,"foo":2}}',
        b'{"PROMPT":"x"}',
    ],
)
def test_ambiguous_bodies_are_refused(raw: bytes) -> None:
    with pytest.raises(AmbiguousJson):
        check(raw)


_keys = st.text(alphabet="abcxyz_", min_size=1, max_size=4)
_leaves = st.one_of(st.integers(), st.text(alphabet='ab "\\:é\n', max_size=6), st.booleans(), st.none())
_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=12,
)


def _render(value: Any, spaced: bool, duplicate: bool) -> tuple[str, bool]:
    """JSON text of ``value``; with ``duplicate``, the first object met repeats its first key."""
    sep, colon = (", ", ": ") if spaced else (",", ":")
    if isinstance(value, dict):
        parts = []
        used = False
        for k, v in value.items():
            text, inner_used = _render(v, spaced, duplicate and not used)
            used = used or inner_used
            parts.append(json.dumps(k) + colon + text)
        if duplicate and not used and value:
            k, v = next(iter(value.items()))
            parts.append(json.dumps(k) + colon + json.dumps(v))
            used = True
        return "{" + sep.join(parts) + "}", used
    if isinstance(value, list):
        parts = []
        used = False
        for v in value:
            text, inner_used = _render(v, spaced, duplicate and not used)
            used = used or inner_used
            parts.append(text)
        return "[" + sep.join(parts) + "]", used
    return json.dumps(value), False


@settings(max_examples=300, deadline=None)
@given(value=_values, spaced=st.booleans(), duplicate=st.booleans())
def test_a_duplicate_key_is_found_however_the_json_is_written(
    value: Any, spaced: bool, duplicate: bool
) -> None:
    text, used = _render(value, spaced, duplicate)
    raw = text.encode()
    if used:
        with pytest.raises(AmbiguousJson):
            check(raw)
    else:
        check(raw)
