"""Per-detector allowlists suppress exactly the evidence they name."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from detectors.base import Detector, Finding, FindingStatus, Phase, Sample, Segment, Span
from firewall.config.schema import build_config
from firewall.core.errors import ConfigError
from firewall.core.types import Action, Cost
from firewall.screening.pipeline import Pipeline
from firewall.screening.policy import DetectorRule

TEXT = "Compare the RTX 4090 with the zq9x card"


class SpanReporter(Detector):
    """Flags every token that contains a digit or a 'q' (a stand-in for a real detector)."""

    kind = "test_span_reporter"
    phases = frozenset({Phase.INPUT})

    async def score(self, batch: Sequence[Sample]) -> list[Finding]:
        out = []
        for sample in batch:
            spans = []
            text = sample.segments[0].text
            pos = 0
            for word in text.split(" "):
                if any(c.isdigit() for c in word) or "q" in word:
                    spans.append(Span(0, pos, pos + len(word), "odd_token"))
                pos += len(word) + 1
            out.append(Finding(self.name, 0.9 if spans else 0.0, reasons=("odd_token",), spans=tuple(spans)))
        return out


def rule(*patterns: str) -> DetectorRule:
    return DetectorRule(
        detector="d",
        threshold=0.5,
        action=Action.BLOCK,
        timeout_seconds=1.0,
        fail_closed=False,
        cost=Cost.CHEAP,
        allowlist=tuple(re.compile(p) for p in patterns),
    )


async def run(*patterns: str, text: str = TEXT) -> Finding:
    det = SpanReporter("d")
    await det.start()
    sample = Sample("r", Phase.INPUT, "chat", (Segment("user", text),))
    (finding,) = await Pipeline({"d": det}).run((rule(*patterns),), sample)
    return finding


async def test_without_allowlist_all_evidence_stays() -> None:
    finding = await run()
    assert [TEXT[s.start : s.end] for s in finding.spans] == ["4090", "zq9x"]
    assert finding.score == 0.9


async def test_allowlist_drops_only_the_spans_it_covers() -> None:
    finding = await run(r"RTX \d{4}")
    assert [TEXT[s.start : s.end] for s in finding.spans] == ["zq9x"]
    assert finding.score == 0.9  # the rest of the evidence still stands


async def test_allowlist_covering_everything_clears_the_finding() -> None:
    finding = await run(r"RTX \d{4}", r"zq\dx")
    assert finding.spans == ()
    assert finding.score == 0.0
    assert finding.reasons == ("allowlisted",)
    assert finding.status is FindingStatus.OK


async def test_partial_match_does_not_cover_a_span() -> None:
    finding = await run(r"zq")  # matches only part of "zq9x"
    assert [TEXT[s.start : s.end] for s in finding.spans] == ["4090", "zq9x"]


def test_invalid_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid regular expression"):
        build_config({"detectors": [{"name": "invisible_chars", "allowlist": ["(unclosed"]}]})
