"""``calibrate``: thresholds that hold their FPR on held-out data, exact bounds, refusals, patches.

The statistical tests draw clean scores from distributions whose true FPR at
any threshold is known in closed form, calibrate on one sample and check the
claim the tool makes (the true FPR is below the stated upper bound with the
stated confidence) on fresh samples, over fixed seeds.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import orjson
import pytest

from firewall.cli.calibrate import add_calibrate_parser, run_calibrate
from firewall.config.schema import build_config, deep_merge, load_config, load_yaml, read_config_file
from firewall.core.types import Phase
from firewall.offline.calibration import (
    SampleTooSmallError,
    ScoreSample,
    allowed_exceedances,
    binom_cdf,
    build_patch,
    calibrate,
    calibrate_detector,
    choose_threshold,
    clopper_pearson_upper,
    family_tpr,
    format_table,
    min_sample_size,
    patch_header,
    read_sample,
    render_patch,
    score_pending,
    verify_patch,
    write_plot,
)
from firewall.offline.scanning import Scanner
from tests.conftest import TRIGGER, FirewallFactory, chat_body

ZW = "\u200b\u200b"
MIN_N_1PCT = 523  # min_sample_size(0.01) at 95%: the smallest n after the last failing saw-tooth


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIGGER_FIREWALL_CONFIG", raising=False)


def skewed(rng: random.Random) -> float:
    """A clean-score draw with survival P(score >= t) = (1 - t) ** 8 (most mass near 0)."""
    return 1.0 - math.pow(rng.random(), 0.125)


def score_line(score: float, route: str = "chat_completions", phase: str = "input", **extra: Any) -> bytes:
    """A score-log line exactly as ``write_scores`` writes it."""
    event = {
        "event": "firewall.scores",
        "request_id": "req",
        "route": route,
        "phase": phase,
        "mode": "monitor",
        "config_hash": "0123456789abcdef",
        "scores": {"invisible_chars": score},
        "statuses": {"invisible_chars": "ok"},
        "fired": [],
        **extra,
    }
    return orjson.dumps(event)


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


# --------------------------------------------------------------------------- statistics


def _exact_cdf(k: int, n: int, p: Fraction) -> Fraction:
    return sum((Fraction(math.comb(n, i)) * p**i * (1 - p) ** (n - i) for i in range(k + 1)), Fraction(0))


@pytest.mark.parametrize(("k", "n", "p"), [(0, 10, "1/3"), (3, 20, "1/10"), (7, 30, "1/4"), (29, 30, "9/10")])
def test_binomial_cdf_matches_exact_rational_arithmetic(k: int, n: int, p: str) -> None:
    assert binom_cdf(k, n, float(Fraction(p))) == pytest.approx(
        float(_exact_cdf(k, n, Fraction(p))), rel=1e-12
    )


def test_clopper_pearson_upper_bound_known_values() -> None:
    # k = 0 has a closed form (the "rule of three"): 1 - 0.05 ** (1/100) = 0.029513
    assert clopper_pearson_upper(0, 100, 0.95) == pytest.approx(0.0295130, abs=1e-6)
    assert clopper_pearson_upper(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-12)
    # R: binom.test(10, 1000, alternative = "less")$conf.int[2] = 0.01690318
    assert clopper_pearson_upper(10, 1000, 0.95) == pytest.approx(0.0169032, abs=1e-6)
    # R: binom.test(3, 300, alternative = "less")$conf.int[2] = 0.02564139
    assert clopper_pearson_upper(3, 300, 0.95) == pytest.approx(0.0256414, abs=1e-6)
    # the defining property: seeing k or fewer has probability alpha at the bound
    for k, n in ((10, 1000), (100, 10_000), (5, 40)):
        assert binom_cdf(k, n, clopper_pearson_upper(k, n, 0.9)) == pytest.approx(0.1, abs=1e-9)
    assert clopper_pearson_upper(7, 7) == 1.0
    assert clopper_pearson_upper(10, 1000, 0.99) > clopper_pearson_upper(10, 1000, 0.95)


def test_min_sample_size_is_where_the_bound_stays_within_twice_the_target() -> None:
    assert min_sample_size(0.01, 0.95) == MIN_N_1PCT
    for target in (0.05, 0.02):
        m = min_sample_size(target)

        def bound(n: int, t: float = target) -> float:
            return clopper_pearson_upper(allowed_exceedances(n, t), n)

        assert bound(m - 1) > 2 * target
        assert all(bound(n) <= 2 * target for n in range(m, 3 * m))
    assert min_sample_size(0.001) > min_sample_size(0.01) > min_sample_size(0.05)
    assert min_sample_size(0.01, 0.99) > MIN_N_1PCT > min_sample_size(0.01, 0.90)


# --------------------------------------------------------------------------- thresholds


def test_ties_at_the_cutoff_all_stay_below_the_threshold() -> None:
    scores = [0.0] * 900 + [0.3] * 95 + [0.8] * 5  # k = floor(0.01 * 1000) = 10; the 11th highest is 0.3
    threshold, cutoff, basis = choose_threshold(scores, 0.01)
    assert (cutoff, basis) == (0.3, "sample")
    assert threshold == 0.4  # shortest decimal in (0.3, 0.8]: flags exactly the five 0.8s
    cal = calibrate_detector(scores, 0.01)
    assert cal.flagged == 5
    assert cal.observed_fpr == 0.005
    # nothing above the cutoff: the configured threshold is kept when it works, else a grid value
    assert choose_threshold([0.0] * 1000, 0.01, configured=0.5) == (0.5, 0.0, "configured")
    assert choose_threshold([0.0] * 1000, 0.01, configured=0.0) == (0.1, 0.0, "grid")
    assert choose_threshold([1.0] * 1000, 0.01, configured=0.5) == (None, 1.0, "unattainable")


@pytest.mark.parametrize("tied", [False, True], ids=["continuous", "80pct-zeros"])
def test_threshold_holds_its_fpr_on_held_out_clean_data(tied: bool) -> None:
    """Calibrate on 1,000 clean scores; on a fresh 50,000 the FPR is under the stated bound.

    Theory says the bound covers the true FPR with probability >= 95% (exactly
    95% for a threshold touching the cutoff, more above it). Over 200 seeds the
    observed coverage has a standard deviation of about 1.5 points, so the
    assertion leaves two of them; a 90% bound (or none) would fail it. The
    threshold must also be near the target on average, not merely safe.
    """
    target, seeds, n, fresh_n = 0.01, 200, 1000, 50_000
    share = 0.2 if tied else 1.0  # the continuous part's weight; the rest scores exactly 0.0
    covered, true_fprs, observed = 0, [], []
    for seed in range(seeds):
        rng = random.Random(seed)
        clean = [0.0 if tied and rng.random() >= share else skewed(rng) for _ in range(n)]
        cal = calibrate_detector(clean, target)
        assert cal.threshold is not None
        t = cal.threshold
        fresh = sum(1 for _ in range(fresh_n) if not (tied and rng.random() >= share) and skewed(rng) >= t)
        covered += fresh / fresh_n <= cal.fpr_upper
        true_fprs.append(share * (1 - t) ** 8)
        observed.append(cal.observed_fpr)
        assert cal.observed_fpr <= target
    assert covered / seeds >= 0.92
    assert 0.008 <= sum(true_fprs) / seeds <= 0.0125  # on target, not wastefully conservative
    assert max(observed) <= target


# --------------------------------------------------------------------------- refusal


def test_refuses_a_sample_smaller_than_the_minimum() -> None:
    config = build_config({})
    small = ScoreSample(phase=Phase.INPUT)
    rng = random.Random(0)
    small.scores["invisible_chars"] = [skewed(rng) for _ in range(MIN_N_1PCT - 1)]
    with pytest.raises(SampleTooSmallError, match=f"at least {MIN_N_1PCT:,}"):
        calibrate(small, config, target_fpr=0.01)
    small.scores["invisible_chars"].append(0.0)
    assert calibrate(small, config, target_fpr=0.01).pooled["invisible_chars"].n == MIN_N_1PCT
    with pytest.raises(SampleTooSmallError, match="no scores for any configured detector"):
        calibrate(ScoreSample(phase=Phase.INPUT), config, target_fpr=0.01)


# --------------------------------------------------------------------------- reading input


def test_score_log_lines_are_used_as_they_are_and_bad_lines_skipped() -> None:
    lines = [
        score_line(0.25),
        b"{broken",
        b"[1, 2]",
        score_line(0.5, phase="output"),  # other phase: ignored, not an error
        orjson.dumps({"scores": {"invisible_chars": "high"}}),
        orjson.dumps({"scores": {"invisible_chars": 1.5}}),
        orjson.dumps({"scores": {"invisible_chars": True}}),
        orjson.dumps({"id": "x", "note": "no scores, no text"}),
        b"",
        orjson.dumps({"scores": {"invisible_chars": 0.1}, "route": 7}),
        score_line(0.0, statuses={"invisible_chars": "ok", "gated": "skipped", "slow": "timeout"}),
        score_line(0.75, route="kserve", text=["a clean prompt", "and another part"]),
    ]
    sample = read_sample(lines, Phase.INPUT)
    assert sample.scores["invisible_chars"] == [0.25, 0.0, 0.75]
    assert sample.scores["gated"] == [0.0]  # skipped by the cascade: did not fire
    assert "slow" not in sample.scores
    assert sample.errors["slow"] == 1  # unknown score: out of n, counted
    assert sample.by_route["kserve"]["invisible_chars"] == [0.75]
    assert sample.other_phase == 1
    assert sample.config_hashes["0123456789abcdef"] == 3
    assert sample.texts == [("line-12", "a clean prompt\nand another part")]
    bad = dict(sample.bad)
    assert sorted(bad) == [2, 3, 5, 6, 7, 8, 10]
    assert "invalid JSON" in bad[2]
    assert "must be a number" in bad[5]
    assert "in [0, 1]" in bad[6]
    assert "needs 'scores'" in bad[8]
    assert "'route' must be a string" in bad[10]
    assert len(sample.source_sha256) == 64


def test_scan_output_lines_are_read_like_score_log_lines() -> None:
    scan_line = {
        "id": "a",
        "flagged": False,
        "action": "allow",
        "scores": {"invisible_chars": 0.0},
        "findings": [
            {"detector": "invisible_chars", "status": "ok", "score": 0.0},
            {"detector": "gated", "status": "skipped", "score": 0.0},
            {"detector": "broken", "status": "error", "score": 0.0},
        ],
    }
    sample = read_sample([orjson.dumps(scan_line)], Phase.INPUT)
    assert sample.scores == {"invisible_chars": [0.0], "gated": [0.0]}
    assert sample.errors["broken"] == 1
    assert sample.without_route == 1


async def test_text_records_are_scored_through_the_real_scanner() -> None:
    lines = [
        orjson.dumps({"id": "clean", "text": "What a lovely film."}),
        orjson.dumps({"id": "zw", "text": f"What a love{ZW}ly film."}),
        orjson.dumps(
            {"id": "req", "request": {"model": "m", "messages": [{"role": "user", "content": "Hi there"}]}}
        ),
        orjson.dumps({"id": "badreq", "request": {"messages": "nope"}}),
        orjson.dumps({"id": "no-text"}),
    ]
    sample = read_sample(lines, Phase.INPUT)
    assert len(sample.pending) == 4
    assert [n for n, _ in sample.bad] == [5]
    async with Scanner(build_config({})) as scanner:
        await score_pending(scanner, sample)
    scores = sample.scores["invisible_chars"]
    assert len(scores) == 3
    assert scores[0] == 0.0
    assert scores[1] >= 0.5  # the default detector fires on a zero-width run
    assert scores[2] == 0.0
    assert [n for n, _ in sample.bad] == [4, 5]
    assert sample.by_route["chat_completions"]["invisible_chars"] == scores
    assert [t for _, t in sample.texts] == ["What a lovely film.", f"What a love{ZW}ly film.", "Hi there"]


async def test_reads_the_score_log_the_proxy_writes(
    firewall: FirewallFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    log = tmp_path / "scores.jsonl"
    fw = await firewall(
        mode="monitor",
        score_log={"enabled": True, "destination": str(log), "sample_rate": 1.0, "include_text": True},
    )
    prompts = ["an ordinary question", "another ordinary question", TRIGGER]
    for text in prompts:
        async with client.post(fw.url + "/v1/chat/completions", data=orjson.dumps(chat_body(text))) as resp:
            assert resp.status == 200
    assert fw.server.score_log is not None
    await fw.flush_logs()
    raw = log.read_bytes().splitlines()
    inputs = read_sample(raw, Phase.INPUT)
    assert inputs.bad == []
    assert inputs.other_phase == len(prompts)
    assert sorted(inputs.scores["invisible_chars"])[:2] == [0.0, 0.0]
    assert max(inputs.scores["invisible_chars"]) >= 0.5
    assert set(inputs.by_route) == {"chat_completions"}
    assert sorted(t for _, t in inputs.texts) == sorted(prompts)
    assert read_sample(raw, Phase.OUTPUT).records == len(prompts)


# --------------------------------------------------------------------------- per route and the patch

CONFIG_YAML = r"""
apiVersion: trigger-firewall.io/v1alpha1
kind: FirewallConfig
mode: monitor
routing:
  unknown_routes: deny
  routes:
    - {name: chat_completions, path: /v1/chat/completions, protocol: openai_chat}
    - name: kserve
      path: /v2/models/{model}/infer
      protocol: json
      input_fields: ["/inputs/*/data"]
      detectors:
        invisible_chars: {action: log}
    - {name: completions, path: /v1/completions, protocol: openai_completions}
detectors:
  - name: invisible_chars
    threshold: 0.5
    action: block
    on_error: fail_closed
    allowlist: ["ACME\\u200bCorp"]
"""


def _per_route_sample(seed: int = 0) -> ScoreSample:
    rng = random.Random(seed)
    lines = [score_line(skewed(rng) * 0.5) for _ in range(1500)]  # low scores
    lines += [score_line(skewed(rng), route="kserve") for _ in range(1500)]  # higher scores
    lines += [score_line(skewed(rng), route="completions") for _ in range(100)]  # too few
    lines += [score_line(skewed(rng), route="legacy") for _ in range(800)]  # not in the config
    return read_sample(lines, Phase.INPUT)


def test_per_route_thresholds_and_patch_merge_into_the_config(tmp_path: Path) -> None:
    path = tmp_path / "fw.yaml"
    path.write_text(CONFIG_YAML)
    config = load_config(path, environ={})
    sample = _per_route_sample()
    result = calibrate(sample, config, target_fpr=0.01, per_route=True)

    pooled = result.pooled["invisible_chars"]
    chat = result.routes["chat_completions"]["invisible_chars"]
    kserve = result.routes["kserve"]["invisible_chars"]
    assert (pooled.n, chat.n, kserve.n) == (3900, 1500, 1500)
    assert chat.threshold is not None
    assert pooled.threshold is not None
    assert kserve.threshold is not None
    assert chat.threshold < pooled.threshold < kserve.threshold
    for cal in (pooled, chat, kserve):
        assert cal.observed_fpr <= 0.01
        assert cal.observed_fpr <= cal.fpr_upper <= 0.02
    assert set(result.routes) == {"chat_completions", "kserve"}
    assert "fewer than the 523 needed" in result.skipped_routes["completions"]
    assert result.skipped_routes["legacy"] == "not a route in the config"

    patch = build_patch(config, result)
    header = patch_header(
        result,
        source="shadow.jsonl",
        source_sha256=sample.source_sha256,
        records=sample.records,
        config_source=str(path),
        config_hash="feedface",
        date="2025-01-01",
    )
    text = render_patch(patch, header)
    assert text.startswith("# trigger-firewall calibrate: threshold patch for review\n")
    assert f"sha256 {sample.source_sha256}" in text
    assert "target FPR 0.01" in text
    assert "n=3,900" in text

    loaded = load_yaml(text)
    assert loaded == patch
    merged = build_config(deep_merge(read_config_file(path), loaded))
    det = merged.detector("invisible_chars")
    assert det.threshold == pooled.threshold
    assert (det.action.value, det.on_error, det.allowlist) == ("block", "fail_closed", ("ACME\\u200bCorp",))
    routes = {r.name: r for r in merged.routing.routes}
    assert merged.routing.unknown_routes == "deny"  # the patch merges into routing, not over it
    assert list(routes) == ["chat_completions", "kserve", "completions"]
    assert routes["chat_completions"].detectors["invisible_chars"].threshold == chat.threshold
    kserve_override = routes["kserve"].detectors["invisible_chars"]
    assert kserve_override.threshold == kserve.threshold
    assert kserve_override.action is not None
    assert kserve_override.action.value == "log"  # kept
    assert routes["completions"].detectors == {}  # too small: inherits the pooled threshold
    assert routes["kserve"].input_fields == ("/inputs/*/data",)
    verify_patch(read_config_file(path), patch, result)


def test_a_route_the_sample_does_not_bound_inherits_the_pooled_threshold() -> None:
    config = build_config({})
    rng = random.Random(5)
    lines = [score_line(skewed(rng)) for _ in range(600)]
    lines += [score_line(0.0, route="completions") for _ in range(600)]
    result = calibrate(read_sample(lines, Phase.INPUT), config, target_fpr=0.01, per_route=True)
    pooled = result.pooled["invisible_chars"]
    completions = result.routes["completions"]["invisible_chars"]
    assert (completions.basis, completions.configured) == ("configured", 0.5)
    assert completions.threshold == pooled.threshold != 0.5
    assert "the route keeps" in format_table(result)
    routes = {r["name"]: r for r in build_patch(config, result)["routing"]["routes"]}
    assert "detectors" not in routes["completions"]  # nothing learned: no override
    assert routes["chat_completions"]["detectors"]["invisible_chars"]["threshold"] is not None


def test_patch_of_the_builtin_defaults_validates() -> None:
    config = build_config({})
    sample = read_sample([score_line(0.0) for _ in range(600)], Phase.INPUT)
    result = calibrate(sample, config, target_fpr=0.01)
    cal = result.pooled["invisible_chars"]
    assert (cal.threshold, cal.basis, cal.flagged) == (0.5, "configured", 0)
    assert cal.fpr_upper == pytest.approx(1 - 0.05 ** (1 / 600))
    patch = build_patch(config, result)
    # The default config lists the three cheap detectors and recurring_sentences; those with no
    # scores here keep their values (and actions).
    assert patch == {
        "detectors": [
            {"name": "invisible_chars", "threshold": 0.5, "action": "sanitize"},
            {"name": "rare_tokens", "threshold": config.detector("rare_tokens").threshold, "action": "log"},
            {
                "name": "context_tags",
                "threshold": config.detector("context_tags").threshold,
                "action": "log",
            },
            {"name": "recurring_sentences", "threshold": 0.5, "action": "log"},
            # A detector with more than a threshold keeps all of it (gate, fail mode, params).
            {
                "name": "counterfactual",
                "threshold": 0.5,
                "action": "block",
                "on_error": "fail_open",
                **config.detector("counterfactual").model_dump(mode="json", exclude_defaults=True),
            },
        ]
    }
    verified = verify_patch({}, patch, result)
    assert verified.detector("invisible_chars").threshold == 0.5
    assert verified.detector("counterfactual") == config.detector("counterfactual")


# --------------------------------------------------------------------------- trigger families


async def test_family_tpr_on_the_inputs_own_texts() -> None:
    texts = [
        (f"t{i}", f"Please summarise the review number {i} about this wonderful film.") for i in range(40)
    ]
    async with Scanner(build_config({})) as scanner:
        tpr = await family_tpr(
            scanner, {"invisible_chars": 0.5}, texts, phase=Phase.INPUT, families=["invisible", "control"]
        )
    assert (tpr.source, tpr.texts, tpr.n) == ("sample", 40, {"invisible": 40, "control": 40})
    assert tpr.tpr["invisible_chars"]["invisible"] == 1.0
    assert tpr.tpr["invisible_chars"]["control"] == 0.0


# --------------------------------------------------------------------------- the command


def run_cli(argv: list[str]) -> int:
    """Parse like the real CLI does once ``add_calibrate_parser`` is wired into it."""
    parser = argparse.ArgumentParser(prog="trigger-firewall")
    add_calibrate_parser(parser.add_subparsers(dest="command", required=True))
    return run_calibrate(parser.parse_args(argv))


def test_cli_end_to_end_on_text_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(1)
    words = ["film", "story", "actor", "scene", "plot", "music", "ending", "script"]
    lines = [
        orjson.dumps(
            {"id": i, "text": f"The {rng.choice(words)} in part {i} was {rng.choice(words)}-driven."}
        )
        for i in range(560)
    ]
    lines.insert(3, b"not json")
    src = write_lines(tmp_path / "clean.jsonl", lines)
    patch = tmp_path / "patch.yaml"
    code = run_cli(
        ["calibrate", "--target-fpr", "0.01", "--tpr-limit", "50", "--patch", str(patch), str(src)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = captured.out
    assert "Calibration for a 0.01 false-positive rate" in out
    for column in ("detector", "threshold", "FPR<=95%", "invisible", "homoglyph", "control"):
        assert column in out
    row = next(line for line in out.splitlines() if line.startswith("invisible_chars"))
    cells = row.split()
    assert cells[1:7] == ["*", "560", "0.5", "0.5", "0.00%", "0.53%"]
    assert "clean.jsonl:4: skipped: invalid JSON" in captured.err
    assert "50 clean texts from the input" in out
    config = build_config(deep_merge({}, load_yaml(patch.read_text())))
    assert config.detector("invisible_chars").threshold == 0.5


def test_cli_score_log_per_route_patch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(CONFIG_YAML)
    rng = random.Random(2)
    lines = [score_line(skewed(rng) * 0.5) for _ in range(700)]
    lines += [score_line(skewed(rng), route="kserve") for _ in range(700)]
    src = write_lines(tmp_path / "scores.jsonl", lines)
    patch = tmp_path / "patch.yaml"
    argv = ["calibrate", "--target-fpr", "0.01", "--per-route", "--config", str(cfg), "--no-families-tpr"]
    assert run_cli([*argv, "--patch", str(patch), str(src)]) == 0
    captured = capsys.readouterr()
    assert "kserve" in captured.out
    assert "not measured (--no-families-tpr)" in captured.out
    assert "collected under config hash(es) 0123456789abcdef" in captured.err
    merged = build_config(deep_merge(read_config_file(cfg), load_yaml(patch.read_text())))
    routes = {r.name: r for r in merged.routing.routes}
    assert routes["kserve"].detectors["invisible_chars"].threshold is not None
    assert routes["chat_completions"].detectors["invisible_chars"].threshold is not None


def test_cli_refuses_a_small_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_lines(tmp_path / "few.jsonl", [score_line(0.1) for _ in range(100)])
    assert run_cli(["calibrate", "--target-fpr", "0.01", "--no-families-tpr", str(src)]) == 2
    err = capsys.readouterr().err
    assert "sample too small" in err
    assert "too few clean scores (invisible_chars 100)" in err
    assert "at least 523" in err
    # the same sample supports a 10% target (minimum 51)
    assert run_cli(["calibrate", "--target-fpr", "0.1", "--no-families-tpr", str(src)]) == 0


def test_cli_rejects_bad_arguments_before_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_lines(tmp_path / "s.jsonl", [score_line(0.1)])
    assert (
        run_cli(["calibrate", "--target-fpr", "0.01", "--patch", str(tmp_path / "no" / "p.yaml"), str(src)])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert run_cli(["calibrate", "--target-fpr", "0.01", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with mock.patch("firewall.offline.calibration.plot_available", return_value=False):
        assert (
            run_cli(["calibrate", "--target-fpr", "0.01", "--plot", str(tmp_path / "p.png"), str(src)]) == 2
        )
    assert "needs matplotlib" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(["calibrate", "--target-fpr", "2", str(src)])


def test_plot_marks_the_thresholds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Drawn with a stand-in matplotlib (the real one is optional and not a test dependency)."""
    plt = mock.MagicMock()
    axes = [[mock.MagicMock()]]
    plt.subplots.return_value = (mock.MagicMock(), axes)
    matplotlib = mock.MagicMock()
    matplotlib.pyplot = plt
    monkeypatch.setitem(sys.modules, "matplotlib", matplotlib)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", plt)
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(CONFIG_YAML)
    sample = _per_route_sample()
    result = calibrate(sample, load_config(cfg, environ={}), target_fpr=0.01, per_route=True)
    write_plot(sample, result, "scores.png")
    fig = plt.subplots.return_value[0]
    fig.savefig.assert_called_once_with("scores.png", dpi=110)
    lines = [c.args[0] for c in axes[0][0].axvline.call_args_list]
    assert result.pooled["invisible_chars"].threshold in lines
    assert result.routes["kserve"]["invisible_chars"].threshold in lines
    assert 0.5 in lines  # the current threshold
