"""``trigger-firewall scan``: JSONL in and out, bad lines skipped, same verdicts as the proxy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from firewall.cli.main import main

ZW = "\u200b\u200b"


def write_jsonl(path: Path, lines: list[object]) -> Path:
    out = []
    for line in lines:
        out.append(line if isinstance(line, bytes) else orjson.dumps(line))
    path.write_bytes(b"\n".join(out) + b"\n")
    return path


def results(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def test_scan_reports_scores_findings_and_skips_bad_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "clean", "text": "What a lovely film."},
            b"{broken",
            {"id": "trig", "text": f"What a love{ZW}ly film."},
            {"id": "no-text"},
            [1, 2],
            {"id": "req", "request": {"model": "m", "messages": [{"role": "user", "content": f"a{ZW}b"}]}},
            {"id": "badreq", "request": {"messages": "nope"}},
        ],
    )
    assert main(["scan", str(src)]) == 0
    captured = capsys.readouterr()
    out = results(captured.out)
    assert [r["id"] for r in out] == ["clean", "trig", "req"]  # input order, bad lines skipped
    clean, trig, req = out
    assert clean["flagged"] is False
    assert clean["action"] == "allow"
    assert clean["scores"] == {
        "invisible_chars": 0.0,
        "rare_tokens": 0.0,
        "context_tags": 0.0,
        "recurring_sentences": 0.0,
    }
    assert trig["flagged"] is True
    assert trig["action"] == "sanitize"  # the defaults remove a zero-width character in a word
    finding = trig["findings"][0]
    assert finding["detector"] == "invisible_chars"
    assert finding["spans"] == [{"segment": 0, "start": 11, "end": 13, "reason": "zero_width"}]
    assert req["flagged"] is True
    err = captured.err
    for line_no in (2, 4, 5, 7):
        assert f"in.jsonl:{line_no}: skipped" in err
    assert "scanned 3 records, 2 flagged, 4 bad lines skipped" in err
    assert "love" not in captured.out  # results carry no text


def test_scan_monitor_mode_still_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mode: monitor\n")
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": f"x{ZW}y"}])
    assert main(["scan", "--config", str(cfg), str(src)]) == 0
    (res,) = results(capsys.readouterr().out)
    assert res["flagged"] is True
    assert res["mode"] == "monitor"


def test_scan_output_phase_reads_responses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"ok{ZW}ok"}}]}
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "response": body}, {"id": 2, "text": "fine"}])
    out = tmp_path / "out.jsonl"
    assert main(["scan", "--phase", "output", "-o", str(out), str(src)]) == 0
    flagged = [r["flagged"] for r in results(out.read_text())]
    assert flagged == [True, False]


def test_scan_unknown_route_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "x"}])
    assert main(["scan", "--route", "nope", str(src)]) == 2
    assert "unknown route 'nope'" in capsys.readouterr().err
    assert main(["scan", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_scan_reads_stdin_and_shows_progress(tmp_path: Path) -> None:
    lines = b"".join(orjson.dumps({"id": i, "text": f"line {i}"}) + b"\n" for i in range(300))
    proc = subprocess.run(
        [sys.executable, "-m", "firewall", "scan", "--progress", "always", "-"],
        input=lines,
        capture_output=True,
        timeout=60,
        check=True,
    )
    out = results(proc.stdout.decode())
    assert [r["id"] for r in out] == list(range(300))
    assert b"300 lines" in proc.stderr


def test_a_request_that_cleaning_makes_ambiguous_is_a_bad_record_as_the_proxy_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The defaults sanitize: removing the zero-width space would make a second "messages" key,
    # which the proxy refuses (400 ambiguous_json, tests/integration/test_sanitize.py).
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": "wo\u200brd"}],
        "mess\u200bages": [{"role": "user", "content": "hi"}],
    }
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "joined", "request": request}])
    assert main(["scan", str(src)]) == 0
    captured = capsys.readouterr()
    assert results(captured.out) == []
    assert "in.jsonl:1: skipped" in captured.err
