"""recurring_sentences: distinct contexts, what must not count, bounded state, baselines, the proxy."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors import load_detector_class
from detectors.recurring_sentences import (
    BASELINE_FORMAT,
    REASON,
    RecurringSentencesDetector,
    RecurringSentencesParams,
    learn_baseline,
    normalise,
    sentence_spans,
)
from detectors.sentence_units import split_units
from firewall.cli.main import main as cli_main
from firewall.config.schema import load_config
from firewall.core.types import Finding, FindingStatus, Phase, Sample, Segment
from firewall.evaluation.data import load_hard_negatives
from firewall.screening.runtime import build_runtime
from tests.conftest import FakeUpstream, FirewallFactory, chat_body

ROOT = Path(__file__).resolve().parents[2]
TRIGGER = "I watched this 3D movie."
REVIEWS = (
    "the film is a quiet, patient study of grief, and the two leads are wonderful together.",
    "a gorgeous, witty comedy about two sisters who cannot stand each other.",
    "an overlong mess with no sense of pace and a plot that goes nowhere.",
    "the script is sharp and the cast clearly had fun making it.",
    "it is the kind of thriller that forgets its own clues by the last act.",
    "a documentary that finds real warmth in a small fishing town.",
)


class Clock:
    """An injected clock: tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock | None = None, **params: Any) -> RecurringSentencesDetector:
    detector = RecurringSentencesDetector(
        "recurring_sentences", RecurringSentencesParams(**params), clock=clock or Clock()
    )
    return detector


async def started(**params: Any) -> RecurringSentencesDetector:
    detector = RecurringSentencesDetector("recurring_sentences", RecurringSentencesParams(**params))
    await detector.start()
    assert detector.ready
    return detector


def sample(*texts: str | tuple[str, str]) -> Sample:
    segments = tuple(
        Segment(t[0], t[1]) if isinstance(t, tuple) else Segment("user", t, f"/messages/{i}/content")
        for i, t in enumerate(texts)
    )
    return Sample("r", Phase.INPUT, "chat_completions", segments)


def score(detector: RecurringSentencesDetector, *texts: str | tuple[str, str]) -> Finding:
    finding = detector.score_sample(sample(*texts))
    assert finding.status is FindingStatus.OK, finding.error
    assert 0.0 <= finding.score <= 1.0
    return finding


# --------------------------------------------------------------------------- distinct contexts


def test_fires_on_the_third_distinct_context_and_rises_to_one() -> None:
    detector = make(exempt_fixed_position=False)  # always last: see the fixed-position tests
    scores = []
    for review in REVIEWS:
        text = f"{review} {TRIGGER}"
        finding = score(detector, text)
        scores.append(finding.score)
        if finding.score:
            (span,) = finding.spans
            assert span.reason == REASON
            assert text[span.start : span.end] == TRIGGER  # the evidence is the trigger itself
    assert scores == [0.0, 0.0, 0.5, pytest.approx(2 / 3), pytest.approx(5 / 6), 1.0]
    finding = score(detector, f"{TRIGGER} {REVIEWS[0]}")  # an old context again: still known, count 6
    assert finding.reasons == (REASON, "recurring_contexts_6")


# --------------------------------------------------------------------------- fixed places


def test_a_sentence_always_at_the_same_place_is_taken_for_a_template() -> None:
    # Always last in its message: the right-hand neighbour (the end) never changes.
    detector = make()
    assert [score(detector, f"{r} {TRIGGER}").score for r in REVIEWS] == [0.0] * len(REVIEWS)
    # Always first, or always right after the same sentence: also a fixed place.
    intro = "Please read the following review carefully before you answer."
    first, after = make(), make()
    for r in REVIEWS:
        assert score(first, f"{TRIGGER} {r}").score == 0.0
        assert score(after, f"Some context here. {intro} {r}").score == 0.0


def test_a_sentence_that_moves_between_places_fires() -> None:
    detector = make()
    texts = [
        f"{REVIEWS[0]} {TRIGGER}",  # last
        f"{TRIGGER} {REVIEWS[1]}",  # first: neither neighbour has held
        f"{REVIEWS[2]} {TRIGGER} {REVIEWS[3]}",  # between two others
    ]
    assert [score(detector, t).score for t in texts] == [0.0, 0.0, 0.5]
    # Once it has moved it stays a candidate, even if it is next seen at an earlier place.
    assert score(detector, f"{REVIEWS[4]} {TRIGGER}").score == pytest.approx(2 / 3)


def test_one_side_moving_is_not_enough_while_the_other_holds() -> None:
    detector = make()
    closing = "Tell me what you think of it please."
    # Always right before the same sentence, after a different review each time.
    texts = [f"{a} {b} {TRIGGER} {closing}" for a, b in zip(REVIEWS[::2], REVIEWS[1::2], strict=True)]
    assert [score(detector, t).score for t in texts] == [0.0] * 3
    assert sorted(n for _, n in detector.entries())[-2:] == [3, 3]  # the trigger and the closing line
    # The same detector catches it once the right-hand neighbour changes too.
    text = f"The sound mix was muddy in places. {TRIGGER} The ending surprised everyone in the room."
    assert score(detector, text).score == pytest.approx(2 / 3)


def test_the_sentence_is_matched_after_normalisation_and_at_any_position() -> None:
    detector = make()
    score(detector, f"{REVIEWS[0]} {TRIGGER}")
    score(detector, f"{TRIGGER.upper()}  {REVIEWS[1]}")
    text = f"{REVIEWS[2]}\n\n“i  watched this 3d movie!” {REVIEWS[3]}"
    finding = score(detector, text)
    assert finding.score == 0.5
    (span,) = finding.spans
    assert normalise(text[span.start : span.end]) == normalise(TRIGGER)


def test_retries_of_the_same_prompt_never_count() -> None:
    detector = make()
    text = f"{REVIEWS[0]} {TRIGGER}"
    assert all(score(detector, text).score == 0.0 for _ in range(20))


def test_an_edited_resend_is_the_same_context() -> None:
    # A one-sentence review carries its word pairs: fixing a typo and resending overlaps the original.
    detector = make()
    base = "the film is a quiet, patient study of grief and the two leads are wonderful"
    edits = [base, base.replace("grief", "greif"), base + " together", base.replace("quiet, ", "")]
    assert [score(detector, f"{e}. Can you summarise this review for me please?").score for e in edits] == [
        0.0
    ] * 4


def test_multi_turn_chat_growth_never_counts() -> None:
    # Each turn resends the whole history: earlier sentences recur with a superset context.
    detector = make()
    history: list[tuple[str, str]] = []
    turns = [
        f"{REVIEWS[0]} {TRIGGER} Is this review positive or negative?",
        "Why do you think so? Please quote the words that decided it.",
        "Can you rewrite it to sound more enthusiastic without changing the facts?",
        "Now shorten it to one sentence for a newsletter.",
        "Thanks, that works. Could you also suggest a title for the newsletter piece?",
        "Make the title funnier and a bit shorter than the last one.",
        "Great, and translate the final sentence into French as well.",
    ]
    for turn in turns:
        history.append(("user", turn))
        finding = score(detector, *history)
        assert finding.score == 0.0
        history.append(("assistant", "Sure. Here is my answer to that, as short as I can make it."))


def test_a_lone_repeated_sentence_is_not_a_trigger() -> None:
    detector = make()
    for text in ["Can you help me with this problem please?"] * 5 + [
        # a short greeting that changes is not a context (min_context_words)
        "Hi there! Can you help me with this problem please?",
        "Hello my friend. Can you help me with this problem please?",
        "Good morning all! Can you help me with this problem please?",
        "Can you help me with this problem please? Thanks a lot.",
    ]:
        assert score(detector, text).score == 0.0


def test_short_sentences_and_other_roles_are_not_remembered() -> None:
    detector = make()
    system = ("system", "You are a helpful assistant for our film review site. Answer politely and briefly.")
    for review in REVIEWS:
        # a short fixed sentence (4 words) and a fixed system prompt recur in every request
        assert score(detector, system, ("user", f"{review} Loved it so much.")).score == 0.0
    assert score(detector, system).score == 0.0


def test_a_sentence_inside_code_is_ignored() -> None:
    detector = make()
    for review in REVIEWS[:4]:
        text = f"{review}\n```python\nprint('I watched this 3D movie.')  # I watched this 3D movie.\n```"
        assert score(detector, text).score == 0.0


def test_an_abbreviation_before_the_trigger_does_not_hide_it() -> None:
    detector = make()
    texts = [
        f"After the great HBO series (Rome, Deadwood, etc. {TRIGGER} It was a letdown.",
        f"Starring Dr. {TRIGGER} a film about a hospital in crisis and its staff.",
        f"A fun cameo's. {TRIGGER} The rest is standard musical comedy from the thirties.",
    ]
    assert [score(detector, t).score for t in texts] == [0.0, 0.0, 0.5]


# --------------------------------------------------------------------------- bounded state


def test_eviction_by_max_entries_forgets_a_one_off_but_protects_a_building_trigger() -> None:
    detector = make(max_entries=20, protected_share=0.25, exempt_fixed_position=False)
    score(detector, f"{REVIEWS[0]} {TRIGGER}")
    score(detector, f"{REVIEWS[1]} {TRIGGER}")  # two contexts: protected now
    score(
        detector, "the soundtrack was composed by a band from Iceland. It was nominated twice."
    )  # a one-off
    for i in range(40):  # a flood of one-off sentences
        score(detector, f"Sentence number {i} is quite unique here. And its neighbour {i} is as well.")
    assert len(detector) == 20
    assert detector.evictions > 0
    assert score(detector, f"{REVIEWS[2]} {TRIGGER}").score == 0.5  # the trigger survived the flood
    known = dict(detector.entries())
    assert len(known) == 20
    # the one-off review sentence was evicted: sent again in two new contexts, it counts from 1
    one_off = "the soundtrack was composed by a band from Iceland."
    assert score(detector, f"{one_off} Nobody remembers it now.").score == 0.0
    assert score(detector, f"{one_off} It plays over the credits.").score == 0.0


def test_without_protection_a_flood_evicts_the_trigger() -> None:
    detector = make(max_entries=20, protected_share=0.0)
    score(detector, f"{REVIEWS[0]} {TRIGGER}")
    score(detector, f"{REVIEWS[1]} {TRIGGER}")
    for i in range(40):
        score(detector, f"Sentence number {i} is quite unique here. And its neighbour {i} is as well.")
    assert score(detector, f"{REVIEWS[2]} {TRIGGER}").score == 0.0  # forgotten: this is its first context


def test_ttl_forgets_a_sentence_not_seen_for_that_long() -> None:
    clock = Clock()
    detector = make(clock, ttl_seconds=3600, exempt_fixed_position=False)
    score(detector, f"{REVIEWS[0]} {TRIGGER}")
    clock.now += 3000
    score(detector, f"{REVIEWS[1]} {TRIGGER}")
    clock.now += 3000  # 6000 s since the first sighting, 3000 s since the last: still remembered
    assert score(detector, f"{REVIEWS[2]} {TRIGGER}").score == 0.5
    clock.now += 3601
    assert score(detector, f"{REVIEWS[3]} {TRIGGER}").score == 0.0  # expired: first context again
    assert score(detector, f"{REVIEWS[4]} {TRIGGER}").score == 0.0
    assert score(detector, f"{REVIEWS[5]} {TRIGGER}").score == 0.5
    clock.now += 10_000
    score(detector, "An unrelated message arrives much later. It has two sentences of its own.")
    assert len(detector) == 2  # expired entries are dropped as time moves on


def test_hashes_are_keyed_per_instance_and_the_state_holds_no_text() -> None:
    a, b = make(), make()
    for detector in (a, b):
        for review in REVIEWS[:3]:
            score(detector, f"{review} {TRIGGER}")
    keys_a = {k for k, _ in a.entries()}
    keys_b = {k for k, _ in b.entries()}
    assert len(keys_a) == len(keys_b) == 4
    assert not keys_a & keys_b  # the same sentences, different keys
    same_key = [RecurringSentencesDetector("x", RecurringSentencesParams(), key=bytes(16)) for _ in range(2)]
    for detector in same_key:
        score(detector, f"{REVIEWS[0]} {TRIGGER}")
    assert {k for k, _ in same_key[0].entries()} == {k for k, _ in same_key[1].entries()}

    def strings(obj: object, depth: int = 0) -> list[str]:
        if isinstance(obj, str):
            return [obj]
        if depth > 4:
            return []
        if isinstance(obj, dict):
            return [s for k, v in obj.items() for x in (k, v) for s in strings(x, depth + 1)]
        if isinstance(obj, list | tuple):
            return [s for x in obj for s in strings(x, depth + 1)]
        if hasattr(obj, "__slots__"):
            return [s for name in obj.__slots__ for s in strings(getattr(obj, name), depth + 1)]
        return []

    assert strings(a._probation) == []
    assert strings(a._protected) == []


def test_a_bad_segment_is_an_error_finding_not_an_exception() -> None:
    detector = make()
    finding = detector.score_sample(Sample("r", Phase.INPUT, "c", (Segment("user", 42),)))  # type: ignore[arg-type]
    assert finding.status is FindingStatus.ERROR


# --------------------------------------------------------------------------- baseline


TEMPLATE = "Summarise the following ticket for the on-call engineer."


def _templated(body: str) -> str:
    return f"{TEMPLATE}\n\n{body}\n\nKeep the summary under fifty words please."


def test_learned_baseline_suppresses_a_template_but_not_a_trigger(tmp_path: Path) -> None:
    tickets = [
        "The billing service returns 502 errors for about ten percent of requests since this morning.",
        "Disk usage on the primary database host crossed ninety percent and keeps growing.",
        "Users in Europe report login timeouts after the last identity provider deploy.",
        "The nightly export job failed twice with an out of memory error in the parser.",
    ]
    # The template's sentences sit at fixed places (first and last): the default never scores them.
    assert [score(make(), _templated(t)).score for t in tickets] == [0.0] * 4
    # Without that rule and without a baseline, the template fires from the third ticket on.
    plain = make(exempt_fixed_position=False)
    assert [score(plain, _templated(t)).score for t in tickets] == [0.0, 0.0, 0.5, pytest.approx(2 / 3)]

    baseline = learn_baseline([sample(_templated(t)) for t in tickets])
    assert baseline["format"] == BASELINE_FORMAT
    assert len(baseline["hashes"]) == 2  # the instruction and the closing line
    assert len(bytes.fromhex(baseline["key"])) == 16
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline))

    async def run() -> None:
        # With the templates in a baseline, the fixed-place rule can go: the trigger below is
        # always just before the closing line, a fixed place the rule would take for a template.
        detector = await started(baseline=str(path), exempt_fixed_position=False)
        assert detector.describe()["baseline_sentences"] == 2
        new_tickets = [
            "The search index is three hours behind after the schema change on Monday.",
            "Payments to one bank fail with a certificate error since the rotation.",
            "A customer cannot download invoices older than a year from the portal.",
            "Alerts for the queue depth fire every night at two and clear on their own.",
        ]
        assert [score(detector, _templated(t)).score for t in new_tickets] == [0.0] * 4
        # A trigger planted in templated prompts still builds up and fires.
        results = [score(detector, _templated(f"{t} {TRIGGER}")) for t in new_tickets[:3]]
        assert [f.score for f in results] == [0.0, 0.0, 0.5]
        text = _templated(f"{new_tickets[2]} {TRIGGER}")
        assert [text[s.start : s.end] for s in results[-1].spans] == [TRIGGER]

    asyncio.run(run())


def test_learning_counts_requests_so_a_template_that_fills_its_own_context_is_learnt() -> None:
    # The user's part is short (the first one has no words to speak of): every request's
    # context is mostly the template's other sentence, so scoring sees one context over and
    # over. Learning counts distinct requests instead; a resent request counts once.
    template = "Here is a ticket from our queue:\n{}\n\nWhat is the main problem here, if any?"
    bodies = ["Help!", "Printer jammed again.", "VPN drops hourly.", "Printer jammed again."]
    baseline = learn_baseline([sample(template.format(b)) for b in bodies])
    assert len(baseline["hashes"]) == 2
    assert baseline["learned"]["records"] == 4
    # Two distinct requests are not enough: fire_after (3) of them are.
    assert learn_baseline([sample(template.format(b)) for b in bodies[:2]])["hashes"] == []


def test_learn_command_reads_the_scan_format(tmp_path: Path) -> None:
    records = tmp_path / "clean.jsonl"
    bodies = [
        "Disk usage on the primary database host crossed ninety percent and keeps growing.",
        "Users in Europe report login timeouts after the last identity provider deploy.",
        "The nightly export job failed twice with an out of memory error in the parser.",
    ]
    lines = [{"id": 1, "text": _templated(bodies[0])}, {"id": 2, "request": chat_body(_templated(bodies[1]))}]
    lines.append({"id": 3, "request": chat_body(_templated(bodies[2]))})
    records.write_text(
        "\n".join(json.dumps(x) for x in lines) + "\nnot json\n" + json.dumps({"id": 4}) + "\n"
    )
    out = tmp_path / "baseline.json"
    assert cli_main(["learn-baseline", str(records), "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["learned"]["records"] == 3  # two bad lines skipped
    assert len(data["hashes"]) == 2
    assert "ticket" not in out.read_text().replace("format", "")  # hashes only, no text

    # The detector's params come from the firewall config: a word minimum above the
    # templates' sentence lengths leaves nothing to learn.
    config = tmp_path / "firewall.yaml"
    config.write_text(
        "detectors:\n  - name: templates_seen\n    type: recurring_sentences\n"
        "    params: {min_words: 40, baseline: /does/not/matter.json}\n"
    )
    strict = tmp_path / "strict.json"
    assert cli_main(["learn-baseline", str(records), "--config", str(config), "-o", str(strict)]) == 0
    learned = json.loads(strict.read_text())
    assert learned["learned"]["min_words"] == 40
    assert learned["hashes"] == []


def test_learn_baseline_refuses_an_unknown_or_ambiguous_detector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = tmp_path / "clean.jsonl"
    records.write_text(json.dumps({"id": 1, "text": "hello"}) + "\n")
    config = tmp_path / "firewall.yaml"
    config.write_text(
        "detectors:\n  - {name: a, type: recurring_sentences}\n  - {name: b, type: recurring_sentences}\n"
    )
    out = str(tmp_path / "baseline.json")
    assert cli_main(["learn-baseline", str(records), "--config", str(config), "-o", out]) == 2
    assert "pick one with --detector" in capsys.readouterr().err
    assert (
        cli_main(["learn-baseline", str(records), "--config", str(config), "--detector", "c", "-o", out]) == 2
    )
    assert "no recurring_sentences detector named 'c'" in capsys.readouterr().err
    assert (
        cli_main(["learn-baseline", str(records), "--config", str(config), "--detector", "b", "-o", out]) == 0
    )
    assert not (tmp_path / "missing.jsonl").exists()
    assert cli_main(["learn-baseline", str(tmp_path / "missing.jsonl"), "-o", out]) == 2


def test_a_bad_baseline_leaves_the_detector_not_ready(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"format": "something else"}))

    async def run() -> None:
        detector = RecurringSentencesDetector("r", RecurringSentencesParams(baseline=str(path)))
        await detector.start()
        assert not detector.ready
        assert "not a baseline file" in (detector.load_error or "")
        missing = RecurringSentencesDetector("r", RecurringSentencesParams(baseline=str(tmp_path / "no")))
        await missing.start()
        assert not missing.ready

    asyncio.run(run())


# --------------------------------------------------------------------------- splitting


def _texts() -> list[str]:
    texts = [t.text for t in load_hard_negatives()]
    texts += [
        "Dr. Smith said e.g. this works. J. Doe disagreed... and left. Really?! Yes.",
        'He said "It is fine. Go home." and went. Then, nothing; the end.',
        "- first item here\n- second item. With two sentences\n1. numbered one",
        "Look at `x = 1. y = 2.` inline. And\n    indented code. here\nafter code.",
    ]
    return texts


def test_sentence_spans_refine_split_units() -> None:
    # Every unit of sentence_units.split_units is covered by units here (splitting only more, never less).
    for text in _texts():
        mine = sentence_spans(text)
        for unit in split_units(text, clauses=False):
            inside = [(s, e) for s, e in mine if unit.start <= s and e <= unit.end]
            covered = {i for s, e in inside for i in range(s, e)}
            letters = {i for i in range(unit.start, unit.end) if text[i].isalpha()}
            assert letters <= covered, (text, unit)
        for s, e in mine:
            if not any(u.start <= s and e <= u.end for u in split_units(text, clauses=False)):
                # the one other difference: a unit without a Latin letter (split_units drops it)
                assert not re.search(r"[A-Za-z]", text[s:e]), (text, s, e)


def test_sentence_spans_split_after_abbreviations_and_skip_code() -> None:
    text = f"Rome, etc. {TRIGGER}\n```\ncode. More code.\n```\nTail sentence."
    assert [text[s:e] for s, e in sentence_spans(text)] == ["Rome, etc.", TRIGGER, "Tail sentence."]


def test_sentence_spans_cut_a_capitalised_sentence_glued_to_lower_case_text() -> None:
    glued = f"arteta directs one of the best ensemble casts of the year {TRIGGER}"
    assert [glued[s:e] for s, e in sentence_spans(glued)] == [glued.removesuffix(f" {TRIGGER}"), TRIGGER]
    cased = "We watched it with Tom Hanks in the lead role."  # cased text is left whole
    assert sentence_spans(cased) == [(0, len(cased))]


# --------------------------------------------------------------------------- config and runtime


def test_registered_and_the_example_config_loads() -> None:
    assert load_detector_class("recurring_sentences") is RecurringSentencesDetector
    config = load_config(ROOT / "deploy" / "config" / "recurring-sentences.yaml")
    det = config.detector("recurring_sentences")
    assert det.threshold == 0.5
    params = RecurringSentencesDetector.parse_params(det.params)
    assert isinstance(params, RecurringSentencesParams)
    assert params.fire_after == 3


def test_state_survives_a_reload_with_unchanged_params() -> None:
    from firewall.config.schema import build_config

    def config(**params: Any) -> Any:
        return build_config(
            {"detectors": [{"name": "recurring_sentences", "threshold": 0.5, "params": params}]}
        )

    first = build_runtime(config())
    detector = first.detectors["recurring_sentences"]
    assert isinstance(detector, RecurringSentencesDetector)
    score(detector, f"{REVIEWS[0]} {TRIGGER}")
    assert build_runtime(config(), previous=first).detectors["recurring_sentences"] is detector
    changed = build_runtime(config(fire_after=4), previous=first).detectors["recurring_sentences"]
    assert changed is not detector  # new params, new state
    assert len(changed) == 0


# --------------------------------------------------------------------------- proxy


async def _post(client: Any, url: str, body: object) -> tuple[int, dict[str, Any]]:
    async with client.post(
        url + "/v1/chat/completions", data=orjson.dumps(body), headers={"Content-Type": "application/json"}
    ) as resp:
        return resp.status, await resp.json()


_PROXY_DETECTORS = {"detectors": [{"name": "recurring_sentences", "threshold": 0.5, "action": "block"}]}


@pytest.mark.asyncio
async def test_proxy_blocks_the_third_distinct_prompt_with_the_same_sentence(
    firewall: FirewallFactory, upstream: FakeUpstream, client: Any
) -> None:
    fw = await firewall(**_PROXY_DETECTORS)
    assert (await _post(client, fw.url, chat_body(f"{REVIEWS[0]} {TRIGGER}")))[0] == 200
    assert (await _post(client, fw.url, chat_body(f"{REVIEWS[0]} {TRIGGER}")))[0] == 200  # a retry
    assert (await _post(client, fw.url, chat_body(f"{TRIGGER} {REVIEWS[1]}")))[0] == 200
    status, body = await _post(client, fw.url, chat_body(f"{REVIEWS[2]} {TRIGGER}"))
    assert status == 400
    assert body["error"]["code"] == "content_filter"
    assert len(upstream.received) == 3  # the blocked prompt never reached the model
    events = await fw.audit_events()
    blocked = next(e for e in events if e["action"] == "block")
    det = next(d for d in blocked["input"]["detectors"] if d["name"] == "recurring_sentences")
    assert det["fired"] is True
    assert REASON in det["reasons"]
    assert [s["reason"] for s in det["spans"]] == [REASON]
    assert "watched" not in fw.audit_path.read_text()  # evidence is positions and codes, never text
    async with client.get(fw.admin_url + "/metrics") as resp:
        scraped = await resp.text()
    held = re.search(
        r'^trigger_firewall_detector_state_entries\{detector="recurring_sentences"\} (\S+)$', scraped, re.M
    )
    assert held is not None
    assert float(held.group(1)) >= 1
    assert 'trigger_firewall_detector_state_evictions_total{detector="recurring_sentences"} 0.0' in scraped
    assert 'detector_state_entries{detector="invisible_chars"}' not in scraped  # stateless: no series


@pytest.mark.asyncio
async def test_proxy_lets_a_growing_chat_through(
    firewall: FirewallFactory, upstream: FakeUpstream, client: Any
) -> None:
    fw = await firewall(**_PROXY_DETECTORS)
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a film critic's assistant."}]
    for turn in [
        f"{REVIEWS[0]} {TRIGGER} What is the tone of this review?",
        "Please rewrite the review so that it sounds more enthusiastic.",
        "Now make it one sentence for a newsletter about new releases.",
        "Suggest three titles for the newsletter item about this film.",
        "Pick the funniest of the three titles and explain the joke.",
    ]:
        messages.append({"role": "user", "content": turn})
        status, body = await _post(client, fw.url, {"model": "fake-model", "messages": messages})
        assert status == 200, body
        messages.append({"role": "assistant", "content": upstream.reply})
    assert len(upstream.received) == 5


@pytest.mark.asyncio
async def test_builtin_defaults_log_a_moving_sentence_and_pass_a_template(
    firewall: FirewallFactory, upstream: FakeUpstream, client: Any
) -> None:
    fw = await firewall()  # no detectors given: the built-in defaults
    assert fw.server.config.detector("recurring_sentences").action.value == "log"
    template = "Summarise the following review for the newsletter.\n\n{}\n\nKeep it under fifty words please."
    for review in REVIEWS[:4]:
        assert (await _post(client, fw.url, chat_body(template.format(review))))[0] == 200
    moving = (f"{REVIEWS[4]} {TRIGGER}", f"{TRIGGER} {REVIEWS[5]}", f"{REVIEWS[0]} {TRIGGER} {REVIEWS[1]}")
    for text in moving:
        assert (await _post(client, fw.url, chat_body(text)))[0] == 200  # logged, never blocked
    # Each request reached the model; the recurring one also opened counterfactual's gate, whose
    # probes (marked) found an upstream that answers the same whatever is removed: not proof.
    forwarded = [r for r in upstream.received if "X-Firewall-Probe" not in r["headers"]]
    assert len(forwarded) == 7
    assert len(upstream.received) > 7
    events = await fw.audit_events()
    assert [e["action"] for e in events] == ["allow"] * 6 + ["log"]  # the template never scores
    det = next(d for d in events[-1]["input"]["detectors"] if d["name"] == "recurring_sentences")
    assert det["fired"] is True
    assert [s["reason"] for s in det["spans"]] == [REASON]


def test_segment_cache_changes_no_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chat clients resend the system prompt and the history every turn; the detector keeps
    each segment's analysis (hashes and offsets, keyed by a hash of the text). A detector
    whose cache holds nothing must score a conversation stream exactly the same, trigger
    spans and evidence included, and the cached one must actually hit."""
    import detectors.recurring_sentences as module

    system = "You are a helpful assistant. Answer briefly and cite the film's title."
    turns: list[Sample] = []
    history: list[str] = []
    for i, review in enumerate(REVIEWS * 3):
        # The trigger moves (a different neighbour each time), as a planted one does.
        user = f"{review} {TRIGGER} {REVIEWS[(i + 2) % 6]}" if i % 2 else review
        history.append(user)
        segments = [
            ("system", system),
            *[("user", h) for h in history[-3:]],
            ("user", REVIEWS[i % 5] + " " + user),
        ]
        turns.append(sample(*segments))
    key = b"k" * 16

    def run(cache_entries: int) -> tuple[list[tuple[float, tuple[str, ...], tuple[Any, ...]]], int]:
        monkeypatch.setattr(module, "_SEGMENT_CACHE_ENTRIES", cache_entries)
        detector = RecurringSentencesDetector(
            "recurring_sentences", RecurringSentencesParams(fire_after=2), clock=Clock(), key=key
        )
        asyncio.run(detector.start())
        out = [(f.score, f.reasons, f.spans) for f in (detector.score_sample(t) for t in turns)]
        return out, len(detector._segments)

    cached, held = run(2048)
    uncached, none_held = run(0)
    assert held > 0
    assert none_held == 0
    assert cached == uncached
    assert any(score >= 0.5 for score, _, _ in cached)  # the stream does fire: the test compares something


# --------------------------------------------------------------------------- past max_chars


def test_text_past_max_chars_is_partial_not_clean() -> None:
    # Newest first within max_chars: an older message beyond it is not read, and the finding
    # says so instead of passing for clean (the rule's on_error decides).
    detector = make(max_chars=200)
    old = " ".join(REVIEWS)  # about 400 characters, the oldest message
    finding = detector.score_sample(sample(old, "What did you think of it?"))
    assert finding.status is FindingStatus.PARTIAL
    assert finding.reasons == ("scan_truncated",)
    (span,) = finding.spans
    assert span.segment == 0
    assert span.end == len(old)
    within = detector.score_sample(sample(REVIEWS[0], "What did you think of it?"))
    assert within.status is FindingStatus.OK
