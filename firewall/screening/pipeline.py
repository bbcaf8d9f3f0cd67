"""Runs a phase's detectors on one sample: cascade, timeouts, errors as findings.

Every outcome comes back as a :class:`~firewall.core.types.Finding`; nothing a
detector does (raise, hang, return garbage) escapes as an exception, so the
policy's fail mode is always what decides. Ungated detectors run together;
gated ones run afterwards, only when their gate detector scored at least the
gate's ``min_score`` (or could not score: a broken gate must not switch the
expensive check off).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from detectors.base import Detector, InlineDetector
from firewall.core.types import Finding, FindingStatus, Phase, Sample
from firewall.observability.metrics import DetectorSeries, Metrics
from firewall.screening.policy import DetectorRule

__all__ = ["Pipeline"]

log = logging.getLogger("trigger_firewall.pipeline")


class Pipeline:
    """Executes detector rules against samples and records per-detector metrics."""

    def __init__(
        self,
        detectors: Mapping[str, Detector[Any]],
        metrics: Metrics | None = None,
        *,
        inline_max_chars: int = 32_768,
        inline_budget_seconds: float = 0.02,
    ) -> None:
        self._detectors = detectors
        self._metrics = metrics
        self._inline_max_chars = inline_max_chars
        self._inline_budget = inline_budget_seconds
        #: Per detector, the sample size (characters) from which it runs in a worker thread:
        #: inline_max_chars, lowered by each call that held the loop past the budget.
        self._offload_from: dict[str, int] = {}
        self._plans: dict[int, _Plan] = {}
        self._skipped: dict[str, Finding] = {}
        #: Per phase and detector, its metric series, resolved on first use (bounded by the
        #: configured detectors: only those reach the inline loop).
        self._series: dict[Phase, dict[str, DetectorSeries]] = {Phase.INPUT: {}, Phase.OUTPUT: {}}

    async def run(self, rules: Sequence[DetectorRule], sample: Sample) -> list[Finding]:
        """Score ``sample`` with every rule's detector; one finding per rule that ran."""
        findings, gated = await self.first_stage(rules, sample)
        if gated:
            findings.extend(await self.second_stage(gated, sample, findings))
        return findings

    async def first_stage(
        self, rules: Sequence[DetectorRule], sample: Sample
    ) -> tuple[list[Finding], list[DetectorRule]]:
        """The ungated detectors' findings (plus a skipped one for each shut gate), and the
        gated rules whose gate opened: what :meth:`second_stage` runs."""
        if not rules:
            return [], []
        plan = self._plan(rules)
        findings = await self._run_steps(plan.steps, sample)
        if not plan.gated:  # the usual case: one stage
            return findings, []
        by_name = {f.detector: f for f in findings}
        to_run: list[DetectorRule] = []
        for rule in plan.gated:
            gates = [(by_name[n], m) for n, m in rule.gates or () if n in by_name]
            # No gate ran here (none runs on this route): the detector runs, ungated.
            if not gates or any(_opens(g, m) for g, m in gates) or self._opens_itself(rule.detector, sample):
                to_run.append(rule)
            else:
                findings.append(self.skipped(rule.detector, sample.phase))
        return findings, to_run

    async def second_stage(
        self, rules: Sequence[DetectorRule], sample: Sample, evidence: Sequence[Finding]
    ) -> list[Finding]:
        """Run gated ``rules``; what the first stage found goes along (a behavioural check
        tests those spans)."""
        return await self._run_steps(self._steps(rules), replace(sample, evidence=tuple(evidence)))

    def skipped(self, detector: str, phase: Phase) -> Finding:
        """The finding of a gated detector that did not run, counted as skipped."""
        self._record_skip(detector, phase)
        # A value type, the same for every request: built once per detector, not per request.
        finding = self._skipped.get(detector)
        if finding is None:
            finding = Finding(detector=detector, score=0.0, status=FindingStatus.SKIPPED)
            if detector in self._detectors:  # bounded by the configured detectors
                self._skipped[detector] = finding
        return finding

    def _opens_itself(self, name: str, sample: Sample) -> bool:
        """A shut gate's detector may still ask to run (it knows this sample); never raises."""
        detector = self._detectors.get(name)
        if detector is None or not detector.ready:
            return False
        try:
            return detector.opens_gate(sample)
        except Exception as exc:  # a broken hook must not break screening: the gate decides
            log.warning("detector %s opens_gate raised %s", name, type(exc).__name__)
            return False

    @staticmethod
    def _allow(finding: Finding, rule: DetectorRule, sample: Sample) -> Finding:
        """Drop evidence that a rule's allowlist covers; no evidence left means a score of 0.

        A span is allowlisted when it lies inside a match of any pattern in its
        segment, so a pattern can name a whole product ("RTX 4090") and cover a
        finding on one of its tokens. A finding without spans cannot be judged
        this way and is left as it is.
        """
        if not rule.allowlist or not finding.spans or not finding.scored:
            return finding
        kept = []
        for span in finding.spans:
            text = sample.segments[span.segment].text if span.segment < len(sample.segments) else ""
            covered = any(
                m.start() <= span.start and span.end <= m.end()
                for pattern in rule.allowlist
                for m in pattern.finditer(text)
            )
            if not covered:
                kept.append(span)
        if len(kept) == len(finding.spans):
            return finding
        if kept:
            return replace(finding, spans=tuple(kept))
        return replace(finding, score=0.0, spans=(), reasons=("allowlisted",))

    def _steps(self, rules: Iterable[DetectorRule]) -> tuple[_Step, ...]:
        """Each rule with its detector when that detector can run inline (else ``None``), and
        the detector's lock (``None`` for a ``concurrent_safe`` one: there is nothing to take)."""
        out: list[_Step] = []
        for rule in rules:
            detector = self._detectors.get(rule.detector)
            if isinstance(detector, InlineDetector):
                out.append((rule, detector, None if detector.concurrent_safe else detector.inline_lock))
            else:
                out.append((rule, None, None))
        return tuple(out)

    def _plan(self, rules: Sequence[DetectorRule]) -> _Plan:
        """``rules`` resolved against the detectors: once per compiled rule tuple.

        A route's rules are tuples built when the policy is compiled, so the same objects
        come back on every request and their plan is kept (the plan holds the tuple, so
        its id cannot be reused while it is cached). Other sequences are planned per call.
        """
        plan = self._plans.get(id(rules))
        if plan is not None and plan.rules is rules:
            return plan
        plan = _Plan(
            rules,
            self._steps(r for r in rules if r.gates is None),
            tuple(r for r in rules if r.gates is not None),
        )
        if type(rules) is tuple:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[id(rules)] = plan
        return plan

    async def _run_steps(self, steps: Sequence[_Step], sample: Sample) -> list[Finding]:
        """Inline detectors run at once, in order; the others run concurrently after them."""
        findings: list[Finding] = []
        pending: list[DetectorRule] = []
        chars = sample.chars
        small = chars <= self._inline_max_chars
        offload_from = self._offload_from
        perf_counter = time.perf_counter
        # The loop thread's CPU time: wall time alone also counts waits for the GIL while a
        # worker thread scores a long sample, which are no detector's doing.
        cpu_start = time.thread_time() if small else 0.0
        metrics = self._metrics
        series = self._series[sample.phase] if metrics is not None else None
        for rule, detector, lock in steps:
            # On the loop only while the detector is free: if a worker thread is scoring a
            # long sample with it, this one queues behind in a thread too (never the loop).
            # A concurrent_safe detector's lock is always free.
            if not (
                detector is not None
                and small
                and detector.ready
                and (not offload_from or chars < offload_from.get(rule.detector, chars + 1))
                and (lock is None or lock.acquire(blocking=False))
            ):
                pending.append(rule)
                continue
            name = rule.detector
            start = perf_counter()
            clean: Finding | None = None
            try:
                results = detector.score_inline((sample,))
            except Exception as exc:
                found = self._raised(name, exc, sample, start)
            else:
                clean = _well_formed(name, results)
                found = clean if clean is not None else self._finish(name, results, sample, start)
            finally:
                if lock is not None:
                    lock.release()
            seconds = perf_counter() - start
            if clean is not None and series is not None and metrics is not None:
                # What _finish records, inline for the usual case: one call per detector.
                observer = series.get(name)
                if observer is None:
                    observer = series[name] = metrics.detector_series(name, sample.phase)
                observer.observe(seconds, clean.score)
            if seconds > self._inline_budget and time.thread_time() - cpu_start > self._inline_budget:
                self._over_budget(name, chars, seconds)
            findings.append(self._allow(found, rule, sample) if rule.allowlist else found)
        if len(pending) == 1:
            findings.append(self._allow(await self._one(pending[0], sample), pending[0], sample))
        elif pending:
            results = await asyncio.gather(*(self._one(r, sample) for r in pending))
            findings.extend(self._allow(f, r, sample) for f, r in zip(results, pending, strict=True))
        return findings

    def _over_budget(self, name: str, chars: int, seconds: float) -> None:
        """A call held the loop past the budget: from half its size on, this detector's
        samples go to a worker thread (never below ``_MIN_OFFLOAD_CHARS``)."""
        limit = max(_MIN_OFFLOAD_CHARS, chars // 2)
        if limit < self._offload_from.get(name, self._inline_max_chars + 1):
            self._offload_from[name] = limit
            log.warning(
                "detector %s held the event loop %.0f ms on a %d-character sample; its samples of "
                "%d characters and more now run in a worker thread",
                name,
                seconds * 1000,
                chars,
                limit,
            )

    async def _one(self, rule: DetectorRule, sample: Sample) -> Finding:
        name = rule.detector
        detector = self._detectors.get(name)
        start = time.perf_counter()
        if detector is None or not detector.ready:
            # A model that failed its pinned hashes says so in the audit line and the error metric.
            refused = getattr(detector, "load_reason", None) == "artefact_mismatch"
            kind = "artefact_mismatch" if refused else "unavailable"
            finding = Finding.failed(
                name, FindingStatus.ERROR, f"detector not ready: {kind}" if refused else "detector not ready"
            )
            self._record(finding, sample.phase, start, error_kind=kind)
            return finding
        try:
            async with asyncio.timeout(rule.timeout_seconds):
                if isinstance(detector, InlineDetector):
                    results = await asyncio.to_thread(_score_locked, detector, sample)
                else:
                    results = await detector.score((sample,))
        except TimeoutError:
            finding = Finding.failed(name, FindingStatus.TIMEOUT, "timeout")
            self._record(finding, sample.phase, start, error_kind="timeout")
            return finding
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the request itself is being cancelled (client gone, shutdown)
            # The detector cancelled its own work (e.g. a batcher closing): an error, not our end.
            finding = Finding.failed(name, FindingStatus.ERROR, "CancelledError")
            self._record(finding, sample.phase, start, error_kind="exception")
            return finding
        except Exception as exc:
            return self._raised(name, exc, sample, start)
        return self._finish(name, results, sample, start)

    def _raised(self, name: str, exc: Exception, sample: Sample, start: float) -> Finding:
        """A detector broke its never-raise contract: an error finding, logged and counted."""
        log.warning(
            "detector %s raised %s", name, type(exc).__name__, extra={"request_id": sample.request_id}
        )
        finding = Finding.failed(name, FindingStatus.ERROR, type(exc).__name__)
        self._record(finding, sample.phase, start, error_kind="exception")
        return finding

    def _finish(self, name: str, results: object, sample: Sample, start: float) -> Finding:
        """A detector's result, checked and recorded; every detector call ends here."""
        finding = self._normalise(name, results, time.perf_counter() - start)
        if finding.status is FindingStatus.OK:  # the usual case: one observation, nothing to count
            if self._metrics is not None:
                self._metrics.observe_detector(name, sample.phase, time.perf_counter() - start, finding.score)
            return finding
        self._record(finding, sample.phase, start, error_kind=None if finding.scored else "exception")
        return finding

    @staticmethod
    def _normalise(name: str, results: object, seconds: float) -> Finding:
        """Check the detector kept its contract; a broken result is an error finding."""
        found = _well_formed(name, results)
        if found is not None:
            return found
        if not isinstance(results, list) or len(results) != 1 or not isinstance(results[0], Finding):
            return Finding.failed(name, FindingStatus.ERROR, "detector returned a malformed result")
        found = results[0]
        score = found.score
        if found.scored and (
            not isinstance(score, int | float) or math.isnan(score) or not 0.0 <= score <= 1.0
        ):
            return Finding.failed(name, FindingStatus.ERROR, "score outside [0, 1]")
        if found.detector == name and found.duration_seconds > 0.0 and isinstance(score, float):
            return found  # already well-formed: skip rebuilding a frozen dataclass on the hot path
        return Finding(
            detector=name,
            score=float(score),
            status=found.status,
            reasons=found.reasons,
            spans=found.spans,
            duration_seconds=seconds,
            error=found.error,
        )

    def _record(self, finding: Finding, phase: Phase, start: float, *, error_kind: str | None) -> None:
        m = self._metrics
        if m is None:
            return
        seconds = time.perf_counter() - start
        if finding.scored:
            m.observe_detector(finding.detector, phase, seconds, finding.score)
        else:
            m.observe_detector(finding.detector, phase, seconds, None)
            if error_kind:
                m.count_detector_error(finding.detector, error_kind)

    def _record_skip(self, detector: str, phase: Phase) -> None:
        if self._metrics is not None:
            self._metrics.count_finding(detector, phase.value, "skipped_by_gate")


# Members read on every request, bound once: on Python 3.11 ``Enum.MEMBER`` goes through
# EnumType's __getattr__ hook, about ten times the cost of reading a module global.
_OK = FindingStatus.OK


def _well_formed(name: str, results: object) -> Finding | None:
    """The one finding of a detector call that kept its contract and scored cleanly (status
    ok, a float score in [0, 1], its own name, a duration), as it is; ``None`` for anything
    else, which :meth:`Pipeline._finish` checks and records the long way. One test for the
    usual case, without rebuilding a frozen dataclass (NaN fails the range comparison)."""
    if type(results) is list and len(results) == 1:
        found = results[0]
        if (
            type(found) is Finding
            and found.status is _OK
            and type(found.score) is float
            and 0.0 <= found.score <= 1.0
            and found.detector == name
            and found.duration_seconds > 0.0
        ):
            return found
    return None


def _opens(gate: Finding, min_score: float) -> bool:
    """A gate opens on a high enough score, and when it gave none (it failed: run anyway)."""
    return gate.status is not _OK or gate.score >= min_score


#: Plans kept per pipeline; past this many (rule tuples built per call), the cache starts over.
_MAX_PLANS = 256


class _Lock(Protocol):
    """What the pipeline does with a detector's ``inline_lock``."""

    def acquire(self, blocking: bool = ...) -> bool: ...

    def release(self) -> None: ...


#: A rule, its detector when that one can run inline (``None``: it runs as a task, or is not
#: configured, which :meth:`Pipeline._one` reports), and the lock its inline calls take.
_Step = tuple[DetectorRule, InlineDetector[Any] | None, _Lock | None]


@dataclass(frozen=True, slots=True)
class _Plan:
    """A rule sequence resolved for :meth:`Pipeline.first_stage`: the ungated rules' steps,
    and the gated rules, in order."""

    rules: Sequence[DetectorRule]
    steps: tuple[_Step, ...]
    gated: tuple[DetectorRule, ...]


#: Samples this short always run inline: a thread hop costs more than they ever do.
_MIN_OFFLOAD_CHARS = 1024


def _score_locked(detector: InlineDetector[Any], sample: Sample) -> list[Finding]:
    """An inline detector's call in a worker thread, one at a time per detector.

    A rule's timeout stops waiting for it, not the call itself (a thread cannot be
    interrupted): a later call waits on the lock until it ends. A detector that is
    ``concurrent_safe`` has a lock that never holds anyone up.
    """
    with detector.inline_lock:
        return detector.score_inline((sample,))
