"""What the runtime hands a detector that needs more than its own parameters.

Why this exists
---------------
Most detectors are self-contained: text in, score out. A few need the sidecar
itself: STRIP's probing mode sends perturbed copies of a prompt to the protected
upstream, and it must do so through the firewall's *own* upstream connection
(the one keep-alive session the proxy holds, with the configured address and
credentials) rather than open a second client with its own settings, and it must
count what it spends in the firewall's metrics.

The hook is small and optional: a detector that defines
``bind_context(context)`` gets a :class:`DetectorContext` from
:meth:`firewall.screening.runtime.Runtime.start` before its ``start()``; every other
detector is untouched. The session is looked up at call time, not at bind time,
because the server opens it after the runtime is built (and a reload keeps it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import aiohttp
import orjson

from firewall.core.errors import UpstreamProbeError, UpstreamProbeTimeout, UpstreamProbeUnavailable
from firewall.core.telemetry import DetectorTelemetry

__all__ = [
    "ContextAware",
    "DetectorContext",
    "ProbeSender",
    "UpstreamClient",
    "all_or_first_error",
    "UpstreamProbeError",
    "UpstreamProbeTimeout",
    "UpstreamProbeUnavailable",
]


class UpstreamClient:
    """POSTs JSON to the configured upstream through the proxy's shared session.

    Probes carry ``X-Firewall-Probe: <detector>`` so the upstream (and its logs)
    can tell them from client traffic, and the upstream credentials the proxy
    itself would add (``upstream.api_key_env`` or credentials in the URL); the
    client's own ``Authorization`` header is not available to a detector.
    """

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession | None],
        base_url: Callable[[], str],
        authorization: Callable[[], str | None],
    ) -> None:
        self._session = session
        self._base_url = base_url
        self._authorization = authorization

    async def post_json(self, path: str, body: Any, *, timeout_s: float, probe: str) -> Any:
        """The decoded JSON answer to ``POST path``; raises :class:`UpstreamProbeError` subclasses."""
        session = self._session()
        if session is None or session.closed:
            raise UpstreamProbeUnavailable("the upstream session is not open")
        headers = {"Content-Type": "application/json", "X-Firewall-Probe": probe}
        auth = self._authorization()
        if auth:
            headers["Authorization"] = auth
        url = self._base_url() + "/" + path.lstrip("/")
        try:
            async with session.post(
                url,
                data=orjson.dumps(body),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise UpstreamProbeError(f"upstream answered {resp.status} to a probe")
        except TimeoutError as exc:
            raise UpstreamProbeTimeout(f"upstream probe timed out after {timeout_s} s") from exc
        except aiohttp.ClientConnectionError as exc:
            raise UpstreamProbeUnavailable(f"upstream unreachable: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamProbeError(f"upstream probe failed: {exc}") from exc
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProbeError("upstream probe answer is not JSON") from exc


_T = TypeVar("_T")


class ProbeSender:
    """The probes one detector sends upstream: at most ``concurrency`` in flight, each counted.

    Every probe is a billed call, so how it ended is counted the same way for every probing
    detector (``trigger_firewall_strip_probes_total{detector,outcome}``): ``ok``; ``error``,
    ``timeout`` or ``unavailable`` (the error's own reason, also when the answer cannot be
    read); ``cancelled`` (sent, answer never read); ``over_budget`` by the caller.
    """

    def __init__(
        self, detector: str, client: UpstreamClient, metrics: DetectorTelemetry | None, concurrency: int
    ) -> None:
        self.detector = detector
        self.client = client
        self.metrics = metrics
        self._slots = asyncio.Semaphore(concurrency)
        if metrics is not None:
            metrics.prepare_probes(detector)

    def count(self, outcome: str, n: int = 1) -> None:
        if self.metrics is not None and n:
            self.metrics.count_probes(self.detector, outcome, n)

    async def send(self, path: str, body: Any, *, timeout_s: float, read: Callable[[Any], _T]) -> _T:
        """POST ``body`` to ``path`` and ``read`` the answer (raising :class:`UpstreamProbeError`)."""
        async with self._slots:
            started = time.perf_counter()
            try:
                result = read(
                    await self.client.post_json(path, body, timeout_s=timeout_s, probe=self.detector)
                )
            except UpstreamProbeError as exc:
                self._observe(started)
                self.count(exc.reason)
                raise
            except asyncio.CancelledError:
                self.count("cancelled")  # never answered: no duration
                raise
        self._observe(started)
        self.count("ok")
        return result

    def _observe(self, started: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_probe(self.detector, time.perf_counter() - started)


async def all_or_first_error(calls: Sequence[Awaitable[_T]]) -> list[_T]:
    """Await ``calls`` together; the first failure cancels the rest and is raised as it is.

    A set of probes answers one question: once one fails, the others' answers are moot,
    and the caller wants the probe's own error (its reason label), not an ExceptionGroup.
    """
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(call)) for call in calls]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [t.result() for t in tasks]


async def _awaited(call: Awaitable[_T]) -> _T:
    return await call


@dataclass(frozen=True, slots=True)
class DetectorContext:
    """The sidecar's services a detector may use; either may be absent (tests, CLI tools)."""

    upstream: UpstreamClient | None = None
    metrics: DetectorTelemetry | None = None


@runtime_checkable
class ContextAware(Protocol):
    """A detector that wants the :class:`DetectorContext` (called before ``start``)."""

    def bind_context(self, context: DetectorContext) -> None: ...
