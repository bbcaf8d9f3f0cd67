"""The detector base class validates params into each detector's own model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from detectors import builtin_kinds, load_detector_class
from detectors.base import DetectorParams


@pytest.mark.parametrize("kind", builtin_kinds())
def test_base_params_become_the_detectors_own(kind: str) -> None:
    cls = load_detector_class(kind)
    det = cls("x", DetectorParams())
    assert isinstance(det.params, cls.Params)
    assert det.params == cls.Params()


def test_params_of_another_model_are_still_validated() -> None:
    class Other(DetectorParams):
        surprise: int = 1

    cls = load_detector_class("invisible_chars")
    with pytest.raises(ValidationError, match="surprise"):
        cls("x", Other())
