"""Offline screening: run the configured detectors on records exactly as the proxy would.

Each record goes through :func:`firewall.screening.screen.screen`, the function the
proxy calls, with the record's model (its ``model`` field, or the request body's), so
per-route and per-model overrides give the verdict ``serve`` gives.

The ``scan`` command and the evaluation suite both use :class:`Scanner`. It builds
the same :class:`~firewall.screening.runtime.Runtime` the server builds (same detectors,
same compiled policy, same protocol adapters) and runs the same pipeline, so a
score seen offline is the score the proxy would compute for that text.

Records are JSON objects with an ``id`` and either ``text`` (one user message for
the input phase, one assistant message for the output phase) or ``request`` (a
request body in the route's protocol, e.g. an OpenAI chat request) or, for the
output phase, ``response`` (a response body).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from detectors import load_detector_class
from firewall.config.schema import FirewallConfig
from firewall.core.detector_context import DetectorContext, UpstreamClient
from firewall.core.errors import ConfigError, FirewallError, ProtocolError
from firewall.core.types import Action, Phase, Segment, Verdict
from firewall.proxy.upstream import bearer_token, create_session, upstream_target
from firewall.screening.runtime import MatchedRoute, Runtime, build_runtime
from firewall.screening.screen import (
    after_sanitizing,
    remove_chars,
    screen,
    screen_or_pass,
    screen_sanitized,
    screened_segments,
)

__all__ = ["RecordError", "Scanner", "verdict_summary"]

log = logging.getLogger("trigger_firewall.scan")


class RecordError(FirewallError):
    """A record that cannot be scanned (wrong shape); the message says why."""

    code = "invalid_record"
    reason = "invalid_record"


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    record_id: Any
    verdict: Verdict
    seconds: float


def verdict_summary(record_id: Any, verdict: Verdict, seconds: float) -> dict[str, Any]:
    """The JSONL result line for one record (no text, only scores and evidence)."""
    return {
        "id": record_id,
        "flagged": verdict.action is not Action.ALLOW,
        "action": verdict.action.value,
        "mode": verdict.mode.value,
        "reason": verdict.reason,
        "scores": {f.detector: round(f.score, 6) for f in verdict.findings if f.scored},
        "findings": [
            {
                "detector": f.detector,
                "status": f.status.value,
                "score": round(f.score, 6),
                "fired": f.detector in verdict.fired,
                "reason": list(f.reasons),
                "spans": [s.as_dict() for s in f.spans],
                **({"error": f.error} if f.error else {}),
            }
            for f in verdict.findings
        ],
        "latency_ms": round(seconds * 1000, 3),
    }


class Scanner:
    """The proxy's screening path without the network, for files of records."""

    def __init__(self, config: FirewallConfig, *, route: str | None = None, upstream: bool = False) -> None:
        """``upstream``: detectors that ask the protected model (``counterfactual``) send their
        probes to ``config.upstream`` as the proxy would. Without it they do not run, and
        :attr:`not_run` names them: their verdicts are the proxy's minus that proof."""
        self.not_run: tuple[str, ...] = ()
        if not upstream:
            config, self.not_run = _without_upstream_detectors(config)
            if self.not_run:
                log.warning(
                    "%s not run: it asks the protected model, which only serve (or scan --upstream URL) "
                    "reaches; verdicts here lack that proof",
                    ", ".join(self.not_run),
                )
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        context = None
        if upstream:
            base, auth = upstream_target(config.upstream)
            client = UpstreamClient(
                session=lambda: self._session,
                base_url=lambda: base,
                authorization=lambda: bearer_token(config.upstream) or auth,
            )
            context = DetectorContext(upstream=client)
        self.runtime: Runtime = build_runtime(config, context=context)
        names = self.runtime.routes.names()
        if route is None:
            route = "chat_completions" if "chat_completions" in names else (names[0] if names else None)
        if route is None or route not in names:
            raise ConfigError(f"unknown route {route!r}; configured routes: {', '.join(names) or 'none'}")
        self.route: MatchedRoute = self.runtime.routes.by_name(route)

    async def __aenter__(self) -> Scanner:
        if self.runtime.context is not None:
            self._session = create_session(self.config.upstream)
        await self.runtime.start()
        not_ready = [n for n, d in self.runtime.detectors.items() if not d.ready]
        if not_ready:
            raise ConfigError(f"detectors failed to load: {', '.join(not_ready)}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runtime.close()
        if self._session is not None:
            await self._session.close()

    def segments(self, record: Any, phase: Phase) -> list[Segment]:
        """The texts a record carries for ``phase``; :class:`RecordError` if none can be read."""
        if not isinstance(record, dict):
            raise RecordError("a record must be a JSON object")
        adapter = self.route.adapter
        try:
            if isinstance(record.get("text"), str):
                role = "user" if phase is Phase.INPUT else "assistant"
                return [Segment(role, record["text"], "/text")]
            if phase is Phase.INPUT and "request" in record:
                return screened_segments(self.route, adapter.input_segments(record["request"]))
            if phase is Phase.OUTPUT and "response" in record:
                return adapter.output_segments(record["response"])
        except ProtocolError as exc:
            raise RecordError(str(exc)) from exc
        wanted = "'text' or 'request'" if phase is Phase.INPUT else "'text' or 'response'"
        raise RecordError(f"a record needs {wanted}")

    def model(self, record: Any) -> str | None:
        """The model a record is for: its ``model`` field, else its request body's ``model``.

        Per-model overrides apply to it exactly as they do in the proxy.
        """
        if not isinstance(record, dict):
            return None
        model = record.get("model")
        if isinstance(model, str):
            return model
        request = record.get("request")
        if isinstance(request, dict):
            return self.route.adapter.model(request)
        return None

    async def scan_segments(
        self,
        segments: Iterable[Segment],
        phase: Phase,
        record_id: Any = None,
        model: str | None = None,
        *,
        request: dict[str, Any] | None = None,
    ) -> ScanOutcome:
        """Screen one record's texts; a ``sanitize`` verdict screens the cleaned record again.

        The cleaned record is ``request`` less the removed characters when the record
        is a request body (edited and read again as the proxy does), else the texts
        less them.
        """
        start = time.perf_counter()
        rid = str(record_id)
        runtime, route = self.runtime, self.route
        # A request body is posted on the route's own path, as a client would send it (a
        # path with a {parameter} names no one request: such a record is not asked again).
        path = route.config.path if request is not None and "{" not in route.config.path else None
        verdict = await screen_or_pass(
            runtime,
            route,
            phase,
            tuple(segments),
            model=model,
            request_id=rid,
            request=(path, request) if path is not None else None,
        )
        if verdict.sanitizes:
            if request is not None:
                try:
                    cleaned = await screen_sanitized(
                        runtime, route, verdict, orjson.dumps(request), request_id=rid, path=path
                    )
                except ProtocolError as exc:  # the proxy answers 400: not a record to score
                    raise RecordError(str(exc)) from exc
                verdict = cleaned.verdict
            else:
                remedy = verdict.remedy
                segments = [dataclasses.replace(s, text=remove_chars(s.text, remedy)) for s in segments]
                second = await screen(runtime, route, phase, tuple(segments), model=model, request_id=rid)
                verdict = after_sanitizing(verdict, second)
        return ScanOutcome(record_id, verdict, time.perf_counter() - start)

    async def scan_record(self, record: Any, phase: Phase) -> dict[str, Any]:
        """Scan one record; raises :class:`RecordError` for records of the wrong shape."""
        segments = self.segments(record, phase)
        request = record.get("request") if not isinstance(record.get("text"), str) else None
        outcome = await self.scan_segments(
            segments,
            phase,
            record.get("id"),
            self.model(record),
            request=request if isinstance(request, dict) else None,
        )
        return verdict_summary(outcome.record_id, outcome.verdict, outcome.seconds)

    async def scan_many(
        self, records: AsyncIterator[tuple[int, Any]], phase: Phase, concurrency: int = 32
    ) -> AsyncIterator[tuple[int, dict[str, Any] | RecordError]]:
        """Scan ``(line_no, record)`` pairs with bounded concurrency, yielding in input order."""
        window: list[tuple[int, asyncio.Task[dict[str, Any]]]] = []

        async def drain_one() -> tuple[int, dict[str, Any] | RecordError]:
            line_no, task = window.pop(0)
            try:
                return line_no, await task
            except RecordError as exc:
                return line_no, exc

        async for line_no, record in records:
            window.append((line_no, asyncio.ensure_future(self.scan_record(record, phase))))
            if len(window) >= concurrency:
                yield await drain_one()
        while window:
            yield await drain_one()


def _without_upstream_detectors(config: FirewallConfig) -> tuple[FirewallConfig, tuple[str, ...]]:
    """``config`` with its enabled detectors that need the upstream switched off, and their names."""
    off = tuple(d.name for d in config.detectors if d.enabled and load_detector_class(d.kind).needs_upstream)
    if not off:
        return config, ()
    detectors = tuple(
        d.model_copy(update={"enabled": False}) if d.name in off else d for d in config.detectors
    )
    return config.model_copy(update={"detectors": detectors}), off
