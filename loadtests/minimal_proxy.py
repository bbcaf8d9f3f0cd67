"""The floor: the least a Python aiohttp reverse proxy can do per request.

The firewall is an aiohttp+uvloop proxy that adds screening on top of plain
forwarding. To say what the *screening* costs we need a baseline built from the
same parts doing only the forwarding: read the request body, POST it upstream
over one shared keep-alive ``ClientSession``, and hand back the upstream's body,
status and content type. No parsing, no logging, no metrics. Whatever the
firewall costs above this is its own overhead; whatever this costs is the price
of Python+aiohttp that no firewall built on them can beat.

Run it as ``python loadtests/minimal_proxy.py --port 18002 --upstream
http://127.0.0.1:18001``. It binds ``127.0.0.1`` only.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

HOST = "127.0.0.1"
# Request headers worth carrying upstream; hop-by-hop and Host are deliberately not.
FORWARDED_HEADERS = ("Content-Type", "Authorization", "Accept")

SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM_KEY = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.Response:
    """Forward one POST upstream and relay the answer, fully buffered.

    Buffering is what a screening proxy must do anyway for the request, and for
    the small fixed benchmark responses it is also the cheapest way back.
    """
    body = await request.read()
    headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
    session = request.app[SESSION_KEY]
    url = request.app[UPSTREAM_KEY] + request.path_qs
    try:
        async with session.post(url, data=body, headers=headers) as upstream:
            payload = await upstream.read()
            content_type = upstream.headers.get("Content-Type", "application/octet-stream")
            return web.Response(
                body=payload, status=upstream.status, headers={"Content-Type": content_type}
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return web.json_response({"error": {"message": f"upstream: {exc!r}"}}, status=502)


def build_app(upstream: str, connector_limit: int) -> web.Application:
    """Wire the shared session into the app's lifecycle.

    The connector limit should be at least the benchmark's highest concurrency,
    or requests would queue for a pooled connection inside the floor and make it
    look slower than it is.
    """
    app = web.Application()
    app[UPSTREAM_KEY] = upstream.rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(
            limit=connector_limit, limit_per_host=0, keepalive_timeout=60
        )
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        ) as session:
            app[SESSION_KEY] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", forward)
    return app


async def serve_until_signalled(runner: web.BaseRunner, port: int) -> None:
    """Listen on ``HOST:port`` until SIGTERM/SIGINT, then clean the runner up."""
    await runner.setup()
    site = web.TCPSite(runner, HOST, port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def serve(port: int, upstream: str, connector_limit: int) -> None:
    """Serve until SIGTERM/SIGINT, then close the session and the listener."""
    app = build_app(upstream, connector_limit)
    await serve_until_signalled(web.AppRunner(app, access_log=None, handle_signals=False), port)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run on uvloop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:18001")
    parser.add_argument(
        "--connector-limit",
        type=int,
        default=256,
        help="max pooled upstream connections (>= benchmark concurrency; default 256)",
    )
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.upstream, args.connector_limit))


if __name__ == "__main__":
    main()
