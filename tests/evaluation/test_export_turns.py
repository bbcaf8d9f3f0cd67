"""export_turns: a split's human turns as the JSONL records learn-baseline reads."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from firewall.evaluation.export_turns import export_turns, main
from firewall.evaluation.real_traffic import conversation_of, split_of
from tests.evaluation.test_real_traffic import conversation, ids_with_first_digit, write_cut_file


def test_the_source_is_the_conversation_without_its_part_suffix() -> None:
    assert conversation_of("OSYsAOr_33/7") == "OSYsAOr"
    assert conversation_of("OSYsAOr/7") == "OSYsAOr"
    assert conversation_of("a_b_12/0") == "a_b"
    assert conversation_of("x_y/3") == "x_y"


def test_only_the_named_split_is_written_with_each_conversation_as_source(tmp_path: Path) -> None:
    # Two parts of one conversation, both in the dev split (the dump cuts long ones so).
    parts = next(
        (f"long{i}_0", f"long{i}_1")
        for i in itertools.count()
        if split_of(f"long{i}_0") == split_of(f"long{i}_1") == "dev"
    )
    dev = [*ids_with_first_digit("0123456789abcd", 2), *parts]
    test = ids_with_first_digit("e", 2)
    reserved = ids_with_first_digit("f", 1)
    data = write_cut_file(
        tmp_path / "sg.json", [conversation(c, f"question {c}") for c in dev + test + reserved]
    )
    out = tmp_path / "dev.jsonl"
    assert export_turns("dev", out, data_path=data, min_conversations=1) == 4
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"{c}/0" for c in dev]
    assert [r["text"] for r in rows] == [f"question {c}" for c in dev]
    assert [r["source"] for r in rows[2:]] == [parts[0].removesuffix("_0")] * 2
    assert export_turns("test", out, data_path=data, min_conversations=1, limit=1) == 1
    assert json.loads(out.read_text())["id"] in {f"{c}/0" for c in test}


def test_the_command_refuses_the_reserved_split(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--split", "reserved", "-o", "/dev/null"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
