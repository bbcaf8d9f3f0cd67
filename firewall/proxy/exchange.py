"""One request's record on its way through the proxy, and what is derived from it.

The handler fills an :class:`Exchange` as the request moves (route, verdicts,
timings, stream outcome); when it ends, the same record feeds the request
counter and the one audit line, so metrics and audit always agree.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from firewall.core.types import Action, FindingStatus, Verdict
from firewall.observability.audit import microseconds, verdict_record
from firewall.observability.metrics import Metrics
from firewall.proxy.state import ServerState
from firewall.screening.runtime import Runtime

__all__ = ["Exchange", "Outcome", "record_verdict", "write_audit"]


class Outcome(StrEnum):
    """What happened to one request: the ``action`` label of ``trigger_firewall_requests_total``.

    A verdict's :class:`~firewall.core.types.Action` is one of allow, log, sanitize and block;
    a request can also end in an error (the firewall or the upstream failed) or be
    rejected before screening (bad body, overload). Members are ``str``, so they are
    label values and audit fields as they are.
    """

    ALLOW = "allow"
    LOG = "log"
    #: Forwarded without the characters a ``sanitize`` verdict removed.
    SANITIZE = "sanitize"
    BLOCK = "block"
    ERROR = "error"
    REJECTED = "rejected"


@dataclass(slots=True)
class Exchange:
    """What one request accumulates, for metrics and the audit line."""

    request_id: str
    route: str
    mode: str
    start: float
    method: str
    runtime: Runtime
    model: str | None = None
    stream: bool = False
    screened: bool = False
    input_verdict: Verdict | None = None
    output_verdict: Verdict | None = None
    input_fp: tuple[str, int] | None = None
    output_fp: tuple[str, int] | None = None
    input_segments: int = 0
    overhead: dict[str, float] = field(default_factory=dict)
    upstream_seconds: float | None = None
    status: int = 0
    action: Outcome = Outcome.ALLOW
    stream_info: dict[str, Any] | None = None
    error: str | None = None
    texts: dict[str, list[str]] | None = None
    #: What a sanitize verdict removed from the body: counts and code points, never text.
    sanitized: dict[str, Any] | None = None
    #: The client's own X-Request-Id when it is a plain token (audit: client_request_id).
    client_request_id: str | None = None
    #: Sent upstream before the verdict, its answer held until a behavioural proof was in
    #: (audit: forwarded_before_verdict; a block then closed the upstream call).
    held: bool = False
    #: Watched fields of the upstream's answer that changed since the last answer to this
    #: route and model (audit: upstream_identity_change).
    identity_changes: list[dict[str, str]] | None = None

    @property
    def reply_id(self) -> str:
        """The X-Request-Id answered to the client: its own when it sent one, else the firewall's."""
        return self.client_request_id or self.request_id

    def note_log(self, verdict: Verdict | None) -> None:
        """Raise ``allow`` to ``log`` when a verdict logged (monitor-mode blocks too)."""
        if verdict is not None and self.action is _ALLOWED and verdict.effective_action is _LOG:
            self.action = Outcome.LOG


# Members read on every request, bound once: on Python 3.11 ``Enum.MEMBER`` goes through
# EnumType's __getattr__ hook, about ten times the cost of reading a module global.
_OK, _PARTIAL, _SKIPPED = FindingStatus.OK, FindingStatus.PARTIAL, FindingStatus.SKIPPED
_ALLOWED, _LOG = Outcome.ALLOW, Action.LOG


def record_verdict(metrics: Metrics, verdict: Verdict) -> None:
    """Count a phase's verdict and each detector's outcome."""
    # StrEnum members serve as label values directly (they are str; ``.value`` is slow).
    phase = verdict.phase
    metrics.count_verdict(phase, verdict.effective_action, verdict.mode, verdict.reason)
    fired = verdict.fired
    counted: list[tuple[str, str, str]] = []
    for finding in verdict.findings:
        status = finding.status
        if finding.detector in fired:
            counted.append((finding.detector, phase, "fired"))
        elif status is _OK:
            counted.append((finding.detector, phase, "not_fired"))
        elif status is _PARTIAL:
            counted.append((finding.detector, phase, "partial"))
        elif status is not _SKIPPED:
            counted.append((finding.detector, phase, "error"))
    metrics.count_findings(counted)
    for name in verdict.fail_open:
        metrics.count_fail_open(name, phase)


def write_scores(state: ServerState, ex: Exchange) -> None:
    """Sampled shadow score lines (one per screened phase) for threshold calibration."""
    scores_log = state.score_log
    if scores_log is None:
        return
    cfg = ex.runtime.config.score_log
    if ex.runtime.policy.routes[ex.route].mode not in cfg.modes or random.random() >= cfg.sample_rate:  # noqa: S311
        return
    for phase, verdict in (("input", ex.input_verdict), ("output", ex.output_verdict)):
        if verdict is None:
            continue
        event: dict[str, Any] = {
            "event": "firewall.scores",
            "request_id": ex.request_id,
            "client_request_id": ex.client_request_id,
            "route": ex.route,
            "phase": phase,
            "mode": ex.mode,
            "config_hash": ex.runtime.config_hash,
            "scores": {f.detector: f.score for f in verdict.findings if f.scored},
            "statuses": {f.detector: f.status.value for f in verdict.findings},
            "fired": list(verdict.fired),
        }
        if cfg.include_text and ex.texts is not None:
            event["text"] = ex.texts.get(phase)
        scores_log.emit(event)


def write_audit(state: ServerState, ex: Exchange) -> None:
    """Write the one audit line for a screened request (no text unless configured)."""
    write_scores(state, ex)
    audit = state.audit
    if not audit.enabled:
        return
    if not audit.log_allowed and ex.action is _ALLOWED and not ex.identity_changes:
        return  # an allowed request is logged anyway when the model behind the endpoint changed
    config = ex.runtime.config  # the request's own snapshot, even if a reload happened since
    event: dict[str, Any] = {
        "request_id": ex.request_id,
        "client_request_id": ex.client_request_id,
        "route": ex.route,
        "upstream": config.upstream.name,
        "http.request.method": ex.method,
        "http.response.status_code": ex.status,
        "gen_ai.request.model": ex.model,
        "mode": ex.mode,
        "action": ex.action,
        "config_hash": ex.runtime.config_hash,
        "firewall_overhead_seconds": microseconds(sum(ex.overhead.values())),
        "upstream_seconds": microseconds(ex.upstream_seconds) if ex.upstream_seconds is not None else None,
        "total_seconds": microseconds(time.perf_counter() - ex.start),
    }
    if ex.input_verdict is not None:
        event["input"] = verdict_record(ex.input_verdict)
    if ex.input_fp is not None:
        event["input.sha256"], event["input.chars"] = ex.input_fp
        event["input.segments"] = ex.input_segments
    if ex.output_verdict is not None:
        event["output"] = verdict_record(ex.output_verdict)
    if ex.output_fp is not None:
        event["output.sha256"], event["output.chars"] = ex.output_fp
    if ex.sanitized is not None:
        event["sanitized"] = ex.sanitized
    if ex.held:
        event["forwarded_before_verdict"] = True
    if ex.stream_info is not None:
        event["stream"] = ex.stream_info
    if ex.identity_changes:
        event["upstream_identity_change"] = ex.identity_changes
    if ex.error:
        event["error"] = ex.error
    if ex.texts is not None:
        event["text"] = ex.texts
    audit.emit(event)
