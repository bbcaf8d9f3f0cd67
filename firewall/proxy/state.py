"""Mutable per-process state shared by the proxy and admin apps.

Everything that changes while the process runs lives here, in one object behind
one ``AppKey``: the current :class:`~firewall.screening.runtime.Runtime` (swapped whole on
reload), the upstream session, the in-flight count and the draining flag that
``/readyz`` and the shutdown sequence read.
"""

from __future__ import annotations

import asyncio
import base64

import aiohttp
from aiohttp import web
from yarl import URL

from firewall.observability.audit import AuditLog
from firewall.observability.metrics import Metrics
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
        # Credentials in the configured URL become the upstream's Authorization header,
        # sent in place of the client's (as with ``api_key_env``): aiohttp refuses a URL
        # with credentials next to an Authorization header, and they must not reach logs.
        url = URL(str(runtime.config.upstream.url))
        self.upstream_auth: str | None = None
        if url.user is not None or url.password is not None:
            pair = f"{url.user or ''}:{url.password or ''}".encode()
            self.upstream_auth = "Basic " + base64.b64encode(pair).decode("ascii")
            url = url.with_user(None)
        self.upstream_base = str(url).rstrip("/")
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
