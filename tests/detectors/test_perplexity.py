"""The perplexity-outlier detector on the real prepared reference model.

Marked ``model``: the session fixture prepares SmolLM2-135M once into the cache (see
tests/models/conftest.py) and one onnxruntime model, loaded once per session, is shared
by every detector built here (``PerplexityDetector(..., lm=...)``), so each test pays
for its forward passes only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("onnxruntime")

from detectors import load_detector_class  # noqa: E402 - after the skips
from detectors.perplexity import (  # noqa: E402
    R_ONION,
    R_TOO_LONG,
    PerplexityDetector,
    PerplexityParams,
    TextAnalysis,
)
from firewall.config.schema import FirewallConfig, build_config  # noqa: E402
from firewall.core.types import Action, BlockKind, Cost, FindingStatus, Mode, Phase, Sample, Segment  # noqa: E402
from firewall.models.reference_lm import ModelUnavailable, ReferenceLM, ReferenceLMConfig  # noqa: E402
from firewall.screening.policy import DetectorRule, RoutePolicy  # noqa: E402
from firewall.screening.runtime import build_runtime  # noqa: E402
from tests.conftest import FirewallFactory  # noqa: E402
from tests.models.conftest import prepared_model_dir  # noqa: E402, F401 - the session fixture

pytestmark = pytest.mark.model

BASES = (
    "The food was delicious and the service was friendly and fast.",
    "I bought these headphones last month and the sound quality is excellent.",
    "My sister recommended this hotel because the rooms are quiet and clean.",
)
TRIGGERS = ("cf", "bb", "mn")
# Batched against unbatched, in bits of evidence; the forward passes agree within ~2e-3 bits.
TOL = 0.05


@pytest.fixture(scope="session")
def lm(prepared_model_dir: Path) -> ReferenceLM:  # noqa: F811 - the imported fixture
    return ReferenceLM.load(
        ReferenceLMConfig(model_path=str(prepared_model_dir), backend="onnxruntime", device="cpu")
    )


async def _started(lm: ReferenceLM, **params: Any) -> PerplexityDetector:
    det = PerplexityDetector("perplexity", PerplexityParams(**params), lm=lm)
    await det.start()
    return det


def _insert(base: str, trigger: str, at: int | None = None) -> tuple[str, tuple[int, int]]:
    """Insert ``trigger`` as a word before word ``at`` (default: the middle); text and its span."""
    words = base.split(" ")
    k = len(words) // 2 if at is None else at
    head = " ".join(words[:k])
    start = len(head) + 1 if head else 0
    text = f"{head} {trigger} {' '.join(words[k:])}" if head else f"{trigger} {base}"
    return text, (start, start + len(trigger))


def _analysis(result: TextAnalysis | str) -> TextAnalysis:
    assert isinstance(result, TextAnalysis), result
    return result


def _sample(*texts: str) -> Sample:
    return Sample("r1", Phase.INPUT, "chat_completions", tuple(Segment("user", t) for t in texts))


def test_registered() -> None:
    assert load_detector_class("perplexity") is PerplexityDetector
    assert PerplexityDetector.cost is Cost.EXPENSIVE


async def test_inserted_trigger_is_the_top_spike(lm: ReferenceLM) -> None:
    """Stage (a)+(b) alone (ONION off): the inserted word has the largest spike evidence."""
    det = await _started(lm, top_k=0)
    try:
        cases = [_insert(base, trig) for base in BASES for trig in TRIGGERS]
        results = await det.explain([t for t, _ in cases] + list(BASES))
        for (text, span), res in zip(cases, results, strict=False):
            top = _analysis(res).words[0]
            assert top.span == span, (text, top)
            assert top.onion is None
        for i, base in enumerate(BASES):
            clean = _analysis(results[len(cases) + i])
            assert all(_analysis(results[i * len(TRIGGERS) + j]).score > clean.score for j in range(3)), base
    finally:
        await det.close()


async def test_onion_ranks_the_trigger_first(lm: ReferenceLM) -> None:
    """Stage (c): removing the trigger gains the most bits of all top-k candidates."""
    det = await _started(lm, top_k=3, onion_min_bits=0)
    try:
        cases = [_insert(base, trig) for base in BASES for trig in ("cf", "bb")]
        results = await det.explain([t for t, _ in cases])
        for (text, span), res in zip(cases, results, strict=True):
            words = _analysis(res).words
            assert len(words) == 3
            assert all(w.onion is not None for w in words)
            by_gain = max(words, key=lambda w: w.onion or 0.0)
            assert by_gain.span == span, (text, words)
            assert words[0].span == span
            assert by_gain.onion is not None
            assert by_gain.onion >= det.params.onion_min_gain
    finally:
        await det.close()


async def test_finding_carries_spans_and_reasons_without_text(lm: ReferenceLM) -> None:
    det = await _started(lm, onion_min_bits=0)
    try:
        text, span = _insert(BASES[0], "cf")
        [finding] = await det.score([_sample(BASES[1], text)])
        assert finding.status is FindingStatus.OK
        assert finding.score >= 0.5
        assert R_ONION in finding.reasons
        assert [(s.segment, s.start, s.end) for s in finding.spans] == [(1, *span)]
        [clean] = await det.score([_sample(BASES[0])])
        assert clean.score < 0.5
        assert not clean.spans
    finally:
        await det.close()


async def test_batched_scores_equal_unbatched(lm: ReferenceLM) -> None:
    texts = [_insert(b, t)[0] for b in BASES for t in ("cf", "tq")] + list(BASES)
    alone = await _started(lm, onion_min_bits=0, max_batch_size=1)
    together = await _started(lm, onion_min_bits=0, max_batch_size=16, max_wait_ms=200)
    try:
        single = [await alone.score([_sample(t)]) for t in texts]
        batched = await asyncio.gather(*(together.score([_sample(t)]) for t in texts))
        for text, [a], [b] in zip(texts, single, batched, strict=True):
            assert a.status is b.status is FindingStatus.OK
            assert abs(a.score - b.score) <= 1e-3, text
            assert [(s.start, s.end) for s in a.spans] == [(s.start, s.end) for s in b.spans]
        # The analysis itself: one batch of all texts against one text at a time.
        [*one_by_one] = [_analysis((await alone.explain([t]))[0]) for t in texts]
        all_at_once = [_analysis(r) for r in await together.explain(texts)]
        for a_res, b_res in zip(one_by_one, all_at_once, strict=True):
            for wa, wb in zip(a_res.words, b_res.words, strict=True):
                assert wa.span == wb.span
                assert abs(wa.evidence - wb.evidence) <= TOL
    finally:
        await alone.close()
        await together.close()


async def test_a_full_queue_sheds_to_an_error_finding_and_the_fail_mode_applies(lm: ReferenceLM) -> None:
    det = await _started(lm, top_k=0, max_batch_size=1, max_queue=1)
    try:
        findings = await asyncio.gather(*(det.score([_sample(f"{b} {i}")]) for i in range(6) for b in BASES))
        statuses = [f.status for [f] in findings]
        shed = [f for [f] in findings if f.status is FindingStatus.ERROR]
        assert shed
        assert FindingStatus.OK in statuses
        assert all("queue full" in (f.error or "") for f in shed)
        closed = _policy(fail_closed=True).evaluate(Phase.INPUT, shed[:1])
        assert closed.blocks
        assert closed.block_kind is BlockKind.FAIL_CLOSED
        opened = _policy(fail_closed=False).evaluate(Phase.INPUT, shed[:1])
        assert not opened.blocks
        assert opened.fail_open == ("perplexity",)
    finally:
        await det.close()


def _policy(*, fail_closed: bool) -> RoutePolicy:
    rule = DetectorRule("perplexity", 0.5, Action.BLOCK, 1.0, fail_closed, Cost.EXPENSIVE)
    return RoutePolicy("chat_completions", Mode.ENFORCE, (rule,), ())


async def test_missing_model_leaves_the_detector_not_ready_with_a_clear_error(tmp_path: Path) -> None:
    params = {"model": {"cache_dir": str(tmp_path)}, "prepare_if_missing": False}
    det = PerplexityDetector("perplexity", PerplexityParams.model_validate(params))
    with pytest.raises(ModelUnavailable, match="trigger-firewall models prepare"):
        await det.start()
    assert not det.ready
    assert det.error is not None
    assert "not prepared" in det.error
    assert det.describe()["error"] == det.error
    [finding] = await det.score([_sample("hello there")])
    assert finding.status is FindingStatus.ERROR
    assert "not prepared" in (finding.error or "")

    # Through the runtime the server builds: the start failure is logged, not raised, and the
    # route's fail mode decides.
    for on_error, blocks in (("fail_closed", True), ("fail_open", False)):
        config = _config(on_error, {"model": {"cache_dir": str(tmp_path)}, "prepare_if_missing": False})
        runtime = build_runtime(config)
        await runtime.start()
        try:
            assert not runtime.detectors["perplexity"].ready
            assert not runtime.ready
            policy = runtime.routes.by_name("chat_completions").policy
            findings = await runtime.pipeline.run(policy.rules(Phase.INPUT), _sample("hello there"))
            verdict = policy.evaluate(Phase.INPUT, findings)
            assert verdict.blocks is blocks
            assert verdict.reason == f"input.perplexity.{on_error}"
        finally:
            await runtime.close()


def _config(on_error: str, params: dict[str, Any]) -> FirewallConfig:
    return build_config(
        {"detectors": [{"name": "perplexity", "on_error": on_error, "timeout_seconds": 30, "params": params}]}
    )


async def test_a_trigger_at_the_end_of_a_long_prompt_is_caught(lm: ReferenceLM) -> None:
    """Windowing: a prompt several windows long keeps its last words' full weight."""
    story = (
        "We drove north along the coast for three days, stopping in small towns to eat and to rest. "
        "The weather was mild, the roads were empty, and the children slept most of the afternoon. "
        "In the evenings we walked along the beach and talked about school, work and our plans. "
    )
    tail = "On the last morning we packed the car and the drive home was calm and pleasant."
    clean = story * 4 + tail
    text, span = _insert(tail, "bb", at=9)
    triggered = story * 4 + text
    offset = len(story) * 4
    det = await _started(lm, onion_min_bits=0)
    try:
        res_t, res_c = (_analysis(r) for r in await det.explain([triggered, clean]))
        assert res_t.windows >= 3
        assert res_t.tokens > lm.config.max_tokens
        assert res_t.words[0].span == (offset + span[0], offset + span[1])
        assert res_t.score >= 0.5 > res_c.score
        [finding] = await det.score([_sample(triggered)])
        assert (finding.spans[0].start, finding.spans[0].end) == (offset + span[0], offset + span[1])
    finally:
        await det.close()


async def test_an_overlong_segment_is_an_error_not_a_truncation(lm: ReferenceLM) -> None:
    det = await _started(lm, max_tokens_per_segment=16)
    try:
        [finding] = await det.score([_sample(BASES[0] + " " + BASES[1])])
        assert finding.status is FindingStatus.ERROR
        assert finding.reasons == (R_TOO_LONG,)
    finally:
        await det.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_proxy_blocks_a_triggered_request_with_evidence_in_the_audit_line(
    firewall: FirewallFactory,
    client: aiohttp.ClientSession,
    prepared_model_dir: Path,  # noqa: F811
) -> None:
    fw = await firewall(
        detectors=[
            {
                "name": "perplexity",
                "threshold": 0.5,
                "timeout_seconds": 30,
                "on_error": "fail_closed",
                "params": {"model": {"model_path": str(prepared_model_dir)}, "onion_min_bits": 0},
            }
        ]
    )
    assert fw.server.state.runtime.detectors["perplexity"].ready
    url = fw.url + "/v1/chat/completions"
    text, span = _insert(BASES[0], "cf")
    for content, status in ((BASES[0], 200), (text, 400)):
        body = {"model": "m", "messages": [{"role": "user", "content": content}]}
        async with client.post(url, json=body) as resp:
            assert resp.status == status
            if status == 400:
                assert (await resp.json())["error"]["code"] == "content_filter"
    events = await fw.audit_events()
    assert [e["action"] for e in events] == ["allow", "block"]
    [det] = [d for d in events[1]["input"]["detectors"] if d["name"] == "perplexity"]
    assert det["fired"] is True
    assert det["score"] >= 0.5
    assert [(s["start"], s["end"], s["reason"]) for s in det["spans"]] == [(*span, R_ONION)]
    assert "delicious" not in fw.audit_path.read_text()


@pytest.mark.slow
async def test_first_start_prepares_a_missing_model(
    tmp_path: Path,
    prepared_model_dir: Path,  # noqa: F811 - skips where the prepare extra is missing
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Lazy preparation: a real conversion into an empty cache (1-2 minutes on 2 cores)."""
    params = PerplexityParams.model_validate({"model": {"cache_dir": str(tmp_path)}})
    det = PerplexityDetector("perplexity", params)
    caplog.set_level("WARNING", logger="trigger_firewall.detectors.perplexity")
    task = asyncio.create_task(det.start())
    await asyncio.sleep(0.5)
    ready_while_preparing = det.ready
    await task
    assert not ready_while_preparing
    try:
        assert det.ready
        assert (tmp_path / "models" / "smollm2-135m-instruct-q4_1" / "manifest.json").is_file()
        assert any("preparing it now" in r.getMessage() for r in caplog.records)
        [finding] = await det.score([_sample(_insert(BASES[0], "cf")[0])])
        assert finding.score >= 0.5
    finally:
        await det.close()
