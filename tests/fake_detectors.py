"""Misbehaving detectors for tests: they raise, hang or never load.

They are registered in-process (``detectors.register_detector``) when the test
suite's conftest imports this module, so test configs can name their types.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from detectors import register_detector
from detectors.base import Detector, Finding, Phase, Sample


class ExplodingDetector(Detector):
    """Raises on every call: exercises fail_open / fail_closed."""

    kind = "test_exploding"
    phases = frozenset({Phase.INPUT, Phase.OUTPUT})

    async def score(self, batch: Sequence[Sample]) -> list[Finding]:
        raise RuntimeError("model crashed")


class HangingDetector(Detector):
    kind = "test_hanging"
    phases = frozenset({Phase.INPUT})

    async def score(self, batch: Sequence[Sample]) -> list[Finding]:
        await asyncio.sleep(30)
        return [Finding(self.name, 0.0) for _ in batch]


class NeverReadyDetector(Detector):
    kind = "test_never_ready"
    phases = frozenset({Phase.INPUT})

    async def start(self) -> None:
        raise FileNotFoundError("model file missing")

    async def score(self, batch: Sequence[Sample]) -> list[Finding]:
        return [Finding(self.name, 0.0) for _ in batch]


for _cls in (ExplodingDetector, HangingDetector, NeverReadyDetector):
    register_detector(_cls.kind, _cls)
