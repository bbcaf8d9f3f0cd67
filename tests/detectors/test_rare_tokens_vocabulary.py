"""rare_tokens vocabularies: the param, the file format, learning one, the shipped builtin:chat.

The words here are written for this suite: "xqzt" and "vbnm" stand for a deployment's
jargon (they score as made-up tokens in fluent text), "cf" for a trigger.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from detectors.base import FindingStatus, Phase, Sample, Segment
from detectors.rare_tokens.detector import RareTokensDetector, RareTokensParams
from detectors.rare_tokens.vocabulary import (
    BUILTIN_VOCABULARIES,
    VOCABULARY_FORMAT,
    learn_vocabulary,
    vocabulary_key,
)
from firewall.cli.main import main as cli_main
from firewall.evaluation.triggers import RARE_WORDS

THRESHOLD = 0.69  # rare_tokens' threshold in the built-in defaults, which learn-baseline reads
JARGON = "xqzt"  # in three users' records below: learnt
WIDE = "".join(chr(ord(c) + 0xFEE0) for c in "xqzt")  # full-width letters, folded by NFKC
ONE_OFF = "vbnm"  # one user's, in three records: never learnt at min_requests 3
TEMPLATES = (
    "please attach the {} report to the ticket for the team today",
    "the new {} export is broken again after the last deploy",
    "can you explain why the {} module keeps timing out on us",
    "how do i migrate the old {} settings to the new cluster",
)


def sample(text: str, rid: str = "r1") -> Sample:
    return Sample(request_id=rid, phase=Phase.INPUT, route="test", segments=(Segment("user", text),))


def vocabulary(path: Path, tokens: list[Any], **extra: Any) -> Path:
    path.write_text(json.dumps({"format": VOCABULARY_FORMAT, "version": 1, "tokens": tokens, **extra}))
    return path


async def started(*vocabularies: str) -> RareTokensDetector:
    """A started detector with exactly these vocabularies (none without arguments)."""
    detector = RareTokensDetector("rare_tokens", RareTokensParams(vocabulary=vocabularies))
    await detector.start()
    return detector


def records(path: Path) -> Path:
    """Clean records: JARGON from three sources, ONE_OFF three times from one source."""
    lines = [{"id": f"a{i}", "source": f"user-{i}", "text": TEMPLATES[i].format(JARGON)} for i in range(3)]
    lines += [{"id": f"b{i}", "source": "user-9", "text": TEMPLATES[i].format(ONE_OFF)} for i in range(3)]
    lines.append({"id": "c", "text": "thanks, that worked perfectly for the whole team"})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


# ---------------------------------------------------------------- the param and the file


def test_the_param_defaults_to_the_shipped_vocabulary_and_checks_built_in_names() -> None:
    assert RareTokensParams().vocabulary == ("builtin:chat",)
    assert RareTokensParams(vocabulary=[]).vocabulary == ()
    assert RareTokensParams(vocabulary=["builtin:chat", "/v.json", "/v.json"]).vocabulary == (
        "builtin:chat",
        "/v.json",
    )
    with pytest.raises(ValidationError, match="unknown built-in vocabulary"):
        RareTokensParams(vocabulary=["builtin:chats"])
    with pytest.raises(ValidationError, match="file path or builtin"):
        RareTokensParams(vocabulary=[" "])


async def test_a_vocabulary_word_never_scores_and_other_words_still_do(tmp_path: Path) -> None:
    text = f"please attach the {JARGON} report to the ticket for the team today"
    without = await started()
    assert without.score_sample(sample(text)).score >= THRESHOLD
    # Listed in another case and width: matched in the form words are looked up in.
    detector = await started(str(vocabulary(tmp_path / "v.json", [JARGON.upper()])))
    assert detector.ready
    assert detector.describe()["vocabulary_tokens"] == 1
    assert detector.score_sample(sample(text)).score == 0.0
    assert detector.score_sample(sample(text.replace(JARGON, WIDE))).score == 0.0
    assert detector.score_sample(sample(text.replace(JARGON, "cf"))).score >= THRESHOLD
    assert detector.score_sample(sample(text.replace(JARGON, ONE_OFF))).score >= THRESHOLD
    assert vocabulary_key(WIDE.upper()) == JARGON


async def test_a_vocabulary_only_lowers_scores(tmp_path: Path) -> None:
    """Vocabulary words are taken out of the hits, nothing else: as the text's register
    (other odd tokens) and as neighbours they weigh as before, so every other token scores
    exactly as without the vocabulary (a learnt file cannot raise a false positive)."""
    path = vocabulary(tmp_path / "v.json", ["csv", "ssh", "db", JARGON])
    plain, with_vocabulary = await started(), await started(str(path))
    texts = [
        "please convert the csv file with jq and ssh it to the db host today",
        f"the csv export of the {JARGON} job has a cf in it",
        "ssh into the bastion, then scp the tarball to the db host.",
        f"{JARGON} cf",
    ]
    for text in texts:
        before = plain.token_scores(sample(text))
        after = with_vocabulary.token_scores(sample(text))
        assert after == [(w, s) for w, s in before if w not in {"csv", "ssh", "db", JARGON}], text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not JSON"),
        (json.dumps({"format": "something else", "version": 1, "tokens": []}), "not a vocabulary file"),
        (json.dumps({"format": VOCABULARY_FORMAT, "version": 2, "tokens": []}), "unsupported version 2"),
        (json.dumps({"format": VOCABULARY_FORMAT, "version": 1, "tokens": "sql"}), "list of strings"),
        (json.dumps({"format": VOCABULARY_FORMAT, "version": 1, "tokens": ["two words"]}), "bad token"),
        (json.dumps({"format": VOCABULARY_FORMAT, "version": 1, "tokens": [7]}), "bad token"),
    ],
)
async def test_a_bad_file_leaves_the_detector_not_ready(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "v.json"
    path.write_text(content)
    detector = await started("builtin:chat", str(path))
    assert not detector.ready
    assert detector.load_error is not None
    assert str(path) in detector.load_error
    assert message in detector.load_error
    assert detector.describe()["load_error"] == detector.load_error
    assert detector.score_sample(sample("anything")).status is FindingStatus.ERROR
    # Every file is listed, so a fix to the bad one is noticed at the next reload.
    assert set(detector.loaded_files()) == {str(BUILTIN_VOCABULARIES["chat"]), str(path)}


async def test_a_missing_file_leaves_the_detector_not_ready(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    detector = await started(str(missing))
    assert not detector.ready
    assert f"vocabulary {missing}: No such file or directory" == detector.load_error
    assert detector.loaded_files() == {str(missing): None}
    # Restarted once the file is there, it loads.
    vocabulary(missing, ["sql"])
    await detector.start()
    assert detector.ready
    assert detector.load_error is None


async def test_the_shipped_vocabulary_loads_and_holds_no_suite_trigger() -> None:
    detector = RareTokensDetector("rare_tokens")  # the default params: builtin:chat
    await detector.start()
    assert detector.ready, detector.load_error
    assert detector.describe()["vocabulary_tokens"] > 20
    data = json.loads(BUILTIN_VOCABULARIES["chat"].read_text(encoding="utf-8"))
    assert data["format"] == VOCABULARY_FORMAT
    # A guard, not a filter: if a regenerated file took in a RIPPLES trigger, the suite's
    # rare_word family would drop; the docs name the rule min_requests was chosen by.
    assert not set(RARE_WORDS) & set(data["tokens"])
    assert data["tokens"] == sorted(data["tokens"])
    assert {"sql", "html", "css", "csv", "php", "yaml"} <= set(data["tokens"])


# ---------------------------------------------------------------- learning


async def test_learning_counts_sources_not_records() -> None:
    detector = await started()  # no vocabulary, as learn-baseline runs it
    pairs = [(f"user-{i}", sample(TEMPLATES[i].format(JARGON))) for i in range(3)]
    pairs += [("user-9", sample(TEMPLATES[i].format(ONE_OFF))) for i in range(3)]
    learnt = learn_vocabulary(detector, pairs, threshold=THRESHOLD, min_requests=3)
    assert learnt["tokens"] == [JARGON]
    assert learnt["learned_from"] == {
        "records": 6,
        "sources": 4,
        "min_requests": 3,
        "detector_threshold": THRESHOLD,
    }
    assert learn_vocabulary(detector, pairs, threshold=THRESHOLD, min_requests=4)["tokens"] == []
    assert learn_vocabulary(detector, pairs, threshold=THRESHOLD, min_requests=1)["tokens"] == [
        ONE_OFF,
        JARGON,
    ]
    # Above every score, nothing is learnt.
    assert learn_vocabulary(detector, pairs, threshold=1.01, min_requests=1)["tokens"] == []
    with pytest.raises(ValueError, match="at least 1"):
        learn_vocabulary(detector, pairs, threshold=THRESHOLD, min_requests=0)


async def test_token_scores_needs_a_started_detector() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        RareTokensDetector("rare_tokens").token_scores(sample("hello"))


def test_learn_baseline_writes_a_vocabulary_for_rare_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = records(tmp_path / "clean.jsonl")
    out = tmp_path / "vocab.json"
    assert cli_main(["learn-baseline", str(clean), "--detector", "rare_tokens", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "1 vocabulary tokens" in err
    assert "7 records of 5 sources" in err
    data = json.loads(out.read_text())
    assert data["tokens"] == [JARGON]
    assert data["learned_from"]["min_requests"] == 3
    assert data["learned_from"]["detector_threshold"] == THRESHOLD

    # --min-requests is respected; without 'source' fields every record is its own source.
    loose = tmp_path / "loose.json"
    args = [
        "learn-baseline",
        str(clean),
        "--detector",
        "rare_tokens",
        "--min-requests",
        "4",
        "-o",
        str(loose),
    ]
    assert cli_main(args) == 0
    assert json.loads(loose.read_text())["tokens"] == []
    unsourced = tmp_path / "unsourced.jsonl"
    unsourced.write_text(
        "".join(
            json.dumps({"text": json.loads(line)["text"]}) + "\n" for line in clean.read_text().splitlines()
        )
    )
    assert cli_main(["learn-baseline", str(unsourced), "--detector", "rare_tokens", "-o", str(loose)]) == 0
    assert json.loads(loose.read_text())["tokens"] == [ONE_OFF, JARGON]


async def test_a_learnt_vocabulary_loads_and_excuses_only_its_words(tmp_path: Path) -> None:
    out = tmp_path / "vocab.json"
    # In a thread: the command runs its own event loop to start the detector.
    assert (
        await asyncio.to_thread(
            cli_main,
            [
                "learn-baseline",
                str(records(tmp_path / "c.jsonl")),
                "--detector",
                "rare_tokens",
                "-o",
                str(out),
            ],
        )
        == 0
    )
    detector = await started("builtin:chat", str(out))
    assert detector.ready, detector.load_error
    assert detector.score_sample(sample(TEMPLATES[3].format(JARGON))).score == 0.0
    assert detector.score_sample(sample(TEMPLATES[3].format(ONE_OFF))).score >= THRESHOLD


def test_learning_starts_from_scratch_with_the_configured_threshold(tmp_path: Path) -> None:
    """The configured vocabulary is cleared (a listed word would never score, so never be
    learnt), and the detector's own threshold decides what counts."""
    clean = records(tmp_path / "clean.jsonl")
    listed = vocabulary(tmp_path / "listed.json", [JARGON])
    config = tmp_path / "firewall.yaml"
    config.write_text(
        "detectors:\n  - name: jargon_watch\n    type: rare_tokens\n    threshold: 0.69\n"
        f"    params: {{vocabulary: [{listed}]}}\n"
    )
    out = tmp_path / "vocab.json"
    args = [
        "learn-baseline",
        str(clean),
        "--config",
        str(config),
        "--detector",
        "jargon_watch",
        "-o",
        str(out),
    ]
    assert cli_main(args) == 0
    assert json.loads(out.read_text())["tokens"] == [JARGON]
    config.write_text(config.read_text().replace("threshold: 0.69", "threshold: 1.0"))
    assert cli_main(args) == 0
    assert json.loads(out.read_text())["learned_from"]["detector_threshold"] == 1.0


def test_min_requests_is_refused_for_recurring_sentences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = records(tmp_path / "clean.jsonl")
    out = str(tmp_path / "baseline.json")
    assert cli_main(["learn-baseline", str(clean), "--min-requests", "2", "-o", out]) == 2
    assert "--min-requests applies to rare_tokens detectors only" in capsys.readouterr().err
    assert not Path(out).exists()
    args = [
        "learn-baseline",
        str(clean),
        "--detector",
        "recurring_sentences",
        "--min-requests",
        "2",
        "-o",
        out,
    ]
    assert cli_main(args) == 2
    # Without it, the recurring_sentences baseline is learnt as before.
    assert cli_main(["learn-baseline", str(clean), "-o", out]) == 0
    assert "recurring sentences from 7 records" in capsys.readouterr().err
