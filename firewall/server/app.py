"""Builds the two aiohttp servers: the proxy port and the admin port.

The proxy port is a low-level :class:`aiohttp.web.Server` with one handler and
no :class:`~aiohttp.web.Application` around it: everything about a request
happens in :func:`firewall.proxy.handler.handle`. An Application's router, match info
and middleware machinery ran on every request for a port that has exactly one
catch-all handler; without it the proxy spends about 14 µs less CPU a request
(``loadtests/bench_proxy.py``, minimal proxy built both ways, 136 against 122
µs at concurrency 16). What the Application did that the proxy needs is done
here: aiohttp's 1 MiB request-body cap is lifted (the proxy enforces its own)
and ``Expect: 100-continue`` is answered (in :mod:`firewall.proxy.handler`, where the
refusal of other expectations is counted). The admin app serves
``/metrics``, ``/livez``, ``/readyz`` and ``/config`` on a separate port, bound to
loopback by default, so probes and scrapes never compete with or leak into model
traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from prometheus_client.aiohttp import make_aiohttp_handler

from firewall.config.schema import redacted
from firewall.protocols.base import error_body
from firewall.proxy.handler import handle
from firewall.proxy.state import STATE, ServerState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = ["make_admin_app", "make_proxy_server"]

# The proxy enforces its own, configurable body limit on screened routes, and
# streams unscreened bodies through; aiohttp's 1 MiB default must not interfere.
_NO_AIOHTTP_BODY_LIMIT = 2**62


#: What the proxy port says it is: no software version for a scanner to match against.
SERVER_HEADER = "trigger-firewall"
log = logging.getLogger("trigger_firewall.http")


class _ProxyRequest(web.BaseRequest):
    """A request whose responses name the server without a version banner (aiohttp
    would add ``Server: Python/3.x aiohttp/3.x`` to every answer)."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        response.headers["Server"] = SERVER_HEADER


class _ProxyRequestHandler(RequestHandler):
    """aiohttp's connection handler, but a request it cannot parse (or a handler crash)
    gets the proxy's JSON error shape, and neither the answer nor the log echoes the
    offending bytes (aiohttp's plain-text answer quotes them)."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        kind = type(exc).__name__ if exc is not None else "no exception"
        if status >= 500:
            log.error("request handler failed", extra={"error": kind, "status": status})
        else:  # the wording of logs.MalformedRequestFilter, which does the same for the admin port
            log.warning("malformed HTTP request rejected", extra={"error": kind, "status": status})
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error answer")
        code, text, error_type = (
            ("internal_error", "The firewall failed to handle the request.", "server_error")
            if status >= 500
            else ("malformed_request", "The request is not valid HTTP/1.1.", "invalid_request_error")
        )
        response = web.Response(
            status=status,
            body=orjson.dumps(error_body(text, code=code, error_type=error_type)),
            content_type="application/json",
            headers={"Server": SERVER_HEADER},
        )
        response.force_close()
        return response


class _ProxyServer(web.Server):
    """Hands out :class:`_ProxyRequestHandler` connection handlers (aiohttp's own
    ``__call__``, with the handler class swapped)."""

    def __call__(self) -> RequestHandler:
        return _ProxyRequestHandler(self, loop=self._loop, **self._kwargs)


def make_proxy_server(state: ServerState, **kwargs: Any) -> web.Server:
    """The proxy port's request server; ``kwargs`` go to aiohttp's connection handler.

    Must be called with the event loop running (aiohttp binds the server to it).
    """
    loop = asyncio.get_running_loop()

    def make_request(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        return _ProxyRequest(
            message, payload, protocol, writer, task, loop, client_max_size=_NO_AIOHTTP_BODY_LIMIT
        )

    async def proxy(request: web.BaseRequest) -> web.StreamResponse:
        return await handle(request, state)

    return _ProxyServer(proxy, request_factory=make_request, handler_cancellation=True, **kwargs)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def livez(request: web.Request) -> web.Response:
    """Liveness: the event loop answers. Never checks dependencies (no restart loops)."""
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: started, not draining, every required detector loaded."""
    state = request.app[STATE]
    runtime = state.runtime
    body = {
        "ready": state.ready,
        "draining": state.draining,
        "started": state.started,
        "detectors": {name: det.ready for name, det in runtime.detectors.items()},
        "config_hash": runtime.config_hash,
    }
    return _json(body, 200 if state.ready else 503)


async def effective_config(request: web.Request) -> web.Response:
    """The live config with secrets masked, plus its hash and detector metadata."""
    state = request.app[STATE]
    runtime = state.runtime
    return _json(
        {
            "config_hash": runtime.config_hash,
            "config": redacted(runtime.config),
            "detectors": [d.describe() for d in runtime.detectors.values()],
        }
    )


def _metrics_handler(state: ServerState) -> Handler:
    """``/metrics``, with each detector's readiness read at scrape time.

    Readiness changes between reloads too: a remote (Triton) model server goes down
    and comes back, and ``trigger_firewall_detector_ready`` (which the
    DetectorNotReady alert reads) must follow it as ``/readyz`` does.
    """
    export = make_aiohttp_handler(state.metrics.registry)

    async def metrics(request: web.Request) -> web.StreamResponse:
        gauge = state.metrics.detector_ready
        for name, det in state.runtime.detectors.items():
            gauge.labels(name).set(1 if det.ready else 0)
        return await export(request)

    return metrics


def make_admin_app(state: ServerState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/metrics", _metrics_handler(state))
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/config", effective_config)
    return app
