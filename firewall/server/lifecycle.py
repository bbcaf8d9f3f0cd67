"""Process lifecycle: start both ports, load detectors, handle signals, drain, stop.

Shutdown on SIGTERM (or SIGINT) follows the Kubernetes sequence:

1. ``/readyz`` turns 503 and the draining gauge goes to 1;
2. the proxy keeps serving for ``server.drain_delay_seconds`` while endpoint
   removal propagates (the kubelet does not wait for it);
3. the listener closes and in-flight requests, streams included, get up to
   ``server.shutdown_timeout_seconds`` to finish;
4. whatever is left is cancelled, then the upstream session, the detectors and
   the audit log are closed (the audit buffer is flushed).

A second signal skips the waiting. Set the pod's
``terminationGracePeriodSeconds`` above drain delay + shutdown timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from firewall.config.schema import AuditConfig, FirewallConfig
from firewall.core.detector_context import DetectorContext, UpstreamClient
from firewall.observability.audit import AuditLog
from firewall.observability.metrics import Metrics
from firewall.proxy.state import ServerState
from firewall.proxy.upstream import bearer_token, create_session
from firewall.screening.runtime import Runtime, build_runtime
from firewall.server.app import make_admin_app, make_proxy_server
from firewall.server.heap import freeze_long_lived
from firewall.server.reload import Reloader

__all__ = ["Server", "run"]

log = logging.getLogger("trigger_firewall.server")


@dataclass(slots=True)
class BoundPorts:
    proxy: int
    admin: int


class Server:
    """The sidecar: proxy and admin listeners around one :class:`ServerState`."""

    def __init__(
        self, config: FirewallConfig, metrics: Metrics | None = None, *, freeze_heap: bool = False
    ) -> None:
        self.config = config
        #: Exempt the long-lived heap from garbage collection after loads (firewall.server.heap). The
        #: process entry point sets it; an embedding process (a test run) owns its own heap.
        self.freeze_heap = freeze_heap
        self.metrics = metrics or Metrics()
        # Detectors reach the upstream through the state's session, opened in start().
        upstream = UpstreamClient(
            session=lambda: self.state.session,
            base_url=lambda: self.state.upstream_base,
            authorization=lambda: bearer_token(self.config.upstream) or self.state.upstream_auth,
        )
        context = DetectorContext(upstream=upstream, metrics=self.metrics)
        runtime = build_runtime(config, self.metrics, context=context)
        self.audit = AuditLog(config.audit, self.metrics)
        self.score_log: AuditLog | None = None
        if config.score_log.enabled:
            sink = AuditConfig(
                destination=config.score_log.destination, hash_salt_env=config.audit.hash_salt_env
            )
            self.score_log = AuditLog(sink)
        self.state = ServerState(runtime, self.metrics, self.audit, self.score_log)
        self.metrics.detector_state.source = self._detector_state
        self._proxy_runner: web.ServerRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self._proxy_site: web.TCPSite | None = None
        self.ports = BoundPorts(0, 0)
        self._stop = asyncio.Event()
        self._fast_stop = False
        self._fast = asyncio.Event()

    def _detector_state(self) -> Iterable[tuple[str, int, int]]:
        """What the live runtime's stateful detectors hold, for ``/metrics``."""
        for name, det in self.state.runtime.detectors.items():
            stats = det.state_stats()
            if stats is not None:
                yield name, stats[0], stats[1]

    async def start(self) -> BoundPorts:
        """Bind both ports, open the upstream session, then load detectors."""
        cfg = self.config.server
        runtime = self.state.runtime
        self.state.session = create_session(self.config.upstream)
        await self.audit.start()
        if self.score_log is not None:
            await self.score_log.start()
        self._prepare_metrics(runtime)
        self.metrics.reload_ok.set(1)
        self.metrics.reload_ts.set(time.time())

        self._admin_runner = web.AppRunner(make_admin_app(self.state), handle_signals=False, access_log=None)
        await self._admin_runner.setup()
        admin_site = web.TCPSite(self._admin_runner, cfg.admin_host, cfg.admin_port)
        await admin_site.start()
        self._proxy_runner = web.ServerRunner(
            make_proxy_server(
                self.state,
                access_log=None,
                # Bodies are relayed as the client encoded them: inflating them here would forward
                # plain bytes under the client's Content-Encoding header (and inflate bombs).
                auto_decompress=False,
            ),
            handle_signals=False,
            shutdown_timeout=1.0,
        )
        await self._proxy_runner.setup()
        self._proxy_site = web.TCPSite(self._proxy_runner, cfg.host, cfg.port, backlog=1024)
        await self._proxy_site.start()
        self.ports = BoundPorts(proxy=_bound_port(self._proxy_runner), admin=_bound_port(self._admin_runner))
        log.info(
            "listening",
            extra={
                "proxy": f"{cfg.host}:{self.ports.proxy}",
                "admin": f"{cfg.admin_host}:{self.ports.admin}",
                "upstream": self.state.upstream_base,
                "mode": self.config.mode.value,
                "config_hash": runtime.config_hash,
            },
        )
        await runtime.start(self.metrics)
        if self.freeze_heap:
            freeze_long_lived()  # detectors are loaded: what is alive now lives as long as the process
        self.state.started = True
        not_ready = [n for n, d in runtime.detectors.items() if not d.ready]
        if not_ready:
            log.error("detectors not ready; /readyz stays 503", extra={"detectors": not_ready})
        else:
            log.info("ready", extra={"detectors": sorted(runtime.detectors)})
        return self.ports

    def _prepare_metrics(self, runtime: Runtime) -> None:
        config = runtime.config
        routes = [*(r.name for r in config.routing.routes), "unmatched"]
        self.metrics.prepare(
            routes=routes,
            detectors=[(name, [p.value for p in det.phases]) for name, det in runtime.detectors.items()],
            upstream=config.upstream.name,
            mode=config.mode.value,
        )
        self.metrics.prepare_identity(routes, config.upstream.watch_identity)
        self.metrics.set_config(runtime.config_hash)

    def install_runtime(self, runtime: Runtime) -> None:
        """Make ``runtime`` the one new requests use (one reference swap on the loop)."""
        self._prepare_metrics(runtime)
        for name, det in runtime.detectors.items():
            self.metrics.detector_ready.labels(name).set(1 if det.ready else 0)
        self.state.runtime = runtime

    def request_stop(self) -> None:
        """Begin graceful shutdown (first call) or cut it short (second call)."""
        if self._stop.is_set():
            self._fast_stop = True
            self._fast.set()
            log.warning("second stop signal: skipping the drain")
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Drain and stop, in the order the module docstring gives."""
        cfg = self.config.server
        self.state.draining = True
        self.metrics.draining.set(1)
        log.info("draining", extra={"inflight": self.state.inflight})
        if cfg.drain_delay_seconds and not self._fast_stop:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.drain_delay_seconds):
                    await self._fast.wait()
        if self._proxy_site is not None:
            await self._proxy_site.stop()
        if not self._fast_stop:
            try:
                async with asyncio.timeout(cfg.shutdown_timeout_seconds):
                    await self.state.wait_idle()
            except TimeoutError:
                log.warning("shutdown timeout: cancelling requests", extra={"inflight": self.state.inflight})
        if self._proxy_runner is not None:
            await self._proxy_runner.cleanup()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self.state.session is not None:
            await self.state.session.close()
        await self.state.runtime.close()
        await self.audit.close()
        if self.score_log is not None:
            await self.score_log.close()
        log.info("stopped")


def _bound_port(runner: web.BaseRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return 0


async def run(
    config: FirewallConfig,
    *,
    config_path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, then drain. Returns the process exit code.

    ``config_path`` and ``overrides`` (the command-line flags) are kept so that a
    reload on SIGHUP or on a file change applies them again.
    """
    overrides = dict(overrides or {})
    server = Server(config, freeze_heap=True)
    reloader = Reloader(server, config_path, overrides=overrides)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    loop.add_signal_handler(signal.SIGHUP, reloader.trigger, "SIGHUP")
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        await server.shutdown()
        return 1
    if config.reload.watch:
        reloader.start_watching(config.reload.poll_seconds)
    await server.wait_stopped()
    await reloader.close()
    await server.shutdown()
    return 0
