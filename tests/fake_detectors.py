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


class FenceHolder(Detector):
    """Holds an open ``` block until it closes; flags a block containing BAD (stream tests)."""

    kind = "test_fence_holder"
    phases = frozenset({Phase.OUTPUT})

    async def score(self, batch: Sequence[Sample]) -> list[Finding]:
        out = []
        for sample in batch:
            text = "".join(s.text for s in sample.segments)
            blocks = text.split("```")[1::2]
            closed = blocks if text.count("```") % 2 == 0 else blocks[:-1]
            bad = any("BAD" in b for b in closed)
            out.append(Finding(self.name, 1.0 if bad else 0.0, reasons=("bad_block",) if bad else ()))
        return out

    def stream_safe_prefix(self, text: str) -> int:
        if text.count("```") % 2:
            return text.rfind("```")  # hold the open block
        return len(text)


register_detector(FenceHolder.kind, FenceHolder)
