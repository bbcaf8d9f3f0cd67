"""Mutable per-process state shared by the proxy and admin apps.

Everything that changes while the process runs lives here, in one object behind
one ``AppKey``: the current :class:`~firewall.screening.runtime.Runtime` (swapped whole on
reload), the upstream session, the model the upstream last said answered, the in-flight
count and the draining flag that ``/readyz`` and the shutdown sequence read.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from firewall.observability.audit import AuditLog
from firewall.observability.metrics import Metrics
from firewall.proxy.identity import UpstreamIdentity
from firewall.proxy.upstream import upstream_target
from firewall.screening.runtime import Runtime

__all__ = ["STATE", "ServerState"]


class ServerState:
    """The sidecar's live state. Only the event loop thread touches it."""

    def __init__(
        self, runtime: Runtime, metrics: Metrics, audit: AuditLog, score_log: AuditLog | None = None
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.audit = audit
        self.score_log = score_log
        self.session: aiohttp.ClientSession | None = None
        self.upstream_base, self.upstream_auth = upstream_target(runtime.config.upstream)
        #: The model the upstream last said answered, per route and requested model.
        self.identity = UpstreamIdentity()
        self.inflight = 0
        self.draining = False
        self.started = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()
        self.metrics.inflight.value += 1

    def leave(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.value -= 1
        if self.inflight <= 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until nothing is in flight (callers bound it with ``asyncio.timeout``)."""
        await self._idle.wait()

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.runtime.ready


STATE: web.AppKey[ServerState] = web.AppKey("state", ServerState)
