"""The one screening path: route, phase, segments and model in; a verdict out.

The proxy (request bodies), the relay (response bodies and streams), ``scan``,
``calibrate`` and ``eval`` all call :func:`screen`, so the per-model and per-route
overrides, the role filter and the policy are applied the same way everywhere: a
record scanned offline gets the verdict ``serve`` would give it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from firewall.core.errors import InvalidJson
from firewall.core.types import (
    Action,
    BlockKind,
    Finding,
    FindingStatus,
    Phase,
    Resend,
    Sample,
    Segment,
    Verdict,
)
from firewall.core.values import value_type
from firewall.protocols.json_checks import check_unambiguous
from firewall.protocols.json_edit import remove_json_chars
from firewall.screening.runtime import MatchedRoute, Runtime

__all__ = [
    "Sanitized",
    "Staged",
    "after_sanitizing",
    "remove_chars",
    "screen_sanitized",
    "screen",
    "screen_or_pass",
    "screen_staged",
    "screened_segments",
    "unscreenable",
]


def screened_segments(route: MatchedRoute, segments: list[Segment]) -> list[Segment]:
    """The request segments a route screens: all of them, or those of its configured roles."""
    roles = route.roles
    if roles is None:
        return segments
    return [s for s in segments if s.role in roles]


async def screen(
    runtime: Runtime,
    route: MatchedRoute,
    phase: Phase,
    segments: Sequence[Segment],
    *,
    model: str | None = None,
    request_id: str = "",
    request: tuple[str, Any] | None = None,
) -> Verdict | None:
    """Run ``phase``'s detectors on ``segments`` and decide, under ``model``'s policy.

    Returns ``None`` when nothing was screened: the policy (after the model's
    overrides) has no detector for this phase, or there is no text. Callers that
    must report a verdict anyway evaluate an empty list of findings. ``request`` is
    the path and parsed body the segments were read from (see :func:`screen_staged`).
    """
    staged = await screen_staged(
        runtime, route, phase, segments, model=model, request_id=request_id, request=request
    )
    if staged.prove is None:
        return staged.verdict
    return await staged.prove()


@value_type
class Staged:
    """A verdict in two steps: what the ungated detectors decided, and how to finish.

    ``prove`` is set when gated detectors (behavioural proof: probes to the model) are
    still to run on a request the first stage let through unchanged; awaiting it gives
    the final verdict. The proxy forwards such a request at once and holds the answer
    until then; everyone else awaits it straight away (:func:`screen`).
    """

    verdict: Verdict | None
    prove: Callable[[], Awaitable[Verdict]] | None = None


async def screen_staged(
    runtime: Runtime,
    route: MatchedRoute,
    phase: Phase,
    segments: Sequence[Segment],
    *,
    model: str | None = None,
    request_id: str = "",
    request: tuple[str, Any] | None = None,
) -> Staged:
    """:func:`screen` with the gated detectors left to the caller (see :class:`Staged`).

    A request the first stage already blocks, or sanitizes (the cleaned text is screened
    again, gated detectors included), does not run them: they are recorded as skipped.

    ``request`` (the path the request came on and its parsed body) lets a behavioural
    detector ask the model again in the request's own API on a route that is not asked
    as an OpenAI chat or completion (:class:`~firewall.core.types.Resend`).
    """
    policy = route.for_model(model).policy
    rules = policy.rules(phase)
    if not rules or not segments:
        return Staged(None)
    adapter = route.adapter
    resend = None
    if request is not None and adapter.reprompt is None and adapter.has_output_text:
        path, body = request
        resend = Resend(
            adapter.probe_path(path), body, adapter.probe_body, adapter.probe_text, adapter.probe_safe
        )
    sample = Sample(
        request_id, phase, route.name, tuple(segments), model, reprompt=adapter.reprompt, resend=resend
    )
    pipeline = runtime.pipeline
    findings, gated = await pipeline.first_stage(rules, sample)
    first = policy.evaluate(phase, findings)
    if not gated:
        return Staged(first)
    if first.blocks or first.sanitizes:
        findings.extend(pipeline.skipped(r.detector, phase) for r in gated)
        return Staged(policy.evaluate(phase, findings))

    async def prove() -> Verdict:
        proof = await pipeline.second_stage(gated, sample, findings)
        return policy.evaluate(phase, [*findings, *proof])

    return Staged(first, prove)


async def screen_or_pass(
    runtime: Runtime,
    route: MatchedRoute,
    phase: Phase,
    segments: Sequence[Segment],
    *,
    model: str | None = None,
    request_id: str = "",
    request: tuple[str, Any] | None = None,
) -> Verdict:
    """:func:`screen`, or when nothing was screened the policy's verdict on no findings.

    For callers that report a verdict for every record or response (``scan``, the
    relay's output phase); the proxy's input phase records none when nothing ran.
    """
    verdict = await screen(
        runtime, route, phase, segments, model=model, request_id=request_id, request=request
    )
    if verdict is not None:
        return verdict
    return route.for_model(model).policy.evaluate(phase, ())


def unscreenable(route: MatchedRoute, phase: Phase, why: str, *, model: str | None = None) -> Verdict:
    """The verdict for text that exists but cannot be read (too large, not JSON).

    Every detector of the phase is recorded as failed with ``why``, so each one's
    fail mode decides: fail-closed detectors block, the others fail open.
    """
    policy = route.for_model(model).policy
    findings = [Finding.failed(r.detector, FindingStatus.ERROR, why) for r in policy.rules(phase)]
    return policy.evaluate(phase, findings)


def remove_chars(text: str, chars: str) -> str:
    """``text`` without any of ``chars`` (a sanitize verdict's remedy)."""
    return text.translate(dict.fromkeys(map(ord, chars)))


def after_sanitizing(first: Verdict, second: Verdict | None) -> Verdict:
    """One verdict for a request that was screened, cleaned of ``first.remedy`` and screened again.

    The cleaned request is what the model would read, so it is screened as a new
    request (``second``; ``None`` when nothing in it was screened): if that blocks,
    the block stands; otherwise the answer is ``sanitize``, with the sanitizing
    detectors' evidence from the request as sent (what was removed, and where) and
    every other detector's finding on the cleaned text. A cleaned request that would
    need cleaning again is blocked: removal must converge in one step.
    """
    if second is not None and second.action is Action.SANITIZE:
        return dataclasses.replace(
            second,
            action=Action.BLOCK,
            effective_action=Action.BLOCK,
            block_kind=BlockKind.POLICY,
            remedy="",
        )
    if second is not None and second.blocks:
        return second
    sanitizers = {f.detector: f for f in first.findings if f.remedy and f.detector in first.fired}
    if second is None:
        return first
    findings = tuple(sanitizers.get(f.detector, f) for f in second.findings)
    fired = tuple(dict.fromkeys((*sanitizers, *second.fired)))
    return dataclasses.replace(
        second,
        action=Action.SANITIZE,
        effective_action=Action.SANITIZE,
        reason=first.reason,
        findings=findings,
        fired=fired,
        block_kind=None,
        remedy=first.remedy,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Sanitized:
    """A request body cleaned of a sanitize verdict's characters, and its screening."""

    raw: bytes
    body: Any
    route: MatchedRoute
    model: str | None
    segments: list[Segment]
    verdict: Verdict
    removed: int


async def screen_sanitized(
    runtime: Runtime,
    route: MatchedRoute,
    first: Verdict,
    raw: bytes,
    *,
    request_id: str = "",
    path: str | None = None,
) -> Sanitized:
    """Remove ``first.remedy`` from a JSON body in place and screen what is left, as the model reads it.

    The edited bytes are what the upstream would read, so they are parsed, checked and
    screened again as a new request (a removal can join a key or a model name back
    together), under the policy of the model they name; :func:`after_sanitizing` makes one
    verdict of the two. Raises :class:`~firewall.core.errors.ProtocolError` when the edited
    body is ambiguous. The proxy and ``scan`` both clean request bodies here. ``path`` is
    the path the request came on (see :func:`screen_staged`'s ``request``).
    """
    raw, removed = remove_json_chars(raw, first.remedy)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # removal keeps JSON valid; never trust that blindly
        raise InvalidJson(f"Request body is not valid JSON once cleaned: {exc.msg}.") from exc
    check_unambiguous(raw, body)
    model = route.adapter.model(body)
    resolved = route.for_model(model)
    segments = screened_segments(resolved, resolved.adapter.input_segments(body))
    second = await screen(
        runtime,
        resolved,
        Phase.INPUT,
        segments,
        model=model,
        request_id=request_id,
        request=(path, body) if path is not None else None,
    )
    return Sanitized(raw, body, resolved, model, segments, after_sanitizing(first, second), removed)
