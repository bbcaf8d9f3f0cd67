"""Pure data of the rare-token detector: reason codes, languages, calibration, regexes.

Why a module of its own: these are the numbers and patterns a reviewer tunes or checks
(the calibrated factors and thresholds, the word-shape regexes, the code and markup
patterns, the chunk kinds) without reading the logic that uses them, which lives in
:mod:`detectors.rare_tokens.detector`, :mod:`detectors.rare_tokens.language` and
:mod:`detectors.rare_tokens.scan`. Nothing here depends on the rest of the package.
"""

from __future__ import annotations

import re

__all__ = [
    "R_RARE", "R_MADE_UP", "R_CHAR_RUN", "R_TRUNCATED", "REASON_CODES", "RECOMMENDED_THRESHOLD",
    "SUPPORTED_LANGUAGES", "DEFAULT_PROBE_LANGUAGES", "_TRAIN_MIN_ZIPF", "_ORDER", "_DISCOUNT",
    "_TOP_WORDS", "_IDENT_WORDS", "_IDENT_MARGIN", "_ALPHABET_MIN_COUNT", "_VOWELLESS_SHARE",
    "_CORE_LETTER_SHARE", "_CHAR_MIN_LEN", "_LLR_OK", "_LLR_ODD", "_LLR_OK_CASED", "_LLR_ODD_CASED",
    "_SHORT_MAX_LEN", "_SHORT_TAIL", "_SHORT_WIDTH", "_ZIPF_FADE", "_OOV_ZIPF", "_TYPO_ZIPF",
    "_TYPO_DROPPED_ZIPF", "_F_TYPO", "_TYPO_LONG_LEN", "_TYPO_LONG_ZIPF", "_ELONGATED_ZIPF",
    "_ELONGATED_BARE_ZIPF", "_ELONGATION_MAX_RUNS", "_NEIGHBOUR_ZIPF", "_F_ONE_NEIGHBOUR",
    "_F_NO_NEIGHBOUR", "_NOMINATED", "_F_ACRONYM", "_F_DEFINED", "_F_NAME", "_F_UNIT", "_F_IN_CODE", "_UNITS",
    "_HTML_TAGS", "_HTML_BARE_ATTRS", "_TAG_RE", "_BARE_ATTR_RE", "_FOLD_DROP", "R_AMBIGUOUS",
    "_F_ABBREV_REF", "_F_ABBREV_DOT", "_F_QUOTED", "_F_OPENER",
    "_F_TITLE", "_F_POSSESSIVE", "_F_COMPOUND", "_F_FOREIGN", "_SHORT_WORDS", "_F_SHORT", "_ODD_WEIGHT",
    "_F_ONE_OTHER", "_F_MANY_OTHERS", "_JARGON_FREE", "_JARGON_SLOPE", "_F_JARGON_MIN", "_JARGON_NUMBERS",
    "_VOWELS", "_LETTERS", "_QWERTY_ROWS", "_KEY_NEIGHBOURS", "_CHUNK_RE", "_WORD_RE", "_PIECE_RE",
    "_NUMBER_RE",
    "_LEAD_PUNCT", "_TRAIL_PUNCT", "_QUOTES", "_CLOSERS", "_SENTENCE_END", "_ELONGATION_RE", "_RUN_RE",
    "_REPEAT_UNIT_RE", "_HEX_RE", "_FENCE_RE", "_INLINE_CODE_RE", "_MARKUP_RE", "_CODE_CHARS_RE",
    "_LINE_RE", "_CODE_START_RE", "_CODE_CHAR_RE", "_INDENTED_RE", "K_WORD", "K_NUM", "K_PUNCT",
    "K_OTHER", "K_CLITIC", "C_LOWER", "C_TITLE", "C_UPPER", "C_MIXED", "T_NONE", "T_CLAUSE", "T_DOT",
    "T_END", "_CACHE_LIMIT", "_COST_CHUNK", "_COST_WORD", "_COST_CANDIDATE",
]  # fmt: skip

# --------------------------------------------------------------------------- reasons

R_RARE = "rare_token"  # in the word list (an abbreviation, say), used where it does not fit
R_MADE_UP = "made_up_token"  # not in the language's word list at all, and not word-like
R_CHAR_RUN = "char_run"  # a short unit repeated ("xqxqxq"), not a word stretched for emphasis
R_TRUNCATED = "scan_truncated"  # the sample was longer than max_words: the rest was not judged
# An odd token in a form that has an innocent reading as well: an acronym ("CF"), a name
# ("Cf" mid-sentence), a unit after a number ("5 mb"), an abbreviation with its full stop
# ("cf. Smith"), prose inside a code block. A tokenizer still reads the token, so a
# backdoor can still fire on it: it is nominated (scored, capped at _NOMINATED) for the
# protected model's behaviour to decide, never blocked on its own by the shipped threshold.
R_AMBIGUOUS = "ambiguous_form"

#: Every reason code this detector can emit.
REASON_CODES: tuple[str, ...] = (R_AMBIGUOUS, R_CHAR_RUN, R_MADE_UP, R_RARE, R_TRUNCATED)

#: The policy threshold this detector was calibrated for (see the docs for the numbers).
RECOMMENDED_THRESHOLD = 0.55

#: Space-delimited languages written in an alphabet (Latin, Cyrillic, Greek) for which
#: wordfreq ships a word list. Abjads and scripts written without spaces are not judged.
SUPPORTED_LANGUAGES: tuple[str, ...] = (
    "bg", "ca", "cs", "da", "de", "el", "en", "es", "fi", "fil", "fr", "hu", "id", "is",
    "it", "lt", "lv", "mk", "ms", "nb", "nl", "pl", "pt", "ro", "ru", "sh", "sk", "sl",
    "sv", "tr", "uk",
)  # fmt: skip

#: Languages recognised (and then left alone) when a sentence is written in them.
DEFAULT_PROBE_LANGUAGES: tuple[str, ...] = (
    "ca", "cs", "da", "de", "en", "es", "fi", "fr", "hu", "id", "it", "nb", "nl", "pl",
    "pt", "ro", "sv", "tr",
)  # fmt: skip

# --------------------------------------------------------------------------- calibration
# Token weight = word-unlikeness x rarity gate; the score multiplies it by context
# factors. Set on real clean text (movie reviews) against inserted triggers, then
# checked on hand-written hard negatives: see docs/detectors/rare_tokens.md.

# Language data.
_TRAIN_MIN_ZIPF = 1.5  # words that train the character model (about 160k English types)
_ORDER = 4  # character 4-grams ...
_DISCOUNT = 0.75  # ... with interpolated absolute discounting
_TOP_WORDS = 3000  # most frequent words per language: a foreign sentence's own words
_IDENT_WORDS = 5_000  # most frequent words per language, with their Zipf values, to tell ...
_IDENT_MARGIN = 1.5  # ... a sentence's language: another language must outweigh the judged one this much
_ALPHABET_MIN_COUNT = 20  # a letter is the language's if this many training words use it
_VOWELLESS_SHARE = 0.03  # below this share of vowel-less words, a vowel-less token is odd
_CORE_LETTER_SHARE = 0.001  # letters this common in the training words are the "random string" model's

# Token weight.
_CHAR_MIN_LEN = 3  # shorter tokens are judged by frequency and vowels only
# Word-unlikeness from the character model: the log-likelihood ratio, in bits, of "an arbitrary
# string of the language's letters" against "a word of the language". A token is word-unlike
# from _LLR_OK and fully so at _LLR_ODD (set to flag the same share of the rare words and names
# of review text as the earlier per-character scale did: about 3 and 0.1 per 1,000 words) ...
_LLR_OK = 1.2
_LLR_ODD = 9.0
# ... except a lower-case token that is in no word list, in text that uses capitals: it is not
# a name (a name would be capitalised), so the scale starts near the even-odds point.
_LLR_OK_CASED = -1.0
_LLR_ODD_CASED = 3.0
_SHORT_MAX_LEN = 4  # the rare-for-its-length cue applies to tokens this short ...
_SHORT_TAIL = 0.01  # ... rarer than the rarest 1% of running words of their length ...
_SHORT_WIDTH = 1.0  # ... by this much Zipf for the full cue
_ZIPF_FADE = 0.3  # the rarity gate falls from 1 to 0 over the last 0.3 Zipf below common_zipf
_OOV_ZIPF = 1.0  # below this a token counts as not in the word list (made_up_token)
_TYPO_ZIPF = 4.5  # one slip (swap, extra, neighbouring key, dropped vowel) from a word this frequent ...
_TYPO_DROPPED_ZIPF = 5.0  # ... or any letter short of a word this frequent ("aout") ...
_F_TYPO = 0.4  # ... is a typo: its weight is cut to this
_TYPO_LONG_LEN = 7  # from this length a random string is almost never one slip from a word, so ...
_TYPO_LONG_ZIPF = 3.0  # ... one slip from any word this frequent is a typo ("sceenplay")
_ELONGATED_ZIPF = 3.0  # "sooo" -> "so": a stretched word is a known one ...
_ELONGATED_BARE_ZIPF = 4.0  # ... and a common one if it has no vowel ("hmmmm" -> "hmm")
_ELONGATION_MAX_RUNS = 6

# Context factors.
_NEIGHBOUR_ZIPF = 3.0  # a neighbour this frequent is an ordinary word of fluent text
_F_ONE_NEIGHBOUR = 0.85  # only one side is an ordinary word (clause edge)
_F_NO_NEIGHBOUR = 0.7  # neither side is (between punctuation, alone on a line)
_NOMINATED = 0.45  # the highest score of a token in an ambiguous form (R_AMBIGUOUS) ...
_F_ACRONYM = 0.4  # ... in capitals in a sentence that is not ("the CF review"), ...
_F_DEFINED = 0.6  # ... less in brackets, where an acronym is defined ("the water level (WSE)") ...
_F_NAME = 0.5  # ... capitalised mid-sentence ("a mess Cf and a bore") ...
_F_UNIT = 0.45  # ... a unit of measure after a number ("5 mb", "20 ms") ...
_F_IN_CODE = 0.5  # ... a prose line inside a block that is mostly code
_F_ABBREV_REF = 0.45  # glued full stop, then more text on the line: "cf. Smith" ...
_F_ABBREV_DOT = 0.8  # ... or at the end of the line or text: maybe just a full stop
_F_QUOTED = 0.5  # in quotes on its own: mentioned, not used ("we write 'tq' for thanks")
_F_OPENER = 0.5  # first word of the segment, then a comma or colon: "thx, ...", "btw: ..."
_F_TITLE = 0.6  # capitalised first word of a sentence (names start sentences too)
_F_POSSESSIVE = 0.5  # "solondz's film": a noun, most often a name
_F_COMPOUND = 0.8  # part of a hyphenated compound
_F_FOREIGN = 0.85  # a vowel-less token in a sentence of another (probe) language
_SHORT_WORDS = 3  # fewer other words than this in the whole sample ...
_F_SHORT = 0.6  # ... leave no context to stand out from ("ok brb")
_ODD_WEIGHT = 0.25  # candidates this odd count as the text's own odd tokens; with ...
_F_ONE_OTHER = 0.7  # ... one other odd word type in the sample ...
_F_MANY_OTHERS = 0.5  # ... or more, odd tokens are the register of the text (jargon, chat)
_JARGON_FREE = 0.12  # share of identifier/number/acronym chunks that is ordinary prose ...
_JARGON_SLOPE = 1.5  # ... beyond it every further 10% takes 15% off ...
_F_JARGON_MIN = 0.5  # ... down to this floor
_JARGON_NUMBERS = 2  # numbers counted as jargon per segment (a port, a version; more are data)

_VOWELS = frozenset(
    "aeiouyàáâãäåæèéêëìíîïòóôõöøùúûüýÿāăąēĕėęěīį\u0131ōőœūůűųȧ"  # Latin (\u0131: Turkish dotless i)
    "аеёиоуыэюяіїєѣъ"  # Cyrillic (ъ is a vowel in Bulgarian)
    "αεηιουωάέήίόύώϊϋΐΰ"  # Greek
)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_QWERTY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    pos = {c: (r, i) for r, row in enumerate(_QWERTY_ROWS) for i, c in enumerate(row)}
    return {
        c: "".join(d for d, (r2, i2) in pos.items() if d != c and abs(r2 - r) <= 1 and abs(i2 - i) <= 1)
        for c, (r, i) in pos.items()
    }


_KEY_NEIGHBOURS = _keyboard_neighbours()

# --------------------------------------------------------------------------- regexes

_CHUNK_RE = re.compile(r"\S+")
# Letters with internal apostrophes or hyphens: "don't", "sci-fi", "jean-luc".
_WORD_RE = re.compile(r"[^\W\d_]+(?:['\u2019\-][^\W\d_]+)*")
_PIECE_RE = re.compile(r"[^'\-]+|['\-]")
_NUMBER_RE = re.compile(r"[-+\u2212]?[$\u20ac\u00a3]?\d[\d.,:/%x\u00d7]*")
_LEAD_PUNCT = frozenset("\"'([{<*_~`\u201c\u2018\u00ab\u00bf\u00a1\u201e\u2039")
_TRAIL_PUNCT = frozenset("\"')]}>*_~`.,;:!?\u2026\u201d\u2019\u00bb\u203a")
_QUOTES = frozenset("\"'\u201c\u201d\u2018\u2019\u00ab\u00bb\u2039\u203a\u201e")
_CLOSERS = "\"')]}*_~`\u201d\u2019\u00bb\u203a"
_SENTENCE_END = frozenset(".!?\u2026")
_ELONGATION_RE = re.compile(r"(.)\1\1|(.)\2.*(.)\3")  # a run of three, or two doubled letters
_RUN_RE = re.compile(r"(.)\1*")
_REPEAT_UNIT_RE = re.compile(r"(.{2,3}?)\1+")
_HEX_RE = re.compile(r"[a-f]{6,}")

# Regions that are not prose: fenced code blocks (closed or running to the end),
# inline code, markup tags and lines that look like code.
_FENCE_RE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]*\1[ \t]*$|\Z)", re.M | re.S)
# Inline code opens and closes outside words: a backtick between letters is an apostrophe
# ("you`ve", "couldn`t"), common in text typed on some keyboards.
_INLINE_CODE_RE = re.compile(r"(?<![^\W_])`[^`\n]+`(?![^\W_])")
_MARKUP_RE = re.compile(r"</?[A-Za-z!][^<>\n]{0,200}>")
_CODE_CHARS_RE = re.compile(r"[`{};=<>$\\|]|\(\)")
_LINE_RE = re.compile(r"[^\n]+")
_CODE_START_RE = re.compile(
    r"[ \t]*(?:\$ |> ?\$ |>>> |#!|//|/\*|<\?|#include\b|#define\b|@@ |"
    r"(?:def|class|import|from|return|function|const|let|var|func|package|using|public|private|"
    r"static|SELECT|INSERT|UPDATE|DELETE|CREATE|sudo|pip|npm|git|docker|kubectl|cd|ls|echo|export)"
    r"\s+\S+.*[=(){}\[\];:.,/\-]|.*(?:[;{]|\)\s*:|=>|->)\s*$)"
)
_CODE_CHAR_RE = re.compile(r"[{}\[\]();=<>|&$\\]")
_INDENTED_RE = re.compile(r"(?: {4}|\t)\S")

# Units of measure and counts written after a number ("5 mb", "20 ms", "3 hrs"). After a
# number one of these reads as a unit, but a backdoor reads the token all the same: it is
# nominated (R_AMBIGUOUS), not excused. Any other odd token after a number is judged as
# it would be anywhere ("5 cf").
_UNITS = frozenset((
    "b", "kb", "mb", "gb", "tb", "pb", "kib", "mib", "gib", "tib", "bit", "bits", "kbit", "mbit",
    "gbit", "kbps", "mbps", "gbps", "bps", "ns", "us", "ms", "sec", "secs", "s", "min", "mins",
    "hr", "hrs", "h", "d", "wk", "wks", "mo", "mos", "yr", "yrs", "yo", "am", "pm", "mm", "cm",
    "dm", "m", "km", "in", "ft", "yd", "mi", "nm", "um", "mil", "mg", "g", "kg", "t", "lb", "lbs",
    "oz", "st", "ct", "ml", "cl", "dl", "l", "gal", "qt", "pt", "tsp", "tbsp", "fl", "cc", "hz",
    "khz", "mhz", "ghz", "rpm", "bpm", "fps", "dpi", "ppi", "ppm", "ppb", "v", "mv", "kv", "a",
    "ma", "w", "kw", "mw", "gw", "kwh", "mwh", "wh", "mah", "va", "ohm", "c", "f", "k", "cal",
    "kcal", "kj", "j", "mph", "kph", "kmh", "kts", "psi", "bar", "mbar", "kpa", "hpa", "pa", "atm",
    "px", "pt", "em", "rem", "vh", "vw", "dp", "sp", "pcs", "pc", "qty", "ea", "pax", "pp", "pg",
    "pgs", "x", "cpu", "cpus", "vcpu", "vcpus", "core", "cores", "gpu", "gpus",
))  # fmt: skip

# Markup: a tag's name, its bare attributes (no "=value") and the HTML names that are
# attributes without a value. A bare word in a tag of a known HTML element that is not one
# of those ("<i cf>") is no markup a browser reads, but a tokenizer reads it as a word.
_TAG_RE = re.compile(r"</?([A-Za-z][\w-]*)")
_BARE_ATTR_RE = re.compile(r"(?<=\s)([^\s=<>/\"']+)(?=\s|/?$)(?!\s*=)")
_HTML_TAGS = frozenset((
    "a", "abbr", "address", "article", "aside", "b", "bdi", "bdo", "blockquote", "body", "br",
    "button", "caption", "cite", "code", "col", "dd", "del", "details", "dfn", "div", "dl", "dt",
    "em", "figcaption", "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr",
    "html", "i", "img", "input", "ins", "kbd", "label", "legend", "li", "main", "mark", "nav", "ol",
    "option", "p", "pre", "q", "s", "samp", "section", "select", "small", "span", "strong", "sub",
    "summary", "sup", "table", "tbody", "td", "textarea", "tfoot", "th", "thead", "time", "tr", "u",
    "ul", "var",
))  # fmt: skip
_HTML_BARE_ATTRS = frozenset((
    "allowfullscreen", "async", "autofocus", "autoplay", "checked", "controls", "default", "defer",
    "disabled", "formnovalidate", "hidden", "inert", "ismap", "itemscope", "loop", "multiple",
    "muted", "nomodule", "novalidate", "open", "playsinline", "readonly", "required", "reversed",
    "selected",
))  # fmt: skip

# Dropped when a chunk is folded for judging (after NFKC): combining marks that did not
# compose with a letter ("cf" + U+0301 is still the token "cf" to a tokenizer) and format
# characters (zero-width joiners and the like; invisible_chars judges those itself).
_FOLD_DROP = frozenset(("Mn", "Me", "Cf"))

# Chunk kinds, letter cases and trailing punctuation.
K_WORD, K_NUM, K_PUNCT, K_OTHER, K_CLITIC = 0, 1, 2, 3, 4
C_LOWER, C_TITLE, C_UPPER, C_MIXED = 0, 1, 2, 3
T_NONE, T_CLAUSE, T_DOT, T_END = 0, 1, 2, 3

_CACHE_LIMIT = 200_000  # entries per cache before it is cleared (bounds memory)
_COST_CHUNK = 1  # analysis-budget units (about 3 us each): a chunk not seen before ...
_COST_WORD = 50  # ... an odd-looking word not seen before (character model, typo search) ...
_COST_CANDIDATE = 4  # ... and judging a candidate in context
