"""Pure data of the invisible-character detector: reason codes, categories, weights, code points.

Why a module of its own: these tables are what a reviewer tunes or checks against the
Unicode data (the character classes, the script ranges in which joiners and marks are
legitimate, the calibrated weights) without reading the logic that uses them, which
lives in :mod:`detectors.invisible_chars.detector` and its helper modules. Nothing
here depends on the rest of the package; ``_Ranges`` and the range helpers are here
because the tables are built from them.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from typing import Literal

__all__ = [
    # reason codes and categories
    "R_ZERO_WIDTH", "R_INVISIBLE_FORMAT", "R_BIDI", "R_TAGS", "R_VS", "R_VS_RUN", "R_MIXED",
    "R_FLOOD", "REASON_CODES", "Category", "_ALL_CATEGORIES",
    # weights and limits
    "W_STEGO", "W_RUN", "W_IN_WORD", "W_STRAY", "W_VS_STRAY", "W_VS_DOUBLE", "W_TAG",
    "W_TAG_ODD_FLAG", "W_OVERRIDE", "W_BIDI", "W_BIDI_RTL", "W_MARK_RTL", "W_SOFT_HYPHEN",
    "W_MIXED", "W_MANY", "W_FLOOD", "_STEGO_RUN", "_MANY_EVENTS", "_SEGMENT_EVENT_CAP",
    "_MINORITY_WORD_LIMIT",
    # code-point ranges
    "_merge", "_cls", "_Ranges",
    # characters and their classes
    "ZWSP", "ZWNJ", "ZWJ", "WJ", "BOM", "MVS", "SOFT_HYPHEN", "CGJ", "LRM", "RLM", "ALM",
    "LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI", "VS15", "VS16",
    "WAVING_BLACK_FLAG", "CANCEL_TAG", "C_ZW", "C_BIDI", "C_TAG", "C_VS", "C_FMT",
    "_ZERO_WIDTH", "_BIDI_MARKS", "_BIDI_OPEN_ISOLATE", "_BIDI_ALL", "_TAG_RANGES",
    "_VS_RANGES", "_FORMAT_RANGES", "_CLASS_OF",
    # scripts
    "_JOINING_SCRIPTS", "_ZWSP_SCRIPTS", "_RTL", "_HAN", "_MONGOLIAN", "_HANGUL_JAMO",
    "_EMOJI", "_ARABIC", "_KAITHI", "_SCRIPT_FORMAT", "_NUMBER_SIGNS",
    # emoji tag sequences and streaming
    "_RGI_FLAG_TAGS", "_FLAG_SPEC_RE", "_HOLD_CATEGORIES",
]  # fmt: skip

# --------------------------------------------------------------------------- reasons

R_ZERO_WIDTH = "zero_width"
R_INVISIBLE_FORMAT = "invisible_format"
R_BIDI = "bidi_control"
R_TAGS = "tag_chars"
R_VS = "variation_selector"
R_VS_RUN = "variation_selector_run"
R_MIXED = "mixed_script"
R_FLOOD = "invisible_flood"

#: Every reason code this detector can emit.
REASON_CODES: tuple[str, ...] = (
    R_BIDI,
    R_FLOOD,
    R_INVISIBLE_FORMAT,
    R_MIXED,
    R_TAGS,
    R_VS,
    R_VS_RUN,
    R_ZERO_WIDTH,
)

Category = Literal[
    "zero_width",
    "invisible_format",
    "bidi_control",
    "tag_chars",
    "variation_selector",
]
_ALL_CATEGORIES: tuple[Category, ...] = (
    "bidi_control",
    "invisible_format",
    "tag_chars",
    "variation_selector",
    "zero_width",
)

# --------------------------------------------------------------------------- weights
# Calibration (see the docs): clear triggers >= 0.9, ambiguous strays ~0.6,
# legitimate-but-noteworthy uses (soft hyphen inside a word, a directional mark
# in RTL text, balanced isolates around RTL text) < 0.3. The sample's score is the
# highest weight among its events (plus the "many strays" floor below).

W_STEGO = 0.99  # long runs: bit/byte smuggling
W_RUN = 0.95  # run of >= zero_width_min_run invisible characters
W_IN_WORD = 0.9  # a single invisible character inside a word
W_STRAY = 0.6  # a single invisible character at a word boundary
W_VS_STRAY = 0.7  # a variation selector on a base that has no variants
W_VS_DOUBLE = 0.6  # two VS-15/VS-16 in a row (a common copy/paste glitch)
W_TAG = 0.95  # tag characters outside an emoji flag sequence
W_TAG_ODD_FLAG = 0.6  # well-formed but non-RGI subdivision flag
W_OVERRIDE = 0.95  # LRO / RLO
W_BIDI = 0.9  # embeddings/isolates without RTL text, unbalanced controls
W_BIDI_RTL = 0.2  # balanced embedding/isolate around RTL text
W_MARK_RTL = 0.15  # a single LRM/RLM/ALM in text that has RTL letters
W_SOFT_HYPHEN = 0.25  # a single soft hyphen inside a word (hyphenation hint)
W_MIXED = 0.95  # homoglyph-mixed word
W_MANY = 0.95  # floor when many separate invisible characters are scattered
W_FLOOD = 0.6  # more candidates than the analysis budget: the rest was not judged

_STEGO_RUN = 8  # invisible characters in one run that look like encoded data
_MANY_EVENTS = 8  # scattered events (each >= W_STRAY) that look like encoding
_SEGMENT_EVENT_CAP = 512  # evidence kept per segment before scanning may stop early
_MINORITY_WORD_LIMIT = 64  # words visited one by one before a full regex pass

# --------------------------------------------------------------------------- ranges


def _merge(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def _cls(ranges: Iterable[tuple[int, int]]) -> str:
    """Render code-point ranges as the inside of a regex character class."""
    parts: list[str] = []
    for lo, hi in _merge(ranges):
        lo_s, hi_s = re.escape(chr(lo)), re.escape(chr(hi))
        parts.append(lo_s if lo == hi else f"{lo_s}-{hi_s}")
    return "".join(parts)


class _Ranges:
    """An immutable set of code-point ranges with O(log n) membership."""

    __slots__ = ("_ends", "_starts", "ranges")

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        self.ranges = _merge(ranges)
        self._starts = [lo for lo, _ in self.ranges]
        self._ends = [hi for _, hi in self.ranges]

    def __contains__(self, cp: int) -> bool:
        i = bisect.bisect_right(self._starts, cp) - 1
        return i >= 0 and cp <= self._ends[i]

    def has(self, ch: str) -> bool:
        """Membership for a one-character string; the empty string is never in."""
        return bool(ch) and ord(ch) in self


# --------------------------------------------------------------------------- characters

ZWSP, ZWNJ, ZWJ, WJ, BOM, MVS = 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF, 0x180E
SOFT_HYPHEN, CGJ = 0x00AD, 0x034F
LRM, RLM, ALM = 0x200E, 0x200F, 0x061C
LRE, RLE, PDF, LRO, RLO = 0x202A, 0x202B, 0x202C, 0x202D, 0x202E
LRI, RLI, FSI, PDI = 0x2066, 0x2067, 0x2068, 0x2069
VS15, VS16 = 0xFE0E, 0xFE0F
WAVING_BLACK_FLAG, CANCEL_TAG = 0x1F3F4, 0xE007F

# Classes of candidate characters.
C_ZW, C_BIDI, C_TAG, C_VS, C_FMT = 1, 2, 3, 4, 5

_ZERO_WIDTH = frozenset({ZWSP, ZWNJ, ZWJ, WJ, BOM, MVS})
_BIDI_MARKS = frozenset({LRM, RLM, ALM})
_BIDI_OPEN_ISOLATE = frozenset({LRI, RLI, FSI})
_BIDI_ALL = _BIDI_MARKS | _BIDI_OPEN_ISOLATE | {LRE, RLE, PDF, LRO, RLO, PDI}

_TAG_RANGES: tuple[tuple[int, int], ...] = ((0xE0000, 0xE007F),)
# Variation selectors: Mongolian free variation selectors, VS1-16, VS17-256.
_VS_RANGES: tuple[tuple[int, int], ...] = (
    (0x180B, 0x180D),
    (0x180F, 0x180F),
    (0xFE00, 0xFE0F),
    (0xE0100, 0xE01EF),
)
# Other invisible / default-ignorable format characters. Every Unicode "Cf"
# character is a candidate (a test checks this against unicodedata), plus a few
# blank-looking letters used as invisible padding (Hangul fillers, Braille blank).
_FORMAT_RANGES: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x0600, 0x0605),  # Arabic number signs (legitimate before digits)
    (0x06DD, 0x06DD),  # Arabic end of ayah
    (0x070F, 0x070F),  # Syriac abbreviation mark
    (0x0890, 0x0891),  # Arabic pound/piastre mark above
    (0x08E2, 0x08E2),  # Arabic disputed end of ayah
    (0x115F, 0x1160),  # Hangul choseong/jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x2061, 0x2065),  # invisible math operators (+ unassigned ignorable U+2065)
    (0x206A, 0x206F),  # deprecated format characters
    (0x2800, 0x2800),  # Braille pattern blank
    (0x3164, 0x3164),  # Hangul filler
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xFFF0, 0xFFFB),  # unassigned ignorables, interlinear annotation controls
    (0x110BD, 0x110BD),  # Kaithi number sign
    (0x110CD, 0x110CD),  # Kaithi number sign above
    (0x13430, 0x1345F),  # Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol format controls
    (0xE0080, 0xE00FF),  # default-ignorable, unassigned
    (0xE01F0, 0xE0FFF),  # default-ignorable, unassigned
)


def _build_class_table() -> dict[int, int]:
    table: dict[int, int] = {}
    for ranges, c in ((_FORMAT_RANGES, C_FMT), (_VS_RANGES, C_VS), (_TAG_RANGES, C_TAG)):
        for lo, hi in ranges:
            table.update(dict.fromkeys(range(lo, hi + 1), c))
    table.update(dict.fromkeys(_BIDI_ALL, C_BIDI))
    table.update(dict.fromkeys(_ZERO_WIDTH, C_ZW))
    return table


_CLASS_OF: dict[int, int] = _build_class_table()

# --------------------------------------------------------------------------- script ranges
# Compact, deliberately approximate tables of the scripts whose legitimate use of
# joiners and marks we recognise.

_JOINING_SCRIPTS = _Ranges(
    (
        (0x0600, 0x08FF),  # Arabic, Syriac, Arabic supplement, Thaana, NKo, ...
        (0x0900, 0x0DFF),  # Devanagari ... Sinhala
        (0x0F00, 0x0FFF),  # Tibetan
        (0x1000, 0x109F),  # Myanmar
        (0x1780, 0x18AF),  # Khmer, Mongolian
        (0x1B00, 0x1B7F),  # Balinese
        (0xA980, 0xA9DF),  # Javanese
        (0xFB50, 0xFDFF),  # Arabic presentation forms A
        (0xFE70, 0xFEFE),  # Arabic presentation forms B
        (0x10A00, 0x10A5F),  # Kharoshthi
        (0x11000, 0x11FFF),  # Brahmic scripts in the SMP
    )
)
_ZWSP_SCRIPTS = _Ranges(
    (
        (0x0E00, 0x0EFF),  # Thai, Lao
        (0x0F00, 0x0FFF),  # Tibetan
        (0x1000, 0x109F),  # Myanmar
        (0x1780, 0x17FF),  # Khmer
        (0x1950, 0x19DF),  # Tai Le, New Tai Lue
        (0x1A20, 0x1AAF),  # Tai Tham
        (0x1B00, 0x1B7F),  # Balinese
        (0xA980, 0xA9DF),  # Javanese
        (0xAA60, 0xAADF),  # Myanmar extended-A, Tai Viet
    )
)
_RTL = _Ranges(
    (
        (0x0590, 0x08FF),  # Hebrew, Arabic, Syriac, Thaana, NKo, Samaritan, Mandaic
        (0xFB1D, 0xFDFF),  # Hebrew and Arabic presentation forms
        (0xFE70, 0xFEFE),
        (0x10800, 0x10FFF),  # historic RTL scripts
        (0x1E800, 0x1EFFF),  # Mende Kikakui, Adlam, Arabic mathematical letters
    )
)
_HAN = _Ranges(
    (
        (0x2E80, 0x2FDF),
        (0x3400, 0x4DBF),
        (0x4E00, 0x9FFF),
        (0xF900, 0xFAFF),
        (0x20000, 0x323AF),
    )
)
_MONGOLIAN = _Ranges(((0x1800, 0x18AF),))
_HANGUL_JAMO = _Ranges(
    ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xD7B0, 0xD7FF), (0xFFA1, 0xFFDC))
)
# Emoji-ish code points: an approximation of Extended_Pictographic plus modifiers,
# regional indicators and emoji components (UTS #51).
_EMOJI = _Ranges(
    (
        (0x00A9, 0x00A9),
        (0x00AE, 0x00AE),
        (0x203C, 0x203C),
        (0x2049, 0x2049),
        (0x2122, 0x2122),
        (0x2139, 0x2139),
        (0x2194, 0x21FF),
        (0x2300, 0x23FF),
        (0x24C2, 0x24C2),
        (0x25A0, 0x27BF),
        (0x2900, 0x297F),
        (0x2B00, 0x2BFF),
        (0x3030, 0x3030),
        (0x303D, 0x303D),
        (0x3297, 0x3297),
        (0x3299, 0x3299),
        (0x1F000, 0x1FAFF),
        (0x1FC00, 0x1FFFD),
    )
)

# Script-specific format characters -> the script next to which each is legitimate.
_ARABIC = _Ranges(((0x0600, 0x08FF),))
_KAITHI = _Ranges(((0x11080, 0x110CF),))
_SCRIPT_FORMAT: dict[int, _Ranges] = {
    **dict.fromkeys((0x0600, 0x0601, 0x0602, 0x0603, 0x0604, 0x0605), _ARABIC),
    **dict.fromkeys((0x06DD, 0x0890, 0x0891, 0x08E2), _ARABIC),
    0x070F: _Ranges(((0x0700, 0x074F),)),  # Syriac
    0x110BD: _KAITHI,
    0x110CD: _KAITHI,
    0x17B4: _Ranges(((0x1780, 0x17FF),)),  # Khmer
    0x17B5: _Ranges(((0x1780, 0x17FF),)),
    **dict.fromkeys((0x115F, 0x1160, 0x3164, 0xFFA0), _HANGUL_JAMO),
    0x2800: _Ranges(((0x2801, 0x28FF),)),  # Braille blank between Braille cells
    **dict.fromkeys(range(0x13430, 0x13460), _Ranges(((0x13000, 0x1342F),))),  # Egyptian
    **dict.fromkeys(range(0x1BCA0, 0x1BCA4), _Ranges(((0x1BC00, 0x1BC9F),))),  # Duployan
    **dict.fromkeys(range(0x1D173, 0x1D17B), _Ranges(((0x1D100, 0x1D1FF),))),  # music
}
# Number signs are legitimate right before the digits they apply to.
_NUMBER_SIGNS = frozenset(
    {0x0600, 0x0601, 0x0602, 0x0603, 0x0604, 0x0605, 0x06DD, 0x0890, 0x0891, 0x08E2,
     0x110BD, 0x110CD}
)  # fmt: skip

# RGI emoji tag sequences (UTS #51): England, Scotland, Wales.
_RGI_FLAG_TAGS = frozenset({"gbeng", "gbsct", "gbwls"})
_FLAG_SPEC_RE = re.compile(r"[a-z]{2}[a-z0-9]{1,4}")

# Character classes a stream must not end on before the next chunk says what they are.
_HOLD_CATEGORIES = frozenset({"Cf", "Cc", "Mn", "Me", "Co", "Cn", "Cs"})
