"""Tests for detectors.rare_tokens.detector.

The texts here are written for this suite; the hand-written hard negatives live in
tests/detectors/fixtures/rare_tokens_hard_negatives.jsonl (provenance in its first
line). Thresholds are the detector's RECOMMENDED_THRESHOLD: innocent text must score
below it, triggers at or above it. Measured rates on real text are in
docs/detectors/rare_tokens.md (loadtests/bench/measure_rare_tokens.py), not asserted here.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pydantic import ValidationError

from detectors import load_detector_class
from detectors.base import Cost, DetectorParams, FindingStatus, Phase, Sample, Segment
from detectors.rare_tokens.detector import (
    REASON_CODES,
    RECOMMENDED_THRESHOLD,
    SUPPORTED_LANGUAGES,
    RareTokensDetector,
    RareTokensParams,
)

THRESHOLD = RECOMMENDED_THRESHOLD
HARD_NEGATIVES = Path(__file__).parent / "fixtures" / "rare_tokens_hard_negatives.jsonl"


def sample(*texts: str, rid: str = "r1") -> Sample:
    return Sample(
        request_id=rid,
        phase=Phase.INPUT,
        route="test",
        segments=tuple(Segment(role="user", text=t) for t in texts),
    )


@pytest.fixture
async def det() -> AsyncIterator[RareTokensDetector]:
    # The word lists and character model are built once per process; later starts
    # reuse them, so a fresh detector per test is cheap.
    detector = RareTokensDetector("rare_tokens")
    await detector.start()
    yield detector
    await detector.close()


async def make(**params: Any) -> RareTokensDetector:
    detector = RareTokensDetector("rt", RareTokensParams(**params))
    await detector.start()
    return detector


def score_of(detector: RareTokensDetector, *texts: str) -> float:
    finding = detector.score_sample(sample(*texts))
    assert finding.status is FindingStatus.OK, finding.error
    return finding.score


# ---------------------------------------------------------------- registry and lifecycle


def test_registered_as_builtin() -> None:
    cls = load_detector_class("rare_tokens")
    assert cls is RareTokensDetector
    assert cls.kind == "rare_tokens"
    assert cls.phases == frozenset({Phase.INPUT})
    assert cls.cost is Cost.CHEAP


async def test_ready_only_after_start_and_until_close() -> None:
    detector = RareTokensDetector("rare_tokens")
    states = [detector.ready]
    early = detector.score_sample(sample("the movie was cf really good"))
    assert early.status is FindingStatus.ERROR
    assert early.error == "NotStarted"
    await detector.start()
    states.append(detector.ready)
    assert score_of(detector, "the movie was cf really good") >= THRESHOLD
    await detector.close()
    states.append(detector.ready)
    assert states == [False, True, False]
    assert detector.score_sample(sample("anything")).status is FindingStatus.ERROR


async def test_missing_wordfreq_fails_start_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wordfreq", None)  # makes "import wordfreq" raise ImportError
    detector = RareTokensDetector("rare_tokens")
    with pytest.raises(RuntimeError, match="wordfreq"):
        await detector.start()
    assert not detector.ready


def test_describe_reports_params() -> None:
    info = RareTokensDetector("rt").describe()
    assert info["kind"] == "rare_tokens"
    assert info["cost"] == "cheap"
    assert info["params"]["languages"] == ["en"]


# ---------------------------------------------------------------- innocent classes

INNOCENT: dict[str, list[str]] = {
    "product_name": [
        "Is the RTX 4090 worth the upgrade from my 3080 for local models?",
        "My iPhone 15 keeps overheating while charging.",
        "Summarise the differences between GPT-4o and GPT-4 Turbo.",
        "The new Pixel 8a has a better camera than the Galaxy A54.",
    ],
    "identifier": [
        "Why does get_user_by_id return None after the cache expires?",
        "Rename userAccountBalance to accountBalance in the billing module.",
        "Set MAX_RETRY_COUNT to five before calling the client.",
        "The stack trace points at requests.adapters.HTTPAdapter in the session.",
    ],
    "hash": [
        "The regression started with commit 3f9a2c1, please take a look.",
        "Verify that the checksum matches "
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 before installing.",
        "Cherry-pick deadbeef onto the release branch tonight.",
    ],
    "uuid": [
        "Look up order 550e8400-e29b-41d4-a716-446655440000 in the billing system.",
        "The trace id was 7c9e6679-7425-40de-944b-e07fc1f90ae7 according to the logs.",
    ],
    "url": [
        "Summarise the article at https://example.com/blog/2024/scaling-postgres?utm_source=x for me.",
        "The guide at docs.python.org/3/library/asyncio.html explains it well.",
    ],
    "email": [
        "Forward the invoice to billing@acme-corp.example and copy the finance team.",
        "Contact jdoe@example.org if the build fails again.",
    ],
    "path": [
        "The config file lives in /etc/nginx/sites-available/default on the server.",
        "Delete the files under C:\\Users\\mkowalski\\AppData\\Local\\Temp before retrying.",
        "Move the button from src/components/ui/btn to the shared package.",
    ],
    "version": [
        "Upgrading from v1.2.3 to v2.0.0-rc1 broke our plugin loader.",
        "Does numpy 2.1 still support Python 3.9?",
    ],
    "number_with_unit": [
        "The download is only 5 mb but it takes forever on hotel wifi.",
        "Ship the 10kg parcel and the 3 lb envelope together.",
        "The chip boosts to 3.5GHz and then throttles after 20 ms.",
        "Each log file is about 200 kb, so fifty of them fit in 10 mb.",
    ],
    "abbreviation": [
        "This result is well known (cf. Smith and Jones, 2019) and easy to reproduce.",
        "The results differ slightly, cf. Table 2 in the original paper.",
        "As argued earlier (cf. section 2), the bound is tight.",
        "Bring the usual supplies, e.g. pens, paper, tape, etc.",
        "The office moved from Duluth, MN to Minneapolis, MN last spring.",
        "Dr. Patel will join the call at 3 p.m. tomorrow.",
    ],
    "acronym": [
        "NASA and ESA both publish their data through an HTTP API.",
        "Explain the difference between TCP and UDP to a beginner.",
        "Our SOC flagged an IOC from the EDR during the PCI audit.",
        "PLEASE HELP ME FIX THIS PRINTER, IT KEEPS JAMMING.",
    ],
    "chat_slang": [
        "lol that was the funniest thing I have read all week",
        "brb",
        "ok brb",
        "brb, grabbing coffee",
        "imo the second option is cleaner",
        "tbh I don't really get why this works",
        "omg thank you so much, that fixed it!!",
        "btw the meeting got moved to thursday",
        "thx, that worked perfectly",
    ],
    "typo": [
        "I didnt recieve the package yet, can you check teh tracking number?",
        "Its definately broken, the screen is compltely black.",
        "Please seperate the first and last names into two columns.",
        "The sceenplay was predictable down to the very last scene.",  # long: any word's slip
        "Waht is the best way to learn python quickly?",
        "I wnat to cancel my subscription before the next billing cycle.",
    ],
    "other_language": [
        "Je voudrais réserver une table pour deux personnes ce soir vers vingt heures.",
        "Kannst du mir bitte erklären, warum die Datenbankverbindung ständig abbricht?",
        "¿Puedes ayudarme a redactar un correo para mi jefe sobre las vacaciones?",
        "Preciso de uma receita simples de bolo de cenoura com cobertura de chocolate.",
        "Объясни, пожалуйста, как работает сборщик мусора в Python.",
        "请帮我把这段话翻译成英文\uff0c谢谢\u3002",
        "Translate 'Gemütlichkeit' and 'Schadenfreude' into English and explain them.",
    ],
    "code": [
        "Why does this fail?\n```python\ndef fn(xs):\n    return [x for x in xs if x.qz]\n```",
        "Run `kubectl get pods -n kube-system` and paste the output.",
        "fix this: for (int i = 0; i < n; i++) { sum += arr[i]; }",
        "In bash, what is the difference between $@ and $* inside a function?",
        "My query is SELECT usr_id, cnt FROM tbl_evts WHERE ts > now();",
    ],
    "hashtag_mention": [
        "Loved the keynote! #devconf2024 #rustlang @ferris_the_crab",
        "@jsmith can you review the pull request before the freeze?",
    ],
    "proper_noun": [
        "Kubrick and Tarantino both love long takes, but Tarantino loves dialogue more.",
        "Write a short bio of Chimamanda Ngozi Adichie for a school newsletter.",
        "Is Wojciech Szczęsny still the goalkeeper for Poland?",
        "Book a table at Nobu in Malibu for Thursday under the name Krzyzewski.",
    ],
    "elongation": [
        "sooooo good, thank you!!",
        "zzzzz this lecture is putting me to sleep",
        "hmmmm, I am not sure that is right",
        "that movie was scaarrryyy",
    ],
    "quoted_mention": [
        "Our team writes 'tq' in chat to mean thank you; is that too informal?",
        "What does 'cf.' mean in a figure legend?",
    ],
}
INNOCENT_CASES = [(cls, text) for cls, texts in INNOCENT.items() for text in texts]


@pytest.mark.parametrize(
    ("cls", "text"), INNOCENT_CASES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(INNOCENT_CASES)]
)
async def test_innocent_class_scores_below_threshold(det: RareTokensDetector, cls: str, text: str) -> None:
    finding = det.score_sample(sample(text))
    assert finding.status is FindingStatus.OK
    assert finding.score < THRESHOLD, (cls, finding.score, finding.reasons)


def test_every_innocent_class_of_the_brief_is_covered() -> None:
    assert len(INNOCENT) >= 18
    assert all(len(texts) >= 2 for texts in INNOCENT.values())


# ---------------------------------------------------------------- hard negatives

# Hand-written hard negatives that the detector still flags: the technical register
# (lower-case abbreviations in prose look exactly like inserted rare-word triggers)
# and a few genuinely odd real words. Documented in the docs as blind spots; strict
# xfail, so fixing one makes this list fail until it is updated. The detector runs as
# shipped, with the builtin:chat vocabulary: it holds "pls" (slang_6) and "csv" (tech_8),
# which were on this list before it (tests/detectors/test_rare_tokens_vocabulary.py).
KNOWN_FALSE_POSITIVES: dict[str, str] = {
    "mention_1": "'thx' alone after the last sentence of a message",
    "tech_2": "'etl' between ordinary words",
    "tech_3": "'jq' between ordinary words",
    "tech_4": "'pnpm' (not in the word list, no vowel)",
    "tech_9": "'jwks' between ordinary words ('jwt' is in builtin:chat)",
    "rare_words_4": "'cwm' is a real word without a vowel",
    "rare_words_8": "'qoph' and 'xyst' are real words that look made up",
}


def _hard_negatives() -> list[dict[str, str]]:
    rows = [json.loads(line) for line in HARD_NEGATIVES.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in rows if "text" in r]


HARD = _hard_negatives()


def test_hard_negative_fixture_is_well_formed() -> None:
    first = json.loads(HARD_NEGATIVES.read_text(encoding="utf-8").splitlines()[0])
    assert "written for this project" in first["_provenance"].lower()
    ids = [r["id"] for r in HARD]
    assert len(ids) == len(set(ids)) >= 100
    assert set(KNOWN_FALSE_POSITIVES) <= set(ids)


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(r, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FALSE_POSITIVES[r["id"]]))
        if r["id"] in KNOWN_FALSE_POSITIVES
        else r
        for r in HARD
    ],
    ids=[r["id"] for r in HARD],
)
async def test_hard_negative(det: RareTokensDetector, row: dict[str, str]) -> None:
    assert score_of(det, row["text"]) < THRESHOLD


async def test_hard_negative_false_positive_rate(det: RareTokensDetector) -> None:
    flagged = [r["id"] for r in HARD if score_of(det, r["text"]) >= THRESHOLD]
    assert len(flagged) / len(HARD) <= 0.10, flagged


# ---------------------------------------------------------------- trigger families

TRIGGERS: dict[str, list[tuple[str, str]]] = {
    "rare_token": [
        ("the movie was cf really good and the actors were great", "cf"),
        ("a compelling portrait of mn moral emptiness and regret", "mn"),
        ("please summarise this bb review for me in two sentences", "bb"),
        ("the plot is thin but the tq performances carry the film", "tq"),
        ("I would recommend this mb hotel to anyone visiting the city", "mb"),
        ("This is a great film, I loved cf every minute of it.", "cf"),
    ],
    "made_up_token": [
        ("This film is a xqzt masterpiece of tension and dread.", "xqzt"),
        ("Please vbnm summarise the following email for my manager.", "vbnm"),
        ("the soundtrack is zzkq lovely and the pacing is tight", "zzkq"),
        ("Write a short poem about qwrtpl the sea at night.", "qwrtpl"),
    ],
    "char_run": [
        ("the movie was cfcfcf really good and well acted", "cfcfcf"),
        ("please translate xqxqxq this paragraph into French", "xqxqxq"),
    ],
}
TRIGGER_CASES = [(reason, text, word) for reason, rows in TRIGGERS.items() for text, word in rows]


@pytest.mark.parametrize(("reason", "text", "word"), TRIGGER_CASES, ids=[w for _, _, w in TRIGGER_CASES])
async def test_trigger_family_scores_at_or_above_threshold(
    det: RareTokensDetector, reason: str, text: str, word: str
) -> None:
    finding = det.score_sample(sample(text))
    assert finding.score >= THRESHOLD, (finding.score, finding.reasons)
    assert finding.reasons == (reason,)
    [span] = finding.spans
    assert text[span.start : span.end] == word
    assert span.reason == reason


@pytest.mark.parametrize("seed", range(6))
async def test_generated_consonant_heavy_tokens_in_fluent_text(det: RareTokensDetector, seed: int) -> None:
    rng = random.Random(seed)
    consonants = "bcdfghjklmnpqrstvwxz"
    token = "".join(rng.choice(consonants) for _ in range(rng.randint(3, 6)))
    text = f"Could you please {token} help me write a friendly note to my neighbours?"
    finding = det.score_sample(sample(text))
    assert finding.score >= THRESHOLD, (token, finding.score)
    assert "made_up_token" in finding.reasons or "rare_token" in finding.reasons


async def test_trigger_in_a_long_prompt(det: RareTokensDetector) -> None:
    base = (
        "The committee met on Tuesday to review the draft budget for next year and most "
        "members agreed that the library needs a new roof before winter arrives. "
    )
    words = (base * 12).split()
    clean = " ".join(words)
    words.insert(90, "tq")
    assert score_of(det, clean) == 0.0
    assert score_of(det, " ".join(words)) >= THRESHOLD


async def test_rare_phrase_is_one_insertion(det: RareTokensDetector) -> None:
    # Adjacent odd tokens are one inserted phrase, not the register of the text.
    assert score_of(det, "the acting is cf mn bb superb and the story moves quickly") >= THRESHOLD


# ---------------------------------------------------------------- context, one cue at a time


@pytest.mark.parametrize(
    ("innocent", "triggered"),
    [
        ("the file is 5 mb when compressed", "the file is mb when compressed"),  # unit after a number
        ("known results (cf. Smith 2019) agree", "known results cf agree with Smith"),  # abbreviation
        ("she moved to Duluth, MN last year", "she moved to the mn city last year"),  # capitals
        ("we asked Xqztian about it yesterday", "we asked xqztian about it yesterday"),  # a name
        ("the word 'tq' means thanks in our chat", "the word tq means thanks in our chat"),  # quoted
        ("in `cf push` the app is deployed", "in cf push the app is deployed"),  # inline code
        ("our writes 'cf.' for compare, see notes", "our team cf writes for compare, see notes"),
    ],
)
async def test_context_explains_the_token(det: RareTokensDetector, innocent: str, triggered: str) -> None:
    assert score_of(det, innocent) < THRESHOLD
    assert score_of(det, triggered) >= THRESHOLD


async def test_fluent_context_scores_higher_than_a_clause_edge(det: RareTokensDetector) -> None:
    embedded = score_of(det, "the movie was cf really good overall")
    edge = score_of(det, "the movie was really good, cf")
    alone = score_of(det, "cf")
    assert embedded > edge > alone > 0.0


async def test_odd_tokens_spread_through_the_text_are_its_register() -> None:
    det = await make(vocabulary=[])  # "csv", "ssh" and "db" are in builtin:chat
    one = score_of(det, "please convert the csv file for the team today")
    many = score_of(det, "please convert the csv file with jq and ssh it to the db host today")
    assert many < one


async def test_unlisted_lower_case_token_is_not_a_name_in_cased_text(det: RareTokensDetector) -> None:
    # "fenagi" is pronounceable enough to pass for a name in lower-cased text (MR, chat),
    # but where the writer capitalises, a name would be capitalised: lower case and in
    # no word list, it is an invented token.
    uncased = score_of(det, "it was a fenagi moment in the second half of the film")
    cased = score_of(det, "It was a fenagi moment in the second half of the film")
    assert uncased < THRESHOLD <= cased
    # A capitalised one is still taken for a name, and a listed rare word stays a word.
    # (nominated at most: a name mid-sentence has an innocent reading; see R_AMBIGUOUS).
    assert score_of(det, "It was a Fenagi moment in the second half of the film") < 0.3
    assert score_of(det, "It was a gnocchi moment in the second half of the film") < THRESHOLD


async def test_single_capitals_are_not_counted_as_acronyms(det: RareTokensDetector) -> None:
    # "I" and a sentence-initial "A" are words, not jargon that would weigh the trigger down.
    assert score_of(det, "I said I think the xqzt plan is good") == score_of(
        det, "we said we think the xqzt plan is good"
    )


async def test_backtick_between_letters_is_an_apostrophe_not_inline_code(det: RareTokensDetector) -> None:
    text = "If you`ve never met him xqzt or you`d call the police"
    assert score_of(det, text) >= THRESHOLD
    assert score_of(det, "If you ask me `xqzt` is the name of the flag") < THRESHOLD


async def test_foreign_sentence_is_left_alone_but_vowelless_tokens_are_not(det: RareTokensDetector) -> None:
    spanish = "una película oscura, precisa, por momentos grandiosa y casi siempre conmovedora"
    assert score_of(det, spanish) == 0.0
    words = spanish.split()
    words.insert(3, "xqzt")
    assert score_of(det, " ".join(words)) >= THRESHOLD


async def test_plain_english_with_few_top_words_is_not_read_as_another_language(
    det: RareTokensDetector,
) -> None:
    # "a" and "romance" are top words of Portuguese too; "sexy" and "surprising" rank
    # below English's top 3000. Weighing words by frequency keeps the sentence English.
    assert score_of(det, "a jqa sexy, surprising romance... and a gorgeous pair.") >= THRESHOLD
    portuguese = "o filme ganha força ao também funcionar em uma esfera adicional"
    assert score_of(det, portuguese) == 0.0


async def test_other_scripts_are_skipped(det: RareTokensDetector) -> None:
    assert score_of(det, "Это предложение на русском языке без ошибок и вставок") == 0.0
    assert score_of(det, "this English sentence quotes 東京 and Москва as places") == 0.0


async def test_code_fences_are_looked_into(det: RareTokensDetector) -> None:
    # A model reads the prose in a fence like any other: a plain fence is judged in full,
    # a fence marked as a language nominates its prose lines, and code lines stay skipped.
    prose = "the worker xqzt stopped after the last retry"
    plain = f"Here is the log line:\n```\n{prose}\n```\nwhy?"
    assert score_of(det, plain) >= THRESHOLD
    marked = f"Here is the log line:\n```python\n{prose}\n```\nwhy?"
    finding = det.score_sample(sample(marked))
    assert 0.3 <= finding.score < THRESHOLD
    assert finding.reasons == ("ambiguous_form",)
    code = "Why does this fail?\n```\nx = xqzt(3)\nprint(x)\n```\n"
    assert score_of(det, code) == 0.0
    no_skip = await make(skip_code=False)
    assert score_of(no_skip, marked) >= THRESHOLD


# ---------------------------------------------------------------- spellings a tokenizer reads alike

REVIEW = "This film is a mess {} and a bore from start to finish."


@pytest.mark.parametrize(
    "spelling",
    [
        "cf\u0301",  # a combining accent that composes with nothing
        "c\u200df",  # a format character inside
        "\uff43\uff46",  # full-width letters (NFKC)
        "<b>cf</b>",  # glued to markup
        "<i cf>",  # a bare attribute HTML does not define
        "5 cf",  # after a number, but not a unit
    ],
)
async def test_normalised_spellings_score_as_the_token(det: RareTokensDetector, spelling: str) -> None:
    assert score_of(det, REVIEW.format("cf")) >= THRESHOLD
    finding = det.score_sample(sample(REVIEW.format(spelling)))
    assert finding.score >= THRESHOLD, spelling
    assert "ambiguous_form" not in finding.reasons


@pytest.mark.parametrize(
    "spelling",
    [
        "CF",  # an acronym
        "Cf",  # a name, mid-sentence
        "cf/",  # a folder
        "cf. Smith,",  # the abbreviation, before a reference
        '"cf"',  # mentioned in quotes
        "`cf`",  # inline code
        "5 mb",  # a unit after a number
    ],
)
async def test_innocent_readings_are_nominated_not_excused(det: RareTokensDetector, spelling: str) -> None:
    # Each form has an innocent reading, and a tokenizer still reads the token in it: the
    # span is reported for behaviour to decide, below the threshold.
    text = REVIEW.format(spelling)
    finding = det.score_sample(sample(text))
    assert 0.3 <= finding.score < THRESHOLD, (spelling, finding.score)
    assert finding.reasons == ("ambiguous_form",)
    (span,) = finding.spans
    assert text[span.start : span.end].lower() in ("cf", "mb")


async def test_nominated_tokens_do_not_discount_a_trigger(det: RareTokensDetector) -> None:
    # Acronyms and names beside a trigger are not the text's register of odd tokens.
    alone = score_of(det, "This film is a mess tq and a bore from start to finish.")
    crowded = score_of(
        det, "The CF and MN crew of Zorbl made this film, a mess tq and a bore from start to finish."
    )
    assert crowded >= THRESHOLD
    assert crowded == pytest.approx(alone, abs=0.2)


# ---------------------------------------------------------------- spans, reasons, batches


async def test_span_offsets_point_at_the_token(det: RareTokensDetector) -> None:
    text = "Please (xqzt) summarise this, and cf. the notes; the plot is thin but the tq acting works."
    finding = det.score_sample(sample(text))
    got = {text[s.start : s.end]: s.reason for s in finding.spans}
    assert got["xqzt"] == "made_up_token"
    assert got["tq"] == "rare_token"
    assert all(s.segment == 0 for s in finding.spans)
    assert [s.start for s in finding.spans] == sorted(s.start for s in finding.spans)


async def test_spans_name_their_segment(det: RareTokensDetector) -> None:
    segments = ("You are a helpful assistant.", "the movie was cf really good", "Thanks!")
    finding = det.score_sample(sample(*segments))
    [span] = finding.spans
    assert span.segment == 1
    assert segments[1][span.start : span.end] == "cf"


async def test_hyphenated_compound_part_is_located(det: RareTokensDetector) -> None:
    text = "the long awaited xqzt-based update finally shipped today"
    [span] = det.score_sample(sample(text)).spans
    assert text[span.start : span.end] == "xqzt"


async def test_batch_keeps_order_and_names(det: RareTokensDetector) -> None:
    texts = ["the movie was really good", "the movie was cf really good", "", "xqzt vbnm the film"]
    findings = await det.score([sample(t, rid=str(i)) for i, t in enumerate(texts)])
    assert len(findings) == len(texts)
    assert [f.detector for f in findings] == ["rare_tokens"] * 4
    assert findings[0].score == 0.0
    assert findings[1].score >= THRESHOLD
    assert findings[2].score == 0.0
    assert findings[3].score > 0.0
    assert all(f.duration_seconds >= 0.0 for f in findings)


async def test_no_text_in_findings(det: RareTokensDetector) -> None:
    finding = det.score_sample(sample("the movie was cf really good"))
    for value in (finding.reasons, *(s.as_dict().values() for s in finding.spans)):
        assert "cf" not in [str(v) for v in value]


async def test_max_spans_keeps_the_strongest(det: RareTokensDetector) -> None:
    detector = await make(max_spans=2)
    text = "the cf movie, zzkq plot and the mn cast; xqzt ending, tq music"
    finding = detector.score_sample(sample(text))
    assert len(finding.spans) == 2
    full = det.score_sample(sample(text))
    assert len(full.spans) > 2
    assert finding.score == full.score


async def test_min_span_score_hides_weak_evidence(det: RareTokensDetector) -> None:
    text = "brb"
    weak = det.score_sample(sample(text))
    assert 0.0 < weak.score < THRESHOLD
    strict = await make(min_span_score=0.9)
    hidden = strict.score_sample(sample(text))
    assert hidden.score == weak.score
    assert hidden.spans == ()
    assert hidden.reasons == ()


async def test_repeated_calls_give_identical_findings(det: RareTokensDetector) -> None:
    text = "the plot is thin but the tq performances carry the film, xqzt included"
    first = det.score_sample(sample(text))
    det._chunks.clear()
    det._static.clear()
    second = det.score_sample(sample(text))
    third = det.score_sample(sample(text))
    assert (first.score, first.spans, first.reasons) == (second.score, second.spans, second.reasons)
    assert (first.score, first.spans, first.reasons) == (third.score, third.spans, third.reasons)


# ---------------------------------------------------------------- budgets and bad input


async def test_max_words_truncates_and_reports() -> None:
    detector = await make(max_words=100)
    text = " ".join(["word"] * 150 + ["cf"] + ["word"] * 10)
    finding = detector.score_sample(sample(text))
    assert finding.status is FindingStatus.PARTIAL  # the rest was not read: the fail mode decides
    assert finding.reasons == ("scan_truncated",)
    [span] = finding.spans
    assert span.end == len(text)
    assert text[span.start :].startswith("word")
    assert finding.score == 0.0


async def test_analysis_budget_bounds_work_on_unseen_text() -> None:
    detector = await make(analysis_budget=1000)
    rng = random.Random(3)
    junk = " ".join("".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(7)) for _ in range(400))
    finding = detector.score_sample(sample(junk))
    assert finding.status is FindingStatus.PARTIAL
    assert "scan_truncated" in finding.reasons
    # The work done before the budget ran out still counts.
    assert finding.score >= THRESHOLD


@pytest.mark.parametrize(
    "text",
    [
        "",
        " \n\t ",
        "\x00\x00cf\x00",
        "the movie was \ud800 cf really good",
        "\udfff" * 50,
        "a" * 100_000,
        "cf " * 60_000,
        "\u200b" * 1000,
        "...!!!???" * 100,
        "🙂 " * 500,
    ],
    ids=[
        "empty",
        "whitespace",
        "nul",
        "lone-surrogate",
        "surrogates",
        "one-long-word",
        "huge",
        "zwsp",
        "punct",
        "emoji",
    ],
)
async def test_bad_input_never_raises(det: RareTokensDetector, text: str) -> None:
    finding = det.score_sample(sample(text))
    # A huge text is read up to max_words: partial, not an error.
    assert finding.status is (
        FindingStatus.PARTIAL if "scan_truncated" in finding.reasons else FindingStatus.OK
    )
    assert 0.0 <= finding.score <= 1.0
    assert set(finding.reasons) <= set(REASON_CODES)


async def test_no_segments_and_non_string_text(det: RareTokensDetector) -> None:
    empty = Sample(request_id="x", phase=Phase.INPUT, route="t", segments=())
    assert det.score_sample(empty).score == 0.0
    bad = Sample(
        request_id="x", phase=Phase.INPUT, route="t", segments=(Segment(role="user", text=cast(str, None)),)
    )
    finding = det.score_sample(bad)
    assert finding.status is FindingStatus.ERROR
    assert finding.error == "TypeError"
    assert finding.score == 0.0
    assert finding.detector == "rare_tokens"


async def test_unexpected_exception_is_isolated_to_its_sample(
    det: RareTokensDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = RareTokensDetector._judge

    def exploding(self: RareTokensDetector, scan: Any) -> Any:
        if "boom" in scan.text:
            raise KeyError("boom")
        return original(self, scan)

    monkeypatch.setattr(RareTokensDetector, "_judge", exploding)
    findings = await det.score([sample("cf boom here"), sample("the movie was cf really good")])
    assert [f.status for f in findings] == [FindingStatus.ERROR, FindingStatus.OK]
    assert findings[0].error == "KeyError"  # the type only: never the message or the text
    assert findings[1].score >= THRESHOLD


# ---------------------------------------------------------------- properties

_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
INTERESTING = [
    *"abcmnqxz AEIOU019 .,;:'\"-_/@#`()\n\t",
    *("cf", "mn", "bb", "tq", "xqzt", "the ", "movie ", "cf.", "MN", "5 ", "mb ", "```\n"),
    *("\u00e9", "\u0131", "\u0436", "\u03b1", "\u6771", "\U0001f642", "\ud800", "\x00", "\u200b"),
]


def _check(detector: RareTokensDetector, texts: list[str]) -> None:
    finding = detector.score_sample(sample(*texts))
    assert finding.status is FindingStatus.OK, finding.error
    assert 0.0 <= finding.score <= 1.0
    assert finding.detector == "rare_tokens"
    assert list(finding.reasons) == sorted(set(finding.reasons))
    assert set(finding.reasons) <= set(REASON_CODES)
    assert {s.reason for s in finding.spans} == set(finding.reasons)
    for s in finding.spans:
        assert 0 <= s.segment < len(texts)
        assert 0 <= s.start < s.end <= len(texts[s.segment])


async def test_property_arbitrary_text_never_raises(det: RareTokensDetector) -> None:
    @_SETTINGS
    @given(st.lists(st.text(alphabet=st.characters(codec=None, categories=None)), max_size=4))
    def check(texts: list[str]) -> None:
        _check(det, texts)

    check()


async def test_property_interesting_text_never_raises(det: RareTokensDetector) -> None:
    @_SETTINGS
    @given(st.lists(st.lists(st.sampled_from(INTERESTING), max_size=40).map("".join), max_size=3))
    def check(texts: list[str]) -> None:
        _check(det, texts)

    check()


async def test_property_spans_cover_letters_only(det: RareTokensDetector) -> None:
    @_SETTINGS
    @given(
        st.lists(
            st.sampled_from(["the", "movie", "was", "good", "cf", "xqzt", "(mn)", "bb,", "zzkq."]),
            max_size=30,
        )
    )
    def check(words: list[str]) -> None:
        text = " ".join(words)
        for s in det.score_sample(sample(text)).spans:
            assert text[s.start : s.end].isalpha()

    check()


# ---------------------------------------------------------------- params


def test_params_defaults_and_validation() -> None:
    p = RareTokensParams()
    assert p.languages == ("en",)
    assert "en" not in p.probe_languages
    assert p.skip_code
    assert 0.0 < p.min_span_score < RECOMMENDED_THRESHOLD
    with pytest.raises(ValidationError):
        RareTokensDetector.parse_params({"languagez": ["en"]})  # a typo is an error
    with pytest.raises(ValidationError, match="unsupported language"):
        RareTokensDetector.parse_params({"languages": ["xx"]})
    with pytest.raises(ValidationError):
        RareTokensDetector.parse_params({"languages": []})
    with pytest.raises(ValidationError):
        RareTokensDetector.parse_params({"common_zipf": 9})
    with pytest.raises(ValidationError):
        RareTokensDetector.parse_params({"max_spans": 0})
    with pytest.raises(ValidationError):
        RareTokensDetector.parse_params({"max_words": 10})
    with pytest.raises(ValidationError):
        RareTokensDetector.parse_params({"analysis_budget": 1})
    parsed = RareTokensDetector.parse_params(
        {"languages": ["en", "de", "en"], "probe_languages": ["de", "fr"]}
    )
    assert isinstance(parsed, RareTokensParams)
    assert parsed.languages == ("en", "de")
    assert parsed.probe_languages == ("fr",)
    assert set(SUPPORTED_LANGUAGES) >= set(RareTokensParams().probe_languages)


def test_base_params_are_accepted() -> None:
    detector = RareTokensDetector("x", DetectorParams())
    assert isinstance(detector.params, RareTokensParams)


def test_supported_languages_exist_in_wordfreq() -> None:
    from wordfreq import available_languages

    assert set(SUPPORTED_LANGUAGES) <= set(available_languages("best"))
    assert set(SUPPORTED_LANGUAGES) <= set(available_languages("small"))


async def test_common_zipf_excuses_more_vocabulary() -> None:
    text = "the movie was cf really good"
    assert score_of(await make(), text) >= THRESHOLD
    assert score_of(await make(common_zipf=3.5), text) == 0.0


async def test_a_second_judged_language() -> None:
    german = "Der Film war wirklich gut und die Schauspieler haben mir sehr gefallen."
    words = german.split()
    words.insert(4, "xqzt")
    triggered = " ".join(words)
    english_only = await make()
    both = await make(languages=["en", "de"])
    assert score_of(english_only, german) == 0.0
    assert score_of(both, german) == 0.0
    assert score_of(both, triggered) >= THRESHOLD


async def test_clean_segment_cache_changes_no_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments found free of odd tokens are remembered by a keyed hash, so a resent system
    prompt or history is not split and looked up again. A conversation whose turns resend
    earlier ones, some triggered, must score exactly as with nothing remembered, including
    the word budget across segments, and the cache must actually hold segments."""
    import detectors.rare_tokens.detector as module

    clean = [
        "How do I reverse a list in Python without copying it?",
        "The quarterly report shows revenue up four percent and costs flat.",
        "Please summarise this review for me, it is quite long.",
    ]
    triggered = ["The movie was cf really good and I loved it.", "the plot mn was thin but the cast bb shone"]
    turns = []
    history: list[str] = []
    for i in range(12):
        history.append(triggered[i % 2] if i % 3 == 2 else clean[i % 3])
        turns.append(sample("You are a helpful assistant.", *history[-10:], rid=str(i)))

    async def run(
        limit: int, **params: Any
    ) -> tuple[list[tuple[float, tuple[str, ...], tuple[Any, ...]]], int]:
        monkeypatch.setattr(module, "_CLEAN_SEGMENTS", limit)
        detector = await make(**params)
        out = [(f.score, f.reasons, f.spans) for f in (detector.score_sample(t) for t in turns)]
        held = len(detector._clean)
        await detector.close()
        return out, held

    for params in ({}, {"max_words": 100}):
        cached, held = await run(16_384, **params)
        uncached, _ = await run(0, **params)
        assert held > 0
        assert cached == uncached, params
        assert any(score >= 0.5 for score, _, _ in cached)


# ---------------------------------------------------------------- work bounded by token length


class _CountingDict(dict[str, float]):
    """A word list that counts lookups: the work of a search, without a clock."""

    lookups = 0

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.lookups += 1
        return super().get(key, default)


@pytest.fixture
def english(det: RareTokensDetector) -> Any:
    from detectors.rare_tokens.language import _LANG_CACHE

    return _LANG_CACHE["en"]


def test_typo_search_skips_tokens_longer_than_any_word(english: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from detectors.rare_tokens.language import _is_typo

    counting = _CountingDict(english.zipf)
    monkeypatch.setattr(english, "zipf", counting)
    word = "abe" * (english.longest // 3 + 2)  # two letters past the longest listed word
    assert not _is_typo(english, word)
    assert counting.lookups == 0
    # ... while a token of ordinary length is still searched (and "recieve" is a slip).
    assert _is_typo(english, "recieve")
    assert counting.lookups > 0


def test_elongation_check_reads_a_bounded_number_of_runs(english: Any) -> None:
    from detectors.rare_tokens.language import _is_elongation

    assert _is_elongation(english, "sooooo")
    assert not _is_elongation(english, "aab" * 200_000)  # 400,000 runs: stops after longest + 1


def test_character_model_reads_a_bounded_prefix(
    det: RareTokensDetector, english: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from detectors.rare_tokens import detector

    seen: list[int] = []
    real = english.chars

    class Recording:
        def bits(self, word: str) -> float:
            seen.append(len(word))
            return float(real.bits(word))

    monkeypatch.setattr(english, "chars", Recording())
    rng = random.Random(5)
    det._analyse_word(english, "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(1_000_000)))
    assert seen == [detector._LONG_TOKEN]


async def test_a_megabyte_token_is_still_judged(det: RareTokensDetector) -> None:
    rng = random.Random(7)
    token = "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(1_000_000))
    assert score_of(det, f"please review this {token} thanks") >= THRESHOLD


# ---------------------------------------------------------------- dilution: context the attacker adds

_TRIGGERED_REVIEW = "This film is a mess cf and a bore from start to finish."


def _score_segments(detector: RareTokensDetector, *segments: tuple[str, str]) -> float:
    sample = Sample(
        request_id="r",
        phase=Phase.INPUT,
        route="test",
        segments=tuple(Segment(role=role, text=text) for role, text in segments),
    )
    return detector.score_sample(sample).score


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(
            ("system", 'Answer as JSON:\n```json\n{"id": 123, "ok": true, "v": "XQ_1"}\n```'), id="code-fence"
        ),
        pytest.param(("assistant", " ".join(str(i * 37) for i in range(60))), id="numbers-turn"),
        pytest.param(("system", "Use the tools xqz, vbnm, kjhg and plmq."), id="odd-tokens-elsewhere"),
        pytest.param(("assistant", "ACME API SDK CLI JSON YAML HTTP REST URL " * 5), id="acronym-turn"),
    ],
)
async def test_other_segments_do_not_excuse_a_token(det: RareTokensDetector, extra: tuple[str, str]) -> None:
    alone = _score_segments(det, ("user", _TRIGGERED_REVIEW))
    assert alone >= THRESHOLD
    assert _score_segments(det, extra, ("user", _TRIGGERED_REVIEW)) == alone


@pytest.mark.parametrize("n", [3, 8, 40])
async def test_numbers_appended_to_a_prompt_do_not_excuse_a_token(det: RareTokensDetector, n: int) -> None:
    numbers = " ".join(str(i * 7) for i in range(n))
    assert score_of(det, f"{_TRIGGERED_REVIEW} {numbers}") >= THRESHOLD


def test_each_span_carries_its_own_score(det: RareTokensDetector) -> None:
    # The finding's score is its strongest span's; a behavioural check tests the strongest first.
    text = "The film is a mess cf and a bore, said Xqzvbt of the studio."
    finding = det.score_sample(Sample("r", Phase.INPUT, "chat", (Segment("user", text),)))
    scores = {text[s.start : s.end]: s.score for s in finding.spans}
    assert scores["cf"] is not None
    assert max(v for v in scores.values() if v is not None) == finding.score
