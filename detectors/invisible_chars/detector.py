"""Invisible-character and homoglyph detector: the cheap first line of the cascade.

Why this exists
---------------
Backdoored models are often keyed on triggers a human reviewer cannot see. The
literature shows several families that survive copy/paste and look identical (or
empty) on screen, yet tokenise very differently:

* **Invisible characters** (zero-width space/joiners, word joiner, stray BOM, soft
  hyphen, Hangul fillers, other ``Cf`` format characters) inserted into or between
  words. "Bad Characters: Imperceptible NLP Attacks" (Boucher, Shumailov, Anderson
  and Papernot, IEEE S&P 2022) shows that such injections, homoglyph swaps and
  bidi reorderings change model behaviour while rendering unchanged.
* **Bidirectional controls** (overrides, embeddings, isolates, directional marks)
  that make the displayed order differ from the order the model reads: "Trojan
  Source: Invisible Vulnerabilities" (Boucher and Anderson, 2021; USENIX Security
  2023).
* **Unicode tag characters** (U+E0000-U+E007F), which mirror ASCII invisibly and
  were used for "ASCII smuggling" / invisible prompt injection (publicised by
  Riley Goodside and Johann Rehberger in 2024).
* **Variation-selector runs**: arbitrary bytes can be hidden as a run of variation
  selectors after an emoji or a letter (Paul Butler, "Smuggling arbitrary data
  through an emoji", 2025).
* **Homoglyphs**: Latin words with Cyrillic/Greek/... look-alike letters, a trigger
  family used for backdoors in "Hidden Backdoors in Human-Centric Language Models"
  (Li et al., ACM CCS 2021); the mixed-script test follows the idea of Unicode
  TS #39 (Security Mechanisms) with a compact, hand-written table. A word is a
  spoof when it has a single-script reading (its foreign letters all imitate the
  other script, whichever script has the majority in the word) or a minority
  letter imitates the majority script; the script of the surrounding text decides
  the ambiguous cases (Greek symbols, native endings on Latin loanwords).

Legitimate uses of the same code points are common (emoji ZWJ sequences, VS-16,
flag tag sequences, keycaps, a leading BOM, ZWNJ/ZWJ in Persian, Arabic and Indic
scripts, ZWSP in Thai/Khmer/Myanmar, directional marks in RTL text, Greek symbols
glued to scientific terms such as TNF-alpha written with a Greek alpha). Each is
recognised from its immediate context and scores zero or low; see
``docs/detectors/invisible_chars.md``.

Cost: the detector runs inline on the event loop for every request. Pure-ASCII
segments return after one ``str.isascii()`` call; other segments are scanned with
precompiled regular expressions, and Python-level work happens only around the
(rare) candidate characters. Evidence is positions and reason codes only; no text
is copied into the finding.
"""

from __future__ import annotations

import bisect
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, Literal, NamedTuple

from pydantic import Field, field_validator

from detectors.base import (
    Cost,
    DetectorParams,
    Finding,
    FindingStatus,
    InlineDetector,
    Phase,
    Sample,
    Span,
)

__all__ = ["REASON_CODES", "InvisibleCharsDetector", "InvisibleCharsParams"]

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


def _script_format_ok(cp: int, prev: str, nxt: str) -> bool:
    """Is a script-specific format character next to text of its own script?"""
    scripts = _SCRIPT_FORMAT.get(cp)
    if scripts is None:
        return False
    if cp in _NUMBER_SIGNS and nxt.isdigit():
        return True
    return scripts.has(prev) or scripts.has(nxt)


# --------------------------------------------------------------------------- homoglyphs
# Script groups whose letters are easily confused with one another. Letters of
# other scripts (Han, Kana, Hangul, Arabic, Hebrew, Indic, ...) are neutral: a
# word mixing Latin with Kana ("T-shirt" written T + katakana) is ordinary Japanese.

G_LATIN, G_GREEK, G_CYRILLIC, G_ARMENIAN, G_COPTIC = "Latn", "Grek", "Cyrl", "Armn", "Copt"
G_CHEROKEE, G_LISU, G_FULLWIDTH, G_MATH = "Cher", "Lisu", "Fullwidth", "Math"

_GROUP_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    G_LATIN: (
        (0x41, 0x5A),
        (0x61, 0x7A),
        (0xAA, 0xAA),
        (0xBA, 0xBA),
        (0xC0, 0xD6),
        (0xD8, 0xF6),
        (0xF8, 0x2AF),
        (0x1D00, 0x1D7F),
        (0x1E00, 0x1EFF),
        (0x2C60, 0x2C7F),
        (0xA720, 0xA7FF),
        (0xAB30, 0xAB6F),
    ),
    # OHM SIGN is canonically GREEK CAPITAL OMEGA (NFC maps it there): "10 kOhm".
    G_GREEK: ((0x370, 0x3E1), (0x3F0, 0x3FF), (0x1F00, 0x1FFF), (0x2126, 0x2126)),
    G_COPTIC: ((0x3E2, 0x3EF), (0x2C80, 0x2CFF)),
    G_CYRILLIC: ((0x400, 0x52F), (0x1C80, 0x1C8F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F)),
    G_ARMENIAN: ((0x531, 0x58F), (0xFB13, 0xFB17)),
    G_CHEROKEE: ((0x13A0, 0x13FF), (0xAB70, 0xABBF)),
    G_LISU: ((0xA4D0, 0xA4FF),),
    G_FULLWIDTH: ((0xFF21, 0xFF3A), (0xFF41, 0xFF5A)),
    # Letterlike symbols (but the ohm sign) and mathematical alphanumerics.
    G_MATH: ((0x2100, 0x2125), (0x2127, 0x214F), (0x1D400, 0x1D7FF)),
}
# Groups that never legitimately mix with another group inside one word.
_ALWAYS_CONFUSABLE = frozenset({G_CHEROKEE, G_LISU, G_FULLWIDTH, G_MATH})

_SORTED_GROUP_RANGES: list[tuple[int, int, str]] = sorted(
    (lo, hi, g) for g, rs in _GROUP_RANGES.items() for lo, hi in rs
)
_GROUP_STARTS: list[int] = [lo for lo, _, _ in _SORTED_GROUP_RANGES]


def _group_of(ch: str) -> str | None:
    cp = ord(ch)
    i = bisect.bisect_right(_GROUP_STARTS, cp) - 1
    if i >= 0:
        lo, hi, g = _SORTED_GROUP_RANGES[i]
        if lo <= cp <= hi and ch.isalpha():
            return g
    return None


# Look-alike letter -> the Latin letter it imitates: a small hand-written subset in
# the spirit of the Unicode confusables data (TS #39). Written as code points on
# purpose: the look-alikes are indistinguishable from Latin in an editor.
_SKELETON_SPEC = """
    0430 a  0435 e  043E o  0440 p  0441 c  0443 y  0445 x  0455 s  0456 i  0458 j
    0501 d  051B q  051D w  04BB h  04CF l  04AF y  0451 \u00eb  0457 \u00ef
    0410 A  0412 B  0415 E  041A K  041C M  041D H  041E O  0420 P  0421 C  0422 T
    0425 X  0423 Y  0405 S  0406 I  0408 J  051A Q  051C W  04AE Y  04C0 I  0401 \u00cb
    0475 v  0474 V  04BD e  0461 w  050C G
    03BF o  03B1 a  03BD v  03B9 i  03BA k  03C1 p  03C5 u  03C7 x  03B3 y  03F2 c
    03F3 j  0391 A  0392 B  0395 E  0396 Z  0397 H  0399 I  039A K  039C M  039D N
    039F O  03A1 P  03A4 T  03A5 Y  03A7 X  03F9 C  037F J  03D2 Y  03DC F  03F1 p  03FA M
    0585 o  057D u  0578 n  0570 h  0566 q  0581 g  0555 O  054D U  054F S  053C L
    0561 w  0563 q  057C n  0584 f
    2C81 a  2C9F o  2CA3 p  2CA5 c  2CAD x  2C80 A  2C82 B  2C88 E  2C8C Z  2C8E H
    2C92 I  2C94 K  2C98 M  2C9A N  2C9E O  2CA2 P  2CA4 C  2CA6 T  2CA8 Y  2CAC X
"""  # Cyrillic (5 lines), Greek (3), Armenian (2), Coptic (2)


def _parse_skeleton(spec: str) -> dict[str, str]:
    fields = spec.split()
    return {chr(int(cp, 16)): latin for cp, latin in zip(fields[::2], fields[1::2], strict=True)}


_SKELETON: dict[str, str] = _parse_skeleton(_SKELETON_SPEC)
# For each non-Latin group, the Latin letters it can imitate.
_TARGETS: dict[str, frozenset[str]] = {
    g: frozenset(v for k, v in _SKELETON.items() if _group_of(k) == g)
    for g in (G_GREEK, G_CYRILLIC, G_ARMENIAN, G_COPTIC)
}
# Lower-case Greek letters used as scientific symbols glued to Latin terms (TNF-alpha,
# IFN-gamma, NF-kappa-B, alpha-v-beta-3 written without hyphens). Omicron, iota and
# upsilon never are: they are the closest look-alikes of o, i and u. Nu, rho and chi
# (near-identical to v, p and x) are symbols only on a short tag (nu-max, rho-s).
_SCIENTIFIC_GREEK = frozenset(chr(cp) for cp in range(0x03B1, 0x03CA)) - {
    chr(0x03BF),  # omicron
    chr(0x03B9),  # iota
    chr(0x03C5),  # upsilon
}
_SHORT_TAG_GREEK = frozenset({chr(0x03BD), chr(0x03C1), chr(0x03C7)})  # nu, rho, chi
# Capital Greek letters with no Latin look-alike (Gamma, Delta, Theta, Lambda, Xi, Pi,
# Sigma, Phi, Psi, Omega, the ohm sign): symbols wherever they are glued to Latin
# letters (Delta-x, Delta-E, Sigma-F, k-Ohm), in Greek text too.
_GREEK_CAPITAL_SYMBOLS = frozenset(
    chr(cp) for cp in (0x0393, 0x0394, 0x0398, 0x039B, 0x039E, 0x03A0, 0x03A3, 0x03A6, 0x03A8, 0x03A9, 0x2126)
)
_SHORT_TAG = 3  # Latin letters in a word that a nu/rho/chi symbol may be glued to
_SYMBOL_RUN = 2  # Greek symbols come alone or in pairs; a longer run is a Greek word
# A Latin loanword with a native ending glued on (Russian "iPhone" + instrumental
# "-om" written without the apostrophe): at most this many letters of ending.
_ENDING_MAX = 4
# The text around a word that decides which script dominates: the word's blocks of
# this many characters and one block each side (letter counts are cached per block).
_CONTEXT_BLOCK = 256

_NONLATIN_GROUPS = tuple(g for g in _GROUP_RANGES if g != G_LATIN)
_WORD_RE = re.compile(r"[^\W_]+")


def _latin_text(group: str, other: str) -> bool:
    """The context assumed without one: Latin text (Latin dominates, nothing else)."""
    return group == G_LATIN


def _mixed_word_is_confusable(word: str, dominates: Callable[[str, str], bool] = _latin_text) -> bool:
    """Decide whether a word that mixes script groups is a homoglyph spoof.

    Two shapes are spoofs, whichever group has the majority inside the word:

    * a letter outside the word's majority group imitates a letter of that group
      (``p`` + Cyrillic a + ``ypal``);
    * the word has a single-script reading: the letters outside one group all
      imitate letters of it (``t`` + Cyrillic shha + ie reads "the", though two of
      its three letters are Cyrillic). A Latin reading counts in any text; a
      reading in another script only where that script dominates the text.

    Exempt: Greek letters used as scientific symbols in text that is not Greek
    (TNF-alpha, alpha-v-beta-3), and a Latin stem with a visibly native ending in
    text of that script (Russian "iPhone" + "-om" glued on), unless either part
    passes for the other script.

    ``dominates(group, other)`` says whether letters of ``group`` outnumber those of
    ``other`` in the text around the word (ties go to Latin); it is called only
    when the answer matters.
    """
    groups: list[str | None] = [_group_of(ch) for ch in word]
    letters = [i for i, g in enumerate(groups) if g is not None]
    present = {groups[i] for i in letters}
    if len(present) < 2:
        return False
    if not present.isdisjoint(_ALWAYS_CONFUSABLE):
        return True
    if G_GREEK in present and G_LATIN in present:
        symbols = _greek_symbols(word, groups, letters, dominates)
        if symbols:
            letters = [i for i in letters if i not in symbols]
            present = {groups[i] for i in letters}
            if len(present) < 2:
                return False
    counts: dict[str | None, int] = {}
    for i in letters:
        counts[groups[i]] = counts.get(groups[i], 0) + 1
    # Ties go to Latin (the usual target of a spoof).
    majority = max(counts, key=lambda g: (counts[g], g == G_LATIN))
    if any(groups[i] != majority and _imitates(word[i], groups[i], majority) for i in letters):
        ending = _native_ending(groups, letters)
        if ending is None or not dominates(ending, G_LATIN):
            return True
        # Ordinary morphology unless the ending passes for Latin letters or the
        # stem for letters of the ending's script.
        return _reads_as(word, groups, letters, G_LATIN) or _reads_as(word, groups, letters, ending)
    # A reading as a Latin word is a spoof in any text: Latin brands, commands and
    # English words turn up inside text of every script. A reading in another
    # script is one only where that script dominates ("Delta-x" is not Greek).
    return any(
        target != majority
        and target is not None
        and _reads_as(word, groups, letters, target)
        and (target == G_LATIN or all(dominates(target, g) for g in present if g is not None and g != target))
        for target in present
    )


def _reads_as(word: str, groups: list[str | None], letters: list[int], target: str) -> bool:
    """Does every letter outside ``target`` imitate a letter of ``target``?"""
    return all(groups[i] == target or _imitates(word[i], groups[i], target) for i in letters)


def _imitates(ch: str, group: str | None, target: str | None) -> bool:
    """Does ``ch`` (a letter of ``group``) look like a letter of ``target``?"""
    skeleton = ch if group == G_LATIN else _SKELETON.get(ch)
    if skeleton is None:
        return False
    if target == G_LATIN:
        return True
    return target is not None and skeleton in _TARGETS.get(target, frozenset())


def _greek_symbols(
    word: str,
    groups: list[str | None],
    letters: list[int],
    dominates: Callable[[str, str], bool],
) -> set[int]:
    """Indices of the Greek letters used as symbols in a word that mixes Greek and Latin.

    A symbol stands in a run of at most two Greek letters (a longer run is a Greek
    word). A capital with no Latin look-alike always is one (Delta-x). A lower-case
    letter is one when it has no lower-case Latin neighbour (TNF-alpha, NF-kappa-B)
    or sits at the edge of the word (alpha-helix, alpha-v-beta-3; nu/rho/chi only
    with at most three Latin letters: nu-max). The edge case also needs text that
    is not Greek: in Greek text it is a Greek word with a Latin letter in it.
    """
    out: set[int] = set()
    n = len(letters)
    latin = sum(1 for i in letters if groups[i] == G_LATIN)
    context_ok: bool | None = None
    for pos, i in enumerate(letters):
        ch = word[i]
        capital = ch in _GREEK_CAPITAL_SYMBOLS
        if groups[i] != G_GREEK or not (capital or ch in _SCIENTIFIC_GREEK):
            continue
        a = pos
        while a > 0 and groups[letters[a - 1]] == G_GREEK:
            a -= 1
        b = pos
        while b + 1 < n and groups[letters[b + 1]] == G_GREEK:
            b += 1
        if b - a + 1 > _SYMBOL_RUN:
            continue
        if capital:
            out.add(i)
            continue
        lower_neighbour = any(
            0 <= k < n and groups[letters[k]] == G_LATIN and word[letters[k]].islower()
            for k in (a - 1, b + 1)
        )
        if lower_neighbour:
            if not (a == 0 or b == n - 1):
                continue
            if ch in _SHORT_TAG_GREEK and latin > _SHORT_TAG:
                continue
            if context_ok is None:
                context_ok = not dominates(G_GREEK, G_LATIN)
            if not context_ok:
                continue
        out.add(i)
    return out


def _native_ending(groups: list[str | None], letters: list[int]) -> str | None:
    """The ending's group if the word is a Latin stem (2+ letters) plus a short
    ending of one other group (up to ``_ENDING_MAX`` letters), else None."""
    k = 0
    while k < len(letters) and groups[letters[k]] == G_LATIN:
        k += 1
    ending = len(letters) - k
    if k < 2 or not 1 <= ending <= _ENDING_MAX:
        return None
    group = groups[letters[k]]
    if any(groups[i] != group for i in letters[k:]):
        return None
    return group


# --------------------------------------------------------------------------- patterns


class _Patterns:
    """The precompiled regular expressions, in two builds.

    CPython's regex engine tests a character class with a fast bitmap for the BMP
    but a linear list for astral ranges, which makes classes with astral ranges
    several times slower. Most non-ASCII text has no astral characters at all, so
    each segment uses the BMP build unless it contains one (cheap to check).
    """

    __slots__ = (
        "group_letter",
        "invisible",
        "latin",
        "latin_switch",
        "nonlatin",
        "nonlatin_switch",
        "other_nonlatin",
        "rtl",
    )

    def __init__(self, bmp_only: bool) -> None:
        def cls(ranges: Iterable[tuple[int, int]]) -> str:
            if bmp_only:
                ranges = [(lo, min(hi, 0xFFFF)) for lo, hi in ranges if lo <= 0xFFFF]
            return _cls(ranges)

        def group_cls(groups: Iterable[str]) -> str:
            return cls(r for g in groups for r in _GROUP_RANGES[g])

        candidates = cls((cp, cp) for cp in _CLASS_OF)
        # One maximal run ("cluster") of adjacent candidates per match. "[c][c]*"
        # rather than "[c]+": a pattern that starts with a bare class lets the
        # engine skip non-candidates quickly (about twice as fast on CPython 3.11).
        self.invisible = re.compile(f"[{candidates}][{candidates}]*")
        self.rtl = re.compile(f"[{cls(_RTL.ranges)}]")
        latin = group_cls([G_LATIN])
        nonlatin = group_cls(_NONLATIN_GROUPS)
        self.latin = re.compile(f"[{latin}]")
        self.nonlatin = re.compile(f"[{nonlatin}]")
        # One letter of a group: counted near a word to find the text's script.
        self.group_letter: dict[str, re.Pattern[str]] = {
            g: self.latin if g == G_LATIN else re.compile(f"[{group_cls([g])}]") for g in _GROUP_RANGES
        }
        # Adjacent Latin / non-Latin letters: the shape of nearly every spoof.
        self.latin_switch = re.compile(f"[{latin}][{nonlatin}]|[{nonlatin}][{latin}]")
        # For each non-Latin group: a letter of any *other* non-Latin group.
        others = {g: group_cls(h for h in _NONLATIN_GROUPS if h != g) for g in _NONLATIN_GROUPS}
        self.other_nonlatin: dict[str, re.Pattern[str]] = {
            g: re.compile(f"[{others[g]}]") for g in _NONLATIN_GROUPS
        }
        # Adjacent letters of two different non-Latin groups (a Greek omicron in a
        # Cyrillic word).
        self.nonlatin_switch = re.compile(
            "|".join(f"[{group_cls([g])}][{others[g]}]" for g in _NONLATIN_GROUPS)
        )


_PATTERNS_BMP = _Patterns(bmp_only=True)
_PATTERNS_FULL = _Patterns(bmp_only=False)


def _patterns_for(text: str) -> _Patterns:
    # UTF-16 is longer than the text exactly when the text has astral characters
    # (lone surrogates pass through unchanged); encoding is about 1 ns a character.
    if len(text.encode("utf-16-le", "surrogatepass")) == 2 * len(text):
        return _PATTERNS_BMP
    return _PATTERNS_FULL


# --------------------------------------------------------------------------- params


class InvisibleCharsParams(DetectorParams):
    """Tuning knobs for :class:`InvisibleCharsDetector` (the ``params:`` block)."""

    categories: tuple[Category, ...] = Field(
        default=_ALL_CATEGORIES,
        description="Invisible-character categories to report. 'variation_selector' "
        "covers both stray selectors and selector runs. Mixed-script words are "
        "controlled by check_confusables.",
    )
    zero_width_min_run: int = Field(
        default=2,
        ge=1,
        le=64,
        description="A run of at least this many non-legitimate invisible characters "
        "scores as a clear trigger wherever it is. 1 treats every stray zero-width "
        "character as a trigger.",
    )
    allow_leading_bom: bool = Field(
        default=True, description="U+FEFF at the very start of a segment is a byte-order mark."
    )
    allow_emoji_sequences: bool = Field(
        default=True,
        description="Emoji ZWJ sequences, VS-15/VS-16 presentation selectors, keycaps "
        "and RGI subdivision-flag tag sequences are legitimate.",
    )
    allow_script_joiners: bool = Field(
        default=True,
        description="ZWNJ/ZWJ in Arabic, Persian and Indic scripts, ZWSP in Thai/Lao/"
        "Khmer/Myanmar/Tibetan, script-specific format characters in their script, "
        "and a soft hyphen inside a word are legitimate (the last is reported low).",
    )
    allow_rtl_bidi: bool = Field(
        default=True,
        description="Single directional marks and balanced embeddings/isolates in text "
        "that contains right-to-left letters score low. Overrides always score high.",
    )
    check_confusables: bool = Field(
        default=True, description="Flag words that mix look-alike scripts (homoglyphs)."
    )
    max_spans: int = Field(
        default=32, ge=1, le=1000, description="Evidence spans kept per finding (highest first)."
    )
    analysis_budget: int = Field(
        default=4096,
        ge=16,
        le=10_000_000,
        description="Candidate clusters and mixed-script words judged one by one per "
        "sample. Past it, the rest of the segment is reported as 'invisible_flood' "
        "(score 0.6) instead of being scanned: this bounds the event-loop time a "
        "flood of legitimate-looking invisible characters can cost.",
    )

    @field_validator("categories")
    @classmethod
    def _sorted_unique(cls, value: tuple[Category, ...]) -> tuple[Category, ...]:
        return tuple(sorted(set(value)))


# --------------------------------------------------------------------------- helpers


class _Event(NamedTuple):
    weight: float
    reason: str
    segment: int
    start: int
    end: int


class _Seg:
    """Scratch state for scanning one segment."""

    __slots__ = (
        "bidi",
        "blocks",
        "budget",
        "events",
        "index",
        "pat",
        "rtl",
        "stopped",
        "strong",
        "text",
        "top",
    )

    def __init__(self, index: int, text: str, budget: int) -> None:
        self.index = index
        self.text = text
        self.pat = _patterns_for(text)
        self.budget = budget  # analyses left for the whole sample
        self.events: list[_Event] = []
        self.bidi: list[int] = []  # embeddings, overrides, isolates, PDF, PDI
        self.blocks: dict[str, dict[int, int]] = {}  # group -> context block -> letters
        self.rtl: bool | None = None  # does the segment contain RTL letters (lazy)
        self.strong = 0  # events with weight >= W_STRAY
        self.top = 0.0  # highest weight so far
        self.stopped = False  # saturated or out of budget: scan no further

    def has_rtl(self) -> bool:
        if self.rtl is None:
            self.rtl = self.pat.rtl.search(self.text) is not None
        return self.rtl

    def dominates(self, group: str, other: str, start: int, end: int) -> bool:
        """Do letters of ``group`` outnumber those of ``other`` around ``text[start:end]``?

        Counted over the word's ``_CONTEXT_BLOCK``-character blocks and one block
        each side, leaving the word itself out; ties (an empty context included)
        go to Latin. Block counts are cached, so a segment costs at most one
        regex pass per group however many words ask.
        """
        first = max(0, start // _CONTEXT_BLOCK - 1)
        last = min((len(self.text) - 1) // _CONTEXT_BLOCK, (end - 1) // _CONTEXT_BLOCK + 1)
        mine = self._letters(group, first, last, start, end)
        theirs = self._letters(other, first, last, start, end)
        return mine > theirs or (mine == theirs and group == G_LATIN)

    def _letters(self, group: str, first: int, last: int, start: int, end: int) -> int:
        """Letters of ``group`` in blocks ``first..last``, less those in ``text[start:end]``."""
        rx = self.pat.group_letter[group]
        text = self.text
        cache = self.blocks.setdefault(group, {})
        total = -len(rx.findall(text, start, end))
        for k in range(first, last + 1):
            n = cache.get(k)
            if n is None:
                lo = k * _CONTEXT_BLOCK
                n = cache[k] = len(rx.findall(text, lo, lo + _CONTEXT_BLOCK))
            total += n
        return total

    def spend(self, at: int) -> bool:
        """Take one unit of the analysis budget; on exhaustion report the rest."""
        if self.budget > 0:
            self.budget -= 1
            return True
        self.events.append(_Event(W_FLOOD, R_FLOOD, self.index, at, len(self.text)))
        self.stopped = True
        return False


def _is_wordish(ch: str) -> bool:
    return bool(ch) and (ch.isalnum() or unicodedata.category(ch)[0] == "M")


def _is_mark(ch: str) -> bool:
    return bool(ch) and unicodedata.category(ch)[0] == "M"


def _vs_base_ok(vs: int, base: str) -> bool:
    """Is ``base`` a character that a single variation selector ``vs`` may follow?"""
    if not base:
        return False
    cp = ord(base)
    if 0x180B <= vs <= 0x180F:
        return cp in _MONGOLIAN
    if vs >= 0xE0100:
        return cp in _HAN  # ideographic variation sequences
    if cp in _EMOJI or base in "0123456789#*":
        return True  # emoji presentation, keycaps, slashed zero
    cat = unicodedata.category(base)
    # Standardized variants exist for symbols and for letters of CJK, Myanmar,
    # Phags-pa, Manichaean, Egyptian, ... but not for alphabets such as Latin.
    return cat[0] == "S" or (cat == "Lo" and cp >= 0x1000)


def _script_context(prev: str, nxt: str, scripts: _Ranges) -> bool:
    """A joiner is legitimate when a neighbour is in ``scripts`` and neither
    neighbour is a letter of some other script (so it is not hiding in a Latin word)."""
    prev_in = scripts.has(prev)
    next_in = scripts.has(nxt)
    if not (prev_in or next_in):
        return False
    if not prev_in and _is_wordish(prev):
        return False
    return next_in or not _is_wordish(nxt)


# RGI emoji tag sequences (UTS #51): England, Scotland, Wales.
_RGI_FLAG_TAGS = frozenset({"gbeng", "gbsct", "gbwls"})
_FLAG_SPEC_RE = re.compile(r"[a-z]{2}[a-z0-9]{1,4}")


def _flag_tag_spec(text: str, i: int, j: int) -> str | None:
    """Decode ``text[i:j]`` (tags ending in CANCEL TAG) shaped like a subdivision flag."""
    if j - i < 2 or ord(text[j - 1]) != CANCEL_TAG:
        return None
    spec = "".join(chr(ord(text[k]) - 0xE0000) for k in range(i, j - 1))
    return spec if _FLAG_SPEC_RE.fullmatch(spec) else None


# --------------------------------------------------------------------------- detector


# Character classes a stream must not end on before the next chunk says what they are.
_HOLD_CATEGORIES = frozenset({"Cf", "Cc", "Mn", "Me", "Co", "Cn", "Cs"})


class InvisibleCharsDetector(InlineDetector[InvisibleCharsParams]):
    """Scores invisible, bidi, tag, variation-selector and homoglyph triggers.

    Score in [0, 1]: clear triggers >= 0.9, ambiguous strays about 0.6, legitimate
    uses 0 or below 0.3. Reason codes: see :data:`REASON_CODES`.
    """

    kind: ClassVar[str] = "invisible_chars"
    version: ClassVar[str] = "2"  # 2: single-script readings, text context, native endings
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.INPUT, Phase.OUTPUT})
    cost: ClassVar[Cost] = Cost.CHEAP
    Params: ClassVar[type[DetectorParams]] = InvisibleCharsParams

    def __init__(self, name: str, params: DetectorParams | None = None) -> None:
        super().__init__(name, params)
        self._enabled: frozenset[str] = frozenset(self.params.categories)

    def score_inline(self, batch: Sequence[Sample]) -> list[Finding]:
        return [self.score_sample(sample) for sample in batch]

    def stream_safe_prefix(self, text: str) -> int:
        """Everything but an unfinished tail may go out.

        Judgements here need only nearby characters, so a stream is held back only
        while it ends in a run of invisible characters (a zero-width or tag run
        split across chunks) or inside a word that mixes ASCII and other letters
        (a homoglyph word whose rest is still coming). Prose in any script, CJK
        included, is released at once.
        """
        end = len(text)
        while end and unicodedata.category(text[end - 1]) in _HOLD_CATEGORIES:
            end -= 1
        word_start = end
        while word_start and not text[word_start - 1].isspace() and end - word_start < 64:
            word_start -= 1
        word = text[word_start:end]
        if not word.isascii() and any(c.isascii() and c.isalpha() for c in word):
            return word_start
        return end

    def score_sample(self, sample: Sample) -> Finding:
        """Score one sample synchronously. Never raises: errors become error findings."""
        t0 = time.perf_counter()
        try:
            events: list[_Event] = []
            budget = self.params.analysis_budget
            for index, seg in enumerate(sample.segments):
                text = seg.text
                # Fast path: pure-ASCII text cannot contain any of our characters.
                if text.isascii():
                    continue
                if not isinstance(text, str):
                    raise TypeError("segment text is not a str")
                st = self._scan_segment(index, text, budget)
                events.extend(st.events)
                budget = st.budget
            return self._finding(events, time.perf_counter() - t0)
        except Exception as exc:  # the contract: never raise, report an error finding
            return Finding.failed(self.name, FindingStatus.ERROR, type(exc).__name__)

    # ----------------------------------------------------------------- scanning

    def _scan_segment(self, index: int, text: str, budget: int) -> _Seg:
        st = _Seg(index, text, budget)
        for m in st.pat.invisible.finditer(text):
            if not st.spend(m.start()):
                break
            self._scan_cluster(st, m.start(), m.end())
            if st.stopped:
                break
        if st.bidi:
            self._pair_bidi(st)
        if self.params.check_confusables and not st.stopped:
            self._scan_mixed_words(st)
        return st

    def _scan_cluster(self, st: _Seg, s: int, e: int) -> None:
        """Judge one maximal run ``text[s:e]`` of adjacent candidate characters."""
        text = st.text
        if e - s == 1:
            # Fast path for the common lone character (a ZWNJ in Persian, a VS-16
            # after an emoji, an LRM in Hebrew): return early when it is legitimate.
            cp = ord(text[s])
            c = _CLASS_OF[cp]
            if c == C_BIDI and cp not in _BIDI_MARKS:
                st.bidi.append(s)
                return
            if cp != SOFT_HYPHEN and self._char_legit(text, s, cp, c, s, e):
                return
        prev_vis = text[s - 1] if s > 0 else ""
        next_vis = text[e] if e < len(text) else ""
        in_word = _is_wordish(prev_vis) and _is_wordish(next_vis)

        # Pass 1: classify each character and decide whether it is legitimate here.
        classes: list[int] = []
        legit: list[bool] = []
        i = s
        while i < e:
            cp = ord(text[i])
            c = _CLASS_OF[cp]
            if c == C_TAG:
                # One tag sequence: up to and including a CANCEL TAG (UTS #51).
                j = i + 1
                while j < e and ord(text[j - 1]) != CANCEL_TAG:
                    if _CLASS_OF[ord(text[j])] != C_TAG:
                        break
                    j += 1
                ok = self._tag_run_legit(text, i, j)
                classes.extend([c] * (j - i))
                legit.extend([ok] * (j - i))
                i = j
                continue
            classes.append(c)
            legit.append(self._char_legit(text, i, cp, c, s, e))
            i += 1
        # Non-legitimate hidden characters in this cluster (bidi is judged apart).
        hidden = sum(1 for c, ok in zip(classes, legit, strict=True) if not ok and c != C_BIDI)

        # Pass 2: one event per maximal run of same-class, non-legitimate characters.
        n = e - s
        k = 0
        while k < n:
            c = classes[k]
            if c == C_BIDI:
                if ord(text[s + k]) in _BIDI_MARKS:
                    j = k + 1
                    while j < n and ord(text[s + j]) in _BIDI_MARKS:
                        j += 1
                    self._mark_event(st, s + k, s + j, prev_vis, next_vis, in_word)
                    k = j
                else:
                    # Embeddings, overrides and isolates are paired per segment later.
                    st.bidi.append(s + k)
                    k += 1
                continue
            soft_hyphen = c == C_FMT and ord(text[s + k]) == SOFT_HYPHEN
            if legit[k] and not soft_hyphen:
                k += 1
                continue
            j = k + 1
            while j < n and classes[j] == c and legit[j] == legit[k]:
                j += 1
            if c == C_TAG:
                self._tag_event(st, s + k, s + j)
            elif c == C_VS:
                self._vs_event(st, s + k, s + j, in_word)
            elif legit[k]:
                # A lone soft hyphen inside a word: a hyphenation hint, reported low.
                self._emit(st, W_SOFT_HYPHEN, R_INVISIBLE_FORMAT, s + k, s + j)
            else:
                reason = R_ZERO_WIDTH if c == C_ZW else R_INVISIBLE_FORMAT
                self._emit(st, self._run_weight(hidden, in_word), reason, s + k, s + j)
            k = j

    def _run_weight(self, hidden: int, in_word: bool) -> float:
        if hidden >= _STEGO_RUN:
            return W_STEGO
        if hidden >= self.params.zero_width_min_run:
            return W_RUN
        return W_IN_WORD if in_word else W_STRAY

    def _char_legit(self, text: str, i: int, cp: int, c: int, s: int, e: int) -> bool:
        """Is the candidate ``text[i]`` legitimate in its immediate context?"""
        p = self.params
        prev = text[i - 1] if i > 0 else ""
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if c == C_ZW:
            if cp == BOM and i == 0 and p.allow_leading_bom:
                return True
            alone_left = i == s or ord(prev) not in _ZERO_WIDTH
            alone_right = i + 1 >= e or ord(nxt) not in _ZERO_WIDTH
            if not (alone_left and alone_right):
                return False
            if cp == ZWJ and p.allow_emoji_sequences:
                # Emoji ZWJ sequence; the left emoji may carry VS-15/VS-16.
                before = text[i - 2] if i >= 2 and ord(prev) in (VS15, VS16) else prev
                if _EMOJI.has(before) and _EMOJI.has(nxt):
                    return True
            if p.allow_script_joiners:
                if cp in (ZWNJ, ZWJ):
                    return _script_context(prev, nxt, _JOINING_SCRIPTS)
                if cp == ZWSP:
                    return _script_context(prev, nxt, _ZWSP_SCRIPTS)
                if cp == MVS:
                    return _script_context(prev, nxt, _MONGOLIAN)
            return False
        if c == C_VS:
            if 0xFE00 <= cp <= 0xFE0F and _EMOJI.has(prev) and not p.allow_emoji_sequences:
                return False
            alone = not (i > s and _CLASS_OF.get(ord(prev)) == C_VS) and not (
                i + 1 < e and _CLASS_OF.get(ord(nxt)) == C_VS
            )
            return alone and _vs_base_ok(cp, prev)
        if c == C_FMT and p.allow_script_joiners:
            if cp == SOFT_HYPHEN:
                # Only a lone hyphenation hint between letters (still reported, low).
                return e - s == 1 and _is_wordish(prev) and _is_wordish(nxt)
            if cp == CGJ:
                return _is_mark(prev) or _is_mark(nxt)
            return _script_format_ok(cp, prev, nxt)
        return False

    def _tag_run_legit(self, text: str, i: int, j: int) -> bool:
        """An RGI subdivision flag: U+1F3F4, tag letters, CANCEL TAG (UTS #51)."""
        if not self.params.allow_emoji_sequences or i == 0 or ord(text[i - 1]) != WAVING_BLACK_FLAG:
            return False
        return _flag_tag_spec(text, i, j) in _RGI_FLAG_TAGS

    def _tag_event(self, st: _Seg, i: int, j: int) -> None:
        text = st.text
        weight = W_STEGO if j - i >= _STEGO_RUN else W_TAG
        if (
            self.params.allow_emoji_sequences
            and i > 0
            and ord(text[i - 1]) == WAVING_BLACK_FLAG
            and _flag_tag_spec(text, i, j) is not None
        ):
            weight = W_TAG_ODD_FLAG  # a well-formed subdivision flag, just not RGI
        self._emit(st, weight, R_TAGS, i, j)

    def _vs_event(self, st: _Seg, i: int, j: int, in_word: bool) -> None:
        text = st.text
        n = j - i
        if n == 1:
            self._emit(st, W_IN_WORD if in_word else W_VS_STRAY, R_VS, i, j)
            return
        if n >= _STEGO_RUN:
            weight = W_STEGO
        elif (
            n == 2
            and ord(text[i]) in (VS15, VS16)
            and ord(text[i + 1]) in (VS15, VS16)
            and _vs_base_ok(VS16, text[i - 1] if i > 0 else "")
        ):
            weight = W_VS_DOUBLE  # doubled presentation selector: a copy/paste glitch
        else:
            weight = W_RUN
        self._emit(st, weight, R_VS_RUN, i, j)

    def _mark_event(
        self,
        st: _Seg,
        i: int,
        j: int,
        prev_vis: str,
        next_vis: str,
        in_word: bool,
    ) -> None:
        """LRM / RLM / ALM: normal in RTL text, a hidden character inside an LTR word."""
        single = j - i == 1
        rtl_neighbour = _RTL.has(prev_vis) or _RTL.has(next_vis)
        if single and self.params.allow_rtl_bidi and st.has_rtl() and (not in_word or rtl_neighbour):
            weight = W_MARK_RTL
        elif in_word or (not single and not st.has_rtl()):
            weight = W_IN_WORD
        else:
            weight = W_STRAY
        self._emit(st, weight, R_BIDI, i, j)

    def _pair_bidi(self, st: _Seg) -> None:
        """Pair embeddings/overrides with PDF and isolates with PDI (UAX #9, simplified).

        Overrides always score high (the Trojan Source reordering primitive); an
        embedding or isolate scores low only when balanced and wrapping RTL text.
        """
        text = st.text
        embeds: list[int] = []
        isolates: list[int] = []
        for pos in st.bidi:
            cp = ord(text[pos])
            if cp in (LRO, RLO):
                self._emit(st, W_OVERRIDE, R_BIDI, pos, pos + 1)
                embeds.append(pos)
            elif cp in (LRE, RLE):
                embeds.append(pos)
            elif cp in _BIDI_OPEN_ISOLATE:
                isolates.append(pos)
            elif cp == PDF:
                if not embeds:
                    self._emit(st, W_BIDI, R_BIDI, pos, pos + 1)
                else:
                    opener = embeds.pop()
                    if ord(text[opener]) in (LRE, RLE):
                        self._pair_event(st, opener, pos)
            elif cp == PDI:
                if not isolates:
                    self._emit(st, W_BIDI, R_BIDI, pos, pos + 1)
                else:
                    self._pair_event(st, isolates.pop(), pos)
        for pos in embeds:
            if ord(text[pos]) in (LRE, RLE):  # unclosed overrides were already reported
                self._emit(st, W_BIDI, R_BIDI, pos, pos + 1)
        for pos in isolates:
            self._emit(st, W_BIDI, R_BIDI, pos, pos + 1)

    def _pair_event(self, st: _Seg, opener: int, closer: int) -> None:
        rtl_inside = st.pat.rtl.search(st.text, opener + 1, closer) is not None
        weight = W_BIDI_RTL if self.params.allow_rtl_bidi and rtl_inside else W_BIDI
        self._emit(st, weight, R_BIDI, opener, opener + 1)
        self._emit(st, weight, R_BIDI, closer, closer + 1)

    def _scan_mixed_words(self, st: _Seg) -> None:
        """Find words mixing look-alike scripts; cheap presence checks first."""
        text = st.text
        pat = st.pat
        first = pat.nonlatin.search(text)
        if first is None:
            return  # mixing needs a letter of a non-Latin group
        seen: set[int] = set()
        if pat.latin.search(text) is not None:
            # Latin next to non-Latin: the shape of nearly every homoglyph spoof.
            for m in pat.latin_switch.finditer(text):
                self._check_word(st, m.start(), seen)
                if st.stopped:
                    return
        # Two different non-Latin groups (e.g. a Greek omicron in a Cyrillic word):
        # visit the words holding letters of groups other than the first one seen,
        # which are few in real text; fall back to one regex pass if they are not.
        group = _group_of(first.group())
        other = pat.other_nonlatin.get(group) if group is not None else None
        pos = 0
        if other is not None:
            for _ in range(_MINORITY_WORD_LIMIT):
                hit = other.search(text, pos)
                if hit is None:
                    return
                pos = self._check_word(st, hit.start(), seen)
                if st.stopped:
                    return
        for m in pat.nonlatin_switch.finditer(text, pos):
            self._check_word(st, m.start(), seen)
            if st.stopped:
                return

    def _check_word(self, st: _Seg, at: int, seen: set[int]) -> int:
        """Analyse the word around ``text[at]`` once; return the index after it."""
        text = st.text
        start = at
        while start > 0 and text[start - 1].isalnum():
            start -= 1
        w = _WORD_RE.match(text, start)
        end = w.end() if w is not None else at + 1
        if start not in seen and st.spend(start):
            seen.add(start)
            word = text[start:end]
            if _mixed_word_is_confusable(word, lambda g, o: st.dominates(g, o, start, end)):
                self._emit(st, W_MIXED, R_MIXED, start, end, mixed=True)
        return max(end, at + 1)

    # ----------------------------------------------------------------- output

    def _emit(
        self, st: _Seg, weight: float, reason: str, start: int, end: int, *, mixed: bool = False
    ) -> None:
        if not mixed and (R_VS if reason == R_VS_RUN else reason) not in self._enabled:
            return
        events = st.events
        if len(events) >= _SEGMENT_EVENT_CAP and weight < W_STRAY:
            return  # bound memory on floods of low-weight (legitimate-looking) characters
        events.append(_Event(weight, reason, st.index, start, end))
        st.top = max(st.top, weight)
        if weight >= W_STRAY:
            st.strong += 1
        if len(events) >= _SEGMENT_EVENT_CAP and (st.top >= W_IN_WORD or st.strong >= _MANY_EVENTS):
            # Already a clear trigger with a full evidence list: scanning the rest
            # of an adversarially long segment would only burn the event loop.
            st.stopped = True

    def _finding(self, events: list[_Event], duration: float) -> Finding:
        if not events:
            return Finding(detector=self.name, score=0.0, duration_seconds=duration)
        score = max(e.weight for e in events)
        if sum(1 for e in events if e.weight >= W_STRAY) >= _MANY_EVENTS:
            # Many scattered invisibles (e.g. zero-width bits between words).
            score = max(score, W_MANY)
        keep = sorted(events, key=lambda e: (-e.weight, e.segment, e.start))[: self.params.max_spans]
        spans = tuple(
            Span(segment=e.segment, start=e.start, end=e.end, reason=e.reason)
            for e in sorted(keep, key=lambda e: (e.segment, e.start, e.end, e.reason))
        )
        return Finding(
            detector=self.name,
            score=min(1.0, max(0.0, score)),
            reasons=tuple(sorted({e.reason for e in events})),
            spans=spans,
            duration_seconds=duration,
        )
