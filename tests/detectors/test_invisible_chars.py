"""Tests for detectors.invisible_chars.detector.

The main table is tests/detectors/fixtures/invisible_chars_cases.jsonl (hand-written,
provenance in its first line). Non-ASCII characters are written as escapes here
too, so look-alike letters are visible in review.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pydantic import ValidationError

from detectors import load_detector_class
from detectors.base import Cost, FindingStatus, Phase, Sample, Segment
from detectors.invisible_chars.detector import (
    G_CYRILLIC,
    G_GREEK,
    G_LATIN,
    REASON_CODES,
    InvisibleCharsDetector,
    InvisibleCharsParams,
    _mixed_word_is_confusable,
    _Seg,
)

FIXTURE = Path(__file__).parent / "fixtures" / "invisible_chars_cases.jsonl"

ZWSP, ZWNJ, ZWJ, BOM, LRM = "\u200b", "\u200c", "\u200d", "\ufeff", "\u200e"
VS16 = "\ufe0f"
BLACK_FLAG, CANCEL_TAG = "\U0001f3f4", "\U000e007f"
CYR_A = "\u0430"  # CYRILLIC SMALL LETTER A
FAMILY = "\U0001f468" + ZWJ + "\U0001f469" + ZWJ + "\U0001f467"
PERSIAN_ZWNJ = "\u0645\u06cc" + ZWNJ + "\u062e\u0648\u0627\u0647\u0645"
HEBREW = "\u05e9\u05dc\u05d5\u05dd"
RUSSIAN = (  # "Ya vchera kupil telefon"
    "\u042f \u0432\u0447\u0435\u0440\u0430 \u043a\u0443\u043f\u0438\u043b "
    "\u0442\u0435\u043b\u0435\u0444\u043e\u043d"
)
GREEK = (
    "\u0398\u03ad\u03bb\u03c9 \u03bd\u03b1 \u03b1\u03b3\u03bf\u03c1\u03ac\u03c3\u03c9"  # "Thelo na agoraso"
)


def tags(s: str) -> str:
    """Encode ASCII as Unicode tag characters (the 'ASCII smuggling' alphabet)."""
    return "".join(chr(0xE0000 + ord(c)) for c in s)


def sample(*texts: str, rid: str = "r1") -> Sample:
    return Sample(
        request_id=rid,
        phase=Phase.INPUT,
        route="test",
        segments=tuple(Segment(role="user", text=t) for t in texts),
    )


def make(**params: Any) -> InvisibleCharsDetector:
    return InvisibleCharsDetector("ic", InvisibleCharsParams(**params))


DET = InvisibleCharsDetector("invisible_chars")


def score_text(text: str, det: InvisibleCharsDetector = DET) -> tuple[float, tuple[str, ...]]:
    f = det.score_sample(sample(text))
    assert f.status is FindingStatus.OK, f.error
    return f.score, f.reasons


def load_cases() -> list[dict[str, Any]]:
    cases = []
    for line in FIXTURE.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "_provenance" not in record:
            cases.append(record)
    return cases


CASES = load_cases()


# ---------------------------------------------------------------- corpus table


def test_corpus_is_balanced_and_well_formed() -> None:
    kinds = {c["expect"] for c in CASES}
    assert kinds == {"trigger", "suspicious", "legit"}
    assert len({c["id"] for c in CASES}) == len(CASES)
    assert sum(c["expect"] == "legit" for c in CASES) >= 40
    assert sum(c["expect"] == "trigger" for c in CASES) >= 40
    for c in CASES:
        assert set(c["reasons"]) <= set(REASON_CODES), c["id"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
async def test_corpus_case(case: dict[str, Any]) -> None:
    [finding] = await DET.score([sample(case["text"])])
    assert finding.status is FindingStatus.OK
    assert finding.detector == "invisible_chars"
    reasons = set(finding.reasons)
    if case["expect"] == "trigger":
        assert finding.score >= 0.9, (finding.score, finding.reasons)
        assert set(case["reasons"]) <= reasons
    elif case["expect"] == "suspicious":
        assert finding.score >= 0.5, (finding.score, finding.reasons)
        assert set(case["reasons"]) <= reasons
    else:
        assert finding.score < 0.3, (finding.score, finding.reasons)
        assert reasons <= set(case["reasons"]), finding.reasons


# ---------------------------------------------------------------- spans


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pay" + ZWSP + "pal", [(0, 3, 4, "zero_width")]),
        ("re" + ZWSP * 3 + "view", [(0, 2, 5, "zero_width")]),
        (BOM + "ok " + ZWSP + ZWSP, [(0, 4, 6, "zero_width")]),  # the leading BOM is not evidence
        ("abc\u202edcb", [(0, 3, 4, "bidi_control")]),
        ("hi" + tags("cat"), [(0, 2, 5, "tag_chars")]),
        ("Log in to p" + CYR_A + "ypal now", [(0, 10, 16, "mixed_script")]),
        ("\U0001f600" + "\U000e0100" * 9, [(0, 1, 10, "variation_selector_run")]),
        ("x\u00ady", [(0, 1, 2, "invisible_format")]),
        ("a" + LRM + "b", [(0, 1, 2, "bidi_control")]),
        ("ab\u2067cd", [(0, 2, 3, "bidi_control")]),
    ],
)
def test_span_offsets(text: str, expected: list[tuple[int, int, int, str]]) -> None:
    f = DET.score_sample(sample(text))
    assert [(s.segment, s.start, s.end, s.reason) for s in f.spans] == expected
    assert f.reasons == tuple(sorted({r for *_, r in expected}))


def test_spans_name_the_segment_and_sort() -> None:
    f = DET.score_sample(sample("clean text", "pay" + ZWSP + "pal", "\u202ex"))
    assert [(s.segment, s.start, s.end) for s in f.spans] == [(1, 3, 4), (2, 0, 1)]
    assert f.reasons == ("bidi_control", "zero_width")
    assert f.score >= 0.9


def test_span_points_at_the_invisible_characters() -> None:
    text = "Please summarise this re" + ZWSP * 3 + "view for me."
    [span] = DET.score_sample(sample(text)).spans
    assert text[span.start : span.end] == ZWSP * 3


def test_flag_sequence_with_trailing_smuggled_tags() -> None:
    flag = BLACK_FLAG + tags("gbsct") + CANCEL_TAG
    text = flag + tags("rm -rf")
    f = DET.score_sample(sample(text))
    assert f.score >= 0.9
    [span] = f.spans
    assert (span.start, span.end) == (len(flag), len(text))  # only the extra tags


# ---------------------------------------------------------------- batch and contract


async def test_batch_returns_findings_in_order() -> None:
    batch = [
        sample("hello", rid="a"),
        sample("pay" + ZWSP + "pal", rid="b"),
        sample(FAMILY, rid="c"),
        sample("x\u202ey", rid="d"),
        sample(rid="e"),
    ]
    findings = await DET.score(batch)
    assert len(findings) == len(batch)
    assert [f.score >= 0.5 for f in findings] == [False, True, False, True, False]
    assert findings[1].reasons == ("zero_width",)
    assert findings[3].reasons == ("bidi_control",)
    assert all(f.detector == "invisible_chars" for f in findings)
    assert all(f.status is FindingStatus.OK for f in findings)


async def test_empty_batch() -> None:
    assert await DET.score([]) == []


def test_class_metadata_and_registry() -> None:
    assert load_detector_class("invisible_chars") is InvisibleCharsDetector
    assert InvisibleCharsDetector.kind == "invisible_chars"
    assert InvisibleCharsDetector.phases == frozenset({Phase.INPUT, Phase.OUTPUT})
    assert InvisibleCharsDetector.cost is Cost.CHEAP
    assert InvisibleCharsDetector.Params is InvisibleCharsParams


async def test_lifecycle_and_describe() -> None:
    det = InvisibleCharsDetector("strict", InvisibleCharsParams(zero_width_min_run=1))
    states = [det.ready]
    await det.start()
    states.append(det.ready)
    await det.close()
    states.append(det.ready)
    assert states == [False, True, False]
    info = det.describe()
    json.dumps(info)  # JSON-safe for /config and the audit log
    assert info["kind"] == "invisible_chars"
    assert info["params"]["zero_width_min_run"] == 1
    assert info["params"]["categories"] == sorted(info["params"]["categories"])


def test_findings_carry_no_text() -> None:
    text = "canary-7731 wants the p" + CYR_A + "ssword" + ZWSP + ZWSP + tags("secret")
    f = DET.score_sample(sample(text))
    assert f.score >= 0.9
    dumped = repr(f) + json.dumps([s.as_dict() for s in f.spans])
    for fragment in ("canary", "ssword", "secret", ZWSP, CYR_A):
        assert fragment not in dumped


def test_duration_is_recorded() -> None:
    f = DET.score_sample(sample("pay" + ZWSP + "pal"))
    assert 0.0 <= f.duration_seconds < 1.0


# ---------------------------------------------------------------- bad input never raises


@pytest.mark.parametrize(
    "texts",
    [
        (),
        ("",),
        ("", "", ""),
        ("\ud800",),  # lone high surrogate
        ("abc\udfffdef\ud800",),  # lone surrogates around text
        ("a\x00b\x00" + ZWSP,),  # NUL bytes
        ("\x00" * 100,),
        ("\U0010ffff\U000e0fff\U000e0000",),  # edge code points
        (ZWSP * 10_000,),
        ("\u202e" * 1000 + "\u202c" * 999,),
    ],
)
def test_bad_inputs_do_not_raise(texts: tuple[str, ...]) -> None:
    f = DET.score_sample(sample(*texts))
    assert f.status is FindingStatus.OK
    assert 0.0 <= f.score <= 1.0


HUGE_INPUTS = {
    "ascii_1MB": lambda: "x" * 1_000_000,
    "cyrillic_1MB": lambda: "\u043f\u0440\u0438\u0432\u0435\u0442 " * 150_000,
    "trigger_after_1MB": lambda: "word " * 200_000 + "pay" + ZWSP + "pal",
    "zero_width_every_other_char_1MB": lambda: ("a" + ZWSP) * 500_000,
}


@pytest.mark.parametrize(
    ("name", "flagged"),
    [
        ("ascii_1MB", False),
        ("cyrillic_1MB", False),
        ("trigger_after_1MB", True),  # the trigger is at the very end
        ("zero_width_every_other_char_1MB", True),
    ],
)
def test_huge_segments(name: str, flagged: bool) -> None:
    text = HUGE_INPUTS[name]()
    f = DET.score_sample(sample(text))
    assert f.status is FindingStatus.OK
    assert (f.score >= 0.5) is flagged
    assert len(f.spans) <= 32


def test_flood_of_legitimate_looking_characters_is_bounded_and_reported() -> None:
    # 300k in-word soft hyphens: each would score low, but judging them one by one
    # would block the event loop; past the budget the rest is reported instead.
    text = "ab\u00ad" * 300_000
    f = DET.score_sample(sample(text))
    assert f.status is FindingStatus.OK
    assert "invisible_flood" in f.reasons
    assert 0.5 <= f.score < 0.9
    flood = [s for s in f.spans if s.reason == "invisible_flood"]
    assert flood
    assert flood[0].end == len(text)


def test_analysis_budget_is_per_sample() -> None:
    det = make(analysis_budget=16)
    ok = det.score_sample(sample(*([PERSIAN_ZWNJ] * 16)))
    assert ok.score == 0.0
    over = det.score_sample(sample(*([PERSIAN_ZWNJ] * 17)))
    assert over.reasons == ("invisible_flood",)
    assert [s.segment for s in over.spans] == [16]


def test_non_string_text_gives_an_error_finding() -> None:
    bad = Sample(
        request_id="x",
        phase=Phase.INPUT,
        route="t",
        segments=(Segment(role="user", text=cast(str, None)),),
    )
    good = sample("pay" + ZWSP + "pal")
    f_bad, f_good = (DET.score_sample(s) for s in (bad, good))
    assert f_bad.status is FindingStatus.ERROR
    assert f_bad.error == "AttributeError"
    assert f_bad.score == 0.0
    assert f_bad.detector == "invisible_chars"
    assert f_good.status is FindingStatus.OK
    assert f_good.score >= 0.9


async def test_unexpected_exception_is_isolated_to_its_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = InvisibleCharsDetector._scan_segment

    def exploding(self: InvisibleCharsDetector, index: int, text: str, budget: int) -> Any:
        if "boom" in text:
            raise KeyError("boom")
        return original(self, index, text, budget)

    monkeypatch.setattr(InvisibleCharsDetector, "_scan_segment", exploding)
    findings = await DET.score(
        [
            sample("caf\u00e9 boom"),
            sample("pay" + ZWSP + "pal"),
            sample("caf\u00e9"),
        ]
    )
    assert [f.status for f in findings] == [
        FindingStatus.ERROR,
        FindingStatus.OK,
        FindingStatus.OK,
    ]
    assert findings[0].error == "KeyError"  # the type only: never the message or text
    assert findings[0].detector == "invisible_chars"
    assert findings[1].score >= 0.9


# ---------------------------------------------------------------- coverage of Cf


def _all_format_chars() -> list[str]:
    return [chr(cp) for cp in range(0x110000) if unicodedata.category(chr(cp)) == "Cf"]


def test_every_format_character_between_letters_is_flagged() -> None:
    """Every Unicode Cf character hidden in a word scores >= 0.5 (soft hyphen: low)."""
    det = make()
    missed = []
    for ch in _all_format_chars():
        score, reasons = score_text("ab" + ch + "cd", det)
        if ch == "\u00ad":
            assert 0.0 < score < 0.3
            assert reasons == ("invisible_format",)
        elif score < 0.5:
            missed.append(f"U+{ord(ch):04X}")
    assert missed == []


@pytest.mark.parametrize(
    "ch",
    ["\u115f", "\u1160", "\u3164", "\uffa0", "\u034f", "\u180b", "\u17b4", "\u2800", "\ufe00"],
)
def test_other_default_ignorables_in_a_latin_word(ch: str) -> None:
    score, _ = score_text("ab" + ch + "cd")
    assert score >= 0.9


# ---------------------------------------------------------------- params


def test_params_defaults_and_validation() -> None:
    p = InvisibleCharsParams()
    assert p.zero_width_min_run == 2
    assert p.allow_leading_bom
    assert p.check_confusables
    assert set(p.categories) == {
        "bidi_control",
        "invisible_format",
        "tag_chars",
        "variation_selector",
        "zero_width",
    }
    with pytest.raises(ValidationError):
        InvisibleCharsDetector.parse_params({"zero_width_min_rn": 3})  # typo is an error
    with pytest.raises(ValidationError):
        InvisibleCharsDetector.parse_params({"zero_width_min_run": 0})
    with pytest.raises(ValidationError):
        InvisibleCharsDetector.parse_params({"categories": ["mixed_script"]})
    parsed = InvisibleCharsDetector.parse_params({"categories": ["zero_width", "tag_chars"]})
    assert isinstance(parsed, InvisibleCharsParams)
    assert parsed.categories == ("tag_chars", "zero_width")


def test_base_params_are_accepted() -> None:
    from detectors.base import DetectorParams

    det = InvisibleCharsDetector("x", DetectorParams())
    assert isinstance(det.params, InvisibleCharsParams)
    assert det.score_sample(sample("a" + ZWSP + "b")).score >= 0.9


def test_categories_switch_reasons_off() -> None:
    text = "pay" + ZWSP + "pal \u202e" + tags("x")
    only_tags = make(categories=("tag_chars",))
    f = only_tags.score_sample(sample(text))
    assert f.reasons == ("tag_chars",)
    nothing = make(categories=(), check_confusables=False)
    assert nothing.score_sample(sample(text + " p" + CYR_A + "ypal")).score == 0.0


def test_zero_width_min_run() -> None:
    stray = "Hello " + ZWSP + "world"
    assert 0.5 <= score_text(stray)[0] < 0.9
    assert score_text(stray, make(zero_width_min_run=1))[0] >= 0.9
    pair = "Hello " + ZWSP * 2 + "world"
    assert score_text(pair)[0] >= 0.9
    assert score_text(pair, make(zero_width_min_run=3))[0] < 0.9


def test_allow_leading_bom() -> None:
    text = BOM + "Hello"
    assert score_text(text)[0] == 0.0
    assert score_text(text, make(allow_leading_bom=False))[0] >= 0.5


def test_allow_emoji_sequences() -> None:
    for text in (FAMILY, "\u2764" + VS16, BLACK_FLAG + tags("gbsct") + CANCEL_TAG):
        assert score_text(text)[0] == 0.0
        assert score_text(text, make(allow_emoji_sequences=False))[0] >= 0.5


def test_allow_script_joiners() -> None:
    assert score_text(PERSIAN_ZWNJ)[0] == 0.0
    assert score_text(PERSIAN_ZWNJ, make(allow_script_joiners=False))[0] >= 0.5


def test_allow_rtl_bidi() -> None:
    text = HEBREW + LRM + " World"
    assert 0.0 < score_text(text)[0] < 0.3
    assert score_text(text, make(allow_rtl_bidi=False))[0] >= 0.5
    iso = "User \u2068" + HEBREW + "\u2069 joined"
    assert score_text(iso)[0] < 0.3
    assert score_text(iso, make(allow_rtl_bidi=False))[0] >= 0.9
    # An override is never excused by RTL context.
    assert score_text(HEBREW + " \u202e" + HEBREW)[0] >= 0.9


def test_check_confusables() -> None:
    text = "p" + CYR_A + "ypal"
    assert score_text(text)[0] >= 0.9
    assert score_text(text, make(check_confusables=False)) == (0.0, ())


def test_max_spans_keeps_strongest_evidence_and_all_reasons() -> None:
    det = make(max_spans=2)
    text = "ab\u00adcd " * 5 + "x\u202ey " + "pay" + ZWSP * 2 + "pal"
    f = det.score_sample(sample(text))
    assert len(f.spans) == 2
    assert {s.reason for s in f.spans} == {"bidi_control", "zero_width"}  # not soft hyphens
    assert f.reasons == ("bidi_control", "invisible_format", "zero_width")


# ---------------------------------------------------------------- calibration details


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("Hello " + ZWSP + "world", 0.5, 0.9),  # stray between words: flagged, not clear
        ("pay" + ZWSP + "pal", 0.9, 1.0),  # inside a word: clear
        ("x" + ZWSP * 8 + "y", 0.99, 1.0),  # long run: encoded data
        (HEBREW + LRM + " ok", 0.0, 0.3),  # mark in RTL text
        ("Silben\u00adtrennung", 0.0, 0.3),  # hyphenation hint
        ("a" + ZWSP * 2 + "b" + "\U000e0041", 0.9, 1.0),
    ],
)
def test_score_bands(text: str, low: float, high: float) -> None:
    score, _ = score_text(text)
    assert low <= score <= high


def test_many_scattered_strays_escalate() -> None:
    words = ["w" + str(i) for i in range(10)]
    few = (" " + ZWSP).join(words[:4])
    many = (" " + ZWSP).join(words)
    assert score_text(few)[0] < 0.9
    assert score_text(many)[0] >= 0.9


def test_scientific_greek_exemption_is_narrow() -> None:
    legit = ("TNF\u03b1", "NF\u03baB", "\u03b1helix", "IFN\u03b3", "\u03bdmax", "\u03b1v\u03b23", "\u0394x")
    for word in legit:
        assert score_text(word)[0] == 0.0, word
    spoofs = (
        "p\u03b1ypal",
        "g\u03bfogle",
        "G\u039fOGLE",
        "\u03bfpen",
        "\u03b9ts",  # iota and upsilon are never symbols
        "yo\u03c5",
        "\u03bdisit",  # nu on more than a short tag
        "k\u03b1\u03bbo",  # a run of three Greek letters is a Greek word
    )
    for word in spoofs:
        assert score_text(word)[0] >= 0.9, word


# ---------------------------------------------------------------- homoglyph decisions


def _latin_text(group: str, other: str) -> bool:
    return group == G_LATIN


def _cyrillic_text(group: str, other: str) -> bool:
    return group == G_CYRILLIC


def _greek_text(group: str, other: str) -> bool:
    return group == G_GREEK


@pytest.mark.parametrize(
    ("word", "latin", "cyrillic", "greek"),
    [
        # A Latin reading counts in any text, whichever group has the majority.
        ("t\u04bb\u0435", True, True, True),  # t + Cyrillic shha, ie: "the"
        ("\u0443\u043eu", True, True, True),  # Cyrillic u, o + Latin u: "you"
        ("\u03bf\u03c5t", True, True, True),  # Greek omicron, upsilon + t: "out"
        # A reading in another script only where that script dominates.
        ("KOM\u0411AT", False, True, False),  # Latin letters around Cyrillic be
        ("\u03bbx", False, False, True),  # lambda + x: a symbol unless the text is Greek
        # A Latin stem with a visibly native ending: morphology in that script's text.
        ("iPhone\u043e\u043c", True, False, True),
        ("PDF\u043a\u0443", True, False, True),
        ("USB\u0448\u043d\u0438\u043a", True, False, True),  # Cyrillic majority in the word
        # ... unless the ending passes for Latin or the stem for the ending's script.
        ("iPhone\u0430", True, True, True),
        ("SMS\u043a\u0430\u043c\u0438", True, True, True),
        # Greek symbols: set aside unless the text is Greek; capitals always.
        ("\u03b1v\u03b23", False, False, True),
        ("\u0394x", False, False, False),
    ],
)
def test_mixed_word_decision_depends_on_the_text_script(
    word: str, latin: bool, cyrillic: bool, greek: bool
) -> None:
    assert _mixed_word_is_confusable(word) is latin  # no context: Latin text is assumed
    assert _mixed_word_is_confusable(word, _latin_text) is latin
    assert _mixed_word_is_confusable(word, _cyrillic_text) is cyrillic
    assert _mixed_word_is_confusable(word, _greek_text) is greek


@pytest.mark.parametrize(
    ("context", "word", "flagged"),
    [
        ("I saw {} movie.", "t\u04bb\u0435", True),
        (RUSSIAN + " {}.", "t\u04bb\u0435", True),
        ("Hello {} world.", "KOM\u0411AT", False),
        (RUSSIAN + " {}.", "KOM\u0411AT", True),
        ("I love my {}.", "iPhone\u043e\u043c", True),
        (RUSSIAN + " {}.", "iPhone\u043e\u043c", False),
        (RUSSIAN + " {}.", "iPhone\u0430", True),
        ("{}", "iPhone\u043e\u043c", True),  # no context: Latin text assumed
        ("The {} integrin.", "\u03b1v\u03b23", False),
        (GREEK + " {} " + GREEK, "\u03c4o", True),  # Greek "to" with a Latin o
        ("Use {} here.", "\u03c4o", False),  # tau has no Latin look-alike
    ],
)
def test_text_script_decides_in_the_detector(context: str, word: str, flagged: bool) -> None:
    score, reasons = score_text(context.format(word))
    assert (score >= 0.9) is flagged, (score, reasons)
    assert reasons == (("mixed_script",) if flagged else ())


def test_text_script_is_judged_near_the_word() -> None:
    word = "iPhone\u043e\u043c"
    russian = (RUSSIAN + ". ") * 12
    english = "Please summarise the quarterly report for the board. " * 12
    # Russian around the word, English far away: ordinary Russian morphology.
    assert score_text(english + russian + word + " " + russian)[0] == 0.0
    # English around the word, Russian far away: a spoof.
    assert score_text(russian + english + word + " " + english)[0] >= 0.9


def test_context_counts_leave_the_word_out() -> None:
    cyrillic_word = "\u043f\u0440\u0438\u0432\u0435\u0442"
    st_ = _Seg(0, cyrillic_word, 10)
    assert not st_.dominates(G_CYRILLIC, G_LATIN, 0, len(cyrillic_word))  # empty: Latin wins
    assert st_.dominates(G_LATIN, G_CYRILLIC, 0, len(cyrillic_word))
    text = cyrillic_word + " ok " + cyrillic_word
    assert _Seg(0, text, 10).dominates(G_CYRILLIC, G_LATIN, 7, 8)


def test_homoglyph_and_invisible_in_one_word() -> None:
    score, reasons = score_text("p" + CYR_A + ZWSP + "ypal")
    assert score >= 0.9
    assert reasons == ("mixed_script", "zero_width")


# ---------------------------------------------------------------- properties

# Characters the property tests draw from: ASCII, every candidate family, emoji
# parts, look-alike letters, RTL and Indic letters, lone surrogates and NUL.
INTERESTING: list[str] = [
    *"abcxyzABC019 .,-_'\n\t",
    *(ZWSP, ZWNJ, ZWJ, BOM, LRM, "\u200f", "\u061c", "\u2060", "\u180e", "\u00ad", "\u034f"),
    *("\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"),
    *(VS16, "\ufe0e", "\ufe00", "\U000e0100", "\U000e01ef", "\u180b", "\u3164", "\u2800"),
    *(BLACK_FLAG, CANCEL_TAG, "\U000e0067", "\U000e0062", "\U000e0073", "\U000e0001"),
    *("\U0001f468", "\U0001f469", "\u2764", "\u20e3", "\U0001f3fd", "\u00a9"),
    *(CYR_A, "\u043e", "\u0440", "\u042f", "\u03b1", "\u03bf", "\u0391", "\u0585", "\uff41"),
    *("\U0001d429", "\u13aa", "\u212a", "\u05e9", "\u0645", "\u06cc", "\u0915", "\u094d"),
    *("\u0e20", "\u79c1", "\u1100", "\u1160", "\u0600", "\u0661", "\ud800", "\udfff", "\x00"),
    *("\u04bb", "\u0435", "\u0431", "\u03c5", "\u03bd", "\u03b9", "\u03bb", "\u0394", "\u2126"),
]

_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _check_invariants(texts: list[str], det: InvisibleCharsDetector = DET) -> None:
    f = det.score_sample(sample(*texts))
    assert f.status is FindingStatus.OK, f.error
    assert 0.0 <= f.score <= 1.0
    assert f.detector == det.name
    assert list(f.reasons) == sorted(set(f.reasons))
    assert set(f.reasons) <= set(REASON_CODES)
    assert {s.reason for s in f.spans} <= set(f.reasons)
    assert (f.score > 0.0) == bool(f.reasons)
    for s in f.spans:
        assert 0 <= s.segment < len(texts)
        assert 0 <= s.start < s.end <= len(texts[s.segment])


@_SETTINGS
@given(st.lists(st.text(alphabet=st.characters(codec=None, categories=None)), max_size=4))
def test_property_arbitrary_text_never_raises(texts: list[str]) -> None:
    _check_invariants(texts)


@_SETTINGS
@given(st.lists(st.text(alphabet=st.sampled_from(INTERESTING), max_size=60), max_size=3))
def test_property_interesting_text_never_raises(texts: list[str]) -> None:
    _check_invariants(texts)
    _check_invariants(texts, make(zero_width_min_run=1, allow_emoji_sequences=False))


@_SETTINGS
@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=400))
def test_property_ascii_scores_zero(text: str) -> None:
    f = DET.score_sample(sample(text))
    assert (f.score, f.reasons, f.spans) == (0.0, (), ())


@_SETTINGS
@given(
    st.from_regex(r"[a-z]{2,12}", fullmatch=True),
    st.integers(min_value=1, max_value=11),
    st.lists(st.sampled_from([ZWSP, ZWNJ, ZWJ, "\u2060", BOM]), min_size=1, max_size=6),
)
def test_property_invisible_inside_a_latin_word_is_a_clear_trigger(
    word: str, cut: int, hidden: list[str]
) -> None:
    cut = min(cut, len(word) - 1)
    text = "Please check " + word[:cut] + "".join(hidden) + word[cut:] + " today."
    score, reasons = score_text(text)
    assert score >= 0.9
    assert "zero_width" in reasons


@_SETTINGS
@given(st.text(alphabet=st.sampled_from(INTERESTING), max_size=40))
def test_property_scores_do_not_depend_on_other_segments(text: str) -> None:
    alone = DET.score_sample(sample(text))
    together = DET.score_sample(sample("clean", text))
    assert alone.score == together.score
    assert [(s.start, s.end, s.reason) for s in alone.spans] == [
        (s.start, s.end, s.reason) for s in together.spans
    ]


@_SETTINGS
@given(
    st.text(alphabet=st.sampled_from([*"ab ", "\u0430", "\u0431", "\u03b1"]), min_size=1, max_size=1500),
    st.lists(st.tuples(st.integers(0, 1500), st.integers(1, 20)), min_size=1, max_size=8),
)
def test_property_context_counts_do_not_depend_on_cache_state(
    text: str, queries: list[tuple[int, int]]
) -> None:
    spans = [(min(a, len(text) - 1), min(a + n, len(text))) for a, n in queries]
    warm = _Seg(0, text, 10)
    for group, other in ((G_CYRILLIC, G_LATIN), (G_LATIN, G_GREEK)):
        answers = [warm.dominates(group, other, a, b) for a, b in spans]
        for (a, b), answer in zip(spans, answers, strict=True):
            assert _Seg(0, text, 10).dominates(group, other, a, b) is answer


def test_a_huge_invisible_run_is_judged_on_a_bounded_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """300,000 zero-width spaces in one run took 0.7 s judged one by one; a prefix decides."""
    det = make()
    calls = 0
    real = det._char_legit

    def counting(*args: Any) -> bool:
        nonlocal calls
        calls += 1
        return real(*args)

    monkeypatch.setattr(det, "_char_legit", counting)
    score, reasons = score_text("hello " + "\u200b" * 300_000 + " world", det)
    assert score >= 0.95
    assert "zero_width" in reasons
    assert calls <= 256


# --------------------------------------------------------------------------- remedy (sanitize)

LRE_, PDF_ = "\u202a", "\u202c"


@pytest.mark.parametrize(
    ("texts", "remedy"),
    [
        (("he\u200bllo world",), "\u200b"),
        (("Back of door\u200b -\u200b embedded",), "\u200b"),  # strays pasted from a web page
        (("the \u00adhow of it", "and wo\u2060rd"), "\u00ad\u2060"),  # across segments
        ((f"[9:50 AM] {LRE_}+91 99645 15388{PDF_}: image omitted",), LRE_ + PDF_),  # a chat export
        (("one" + "\u200b" * 12 + "two",), "\u200b"),  # a run goes as a whole
    ],
)
def test_meaningless_characters_are_offered_for_removal(texts: tuple[str, ...], remedy: str) -> None:
    finding = DET.score_sample(sample(*texts))
    assert finding.score >= 0.5
    assert finding.remedy == remedy
    assert finding.residual == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "hidden " + tags("cf") + " run",  # tag characters: smuggled ASCII
        "abc\u202edcba",  # an override
        "log in at p\u0430ypal.com",  # a Cyrillic letter in a Latin word
        "x" + "\ufe0f\ufe0e" * 6 + "y",  # a selector run: smuggled bytes
    ],
)
def test_what_removal_cannot_fix_has_a_residual(text: str) -> None:
    finding = DET.score_sample(sample(text))
    assert finding.score >= 0.5
    assert finding.residual >= 0.5


def test_removal_is_not_offered_when_a_legitimate_use_of_the_character_would_go_too() -> None:
    finding = DET.score_sample(sample("\U0001f468\u200d\U0001f4bb and wo\u200drd"))
    assert finding.score >= 0.5
    assert finding.remedy == ""
    assert finding.residual == 1.0


def test_a_mixed_finding_names_what_it_can_remove_and_keeps_the_rest_as_residual() -> None:
    finding = DET.score_sample(sample("wo\u200brd and abc\u202edcba"))
    assert finding.remedy == "\u200b"
    assert finding.residual >= 0.9
