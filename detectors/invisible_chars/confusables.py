"""Homoglyph data and the mixed-script word test of the invisible-character detector.

Why a module of its own: deciding whether a word that mixes scripts is a spoof is a
self-contained problem (Unicode TS #39 in miniature) with its own data, the script
groups and the look-alike skeleton, and its own rules (single-script readings,
Greek scientific symbols, native endings on Latin loanwords). It needs nothing from
the rest of the detector: the caller passes in how the surrounding text is written
(``dominates``), so the rules can be tested on words alone.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable

__all__ = [
    "G_LATIN", "G_GREEK", "G_CYRILLIC", "G_ARMENIAN", "G_COPTIC", "G_CHEROKEE", "G_LISU",
    "G_FULLWIDTH", "G_MATH", "_GROUP_RANGES", "_ALWAYS_CONFUSABLE", "_group_of",
    "_SKELETON", "_TARGETS", "_CONTEXT_BLOCK", "_NONLATIN_GROUPS", "_WORD_RE",
    "_mixed_word_is_confusable",
]  # fmt: skip

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
