"""Characters removed from JSON bytes in place: every spelling, nothing else."""

from __future__ import annotations

import orjson
import pytest

from firewall.protocols.json_edit import remove_json_chars

ZWSP, SHY = "\u200b", "\u00ad"


@pytest.mark.parametrize(
    ("raw", "expected", "removed"),
    [
        ('{"a": "he\u200bllo"}', '{"a": "hello"}', 1),
        ('{"a":"he\\u200bllo"}', '{"a":"hello"}', 1),
        ('{"a":"he\\u200Bllo"}', '{"a":"hello"}', 1),  # escapes in either case
        ('{"a":"x\\\\u200b"}', '{"a":"x\\\\u200b"}', 0),  # a backslash, then text
        ('{"a":"x\\\\\\u200b"}', '{"a":"x\\\\"}', 1),  # a backslash, then the escape
        ('{"a":"\\"\\u200b\\""}', '{"a":"\\"\\""}', 1),
        ('{"he\u200bllo": 1, "b": "\u00ad"}', '{"hello": 1, "b": ""}', 2),  # keys too
        ('{"a":"\\u00ad\\u200c"}', '{"a":"\\u200c"}', 1),  # only the named characters
    ],
)
def test_every_spelling_is_removed_and_nothing_else(raw: str, expected: str, removed: int) -> None:
    out, n = remove_json_chars(raw.encode(), ZWSP + SHY)
    assert out == expected.encode()
    assert n == removed
    orjson.loads(out)


def test_a_character_past_the_bmp_is_removed_as_utf8_and_as_a_surrogate_pair() -> None:
    vs17 = "\U000e0100"
    assert remove_json_chars(orjson.dumps({"a": f"x{vs17}y"}), vs17) == (b'{"a":"xy"}', 1)
    assert remove_json_chars(b'"x\\uDB40\\udd00y"', vs17) == (b'"xy"', 1)


def test_no_remedy_returns_the_same_bytes() -> None:
    raw = b'{"a":"\\u200b"}'
    assert remove_json_chars(raw, "") == (raw, 0)
