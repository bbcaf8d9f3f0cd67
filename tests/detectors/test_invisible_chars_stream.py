"""How much of a growing stream the invisible-character detector lets through at once."""

from __future__ import annotations

import pytest

from detectors.invisible_chars.detector import InvisibleCharsDetector

ZW = "\u200b"
TAG = "\U000e0041"


@pytest.mark.parametrize(
    ("text", "safe"),
    [
        ("Hello world", 11),
        (f"Hello wor{ZW}", 9),  # a zero-width run may continue in the next chunk
        (f"Hello wor{ZW}{ZW}", 9),
        (f"Hi {TAG}{TAG}", 3),  # tag characters: wait for the rest of the sequence
        ("\u4f60\u597d\uff0c\u4e16\u754c", 5),  # other scripts (here CJK) are released at once
        ("Привет мир", 10),
        ("pay p\u0430y", 4),  # a word mixing Latin and Cyrillic letters waits for its end
        ("pay p\u0430y ", 8),
        ("", 0),
    ],
)
def test_stream_safe_prefix(text: str, safe: int) -> None:
    assert InvisibleCharsDetector("inv").stream_safe_prefix(text) == safe
