"""Two reference points between the minimal proxy and the firewall, for the overhead budget.

``bench_proxy.py`` compares the firewall with ``minimal_proxy.py``. This file
answers two questions that ratio raises, as proxies ``bench_proxy.py`` can run
in the firewall's place (``--firewall-cmd``):

* ``--server lowlevel``: the minimal proxy on aiohttp's low-level ``web.Server``
  (one handler, no ``web.Application`` router), which is how the firewall's
  proxy port is built. It shows what the choice of server alone is worth.
* ``--screen``: the least a *screening* proxy can do on top of forwarding: parse
  the request and the response with orjson, take their texts, run the cheapest
  conceivable check on them (``str.isascii``), hash the prompt and append one
  JSON audit line per request to an in-memory buffer. No policy, no findings,
  no metrics, no timeouts, no header hygiene: a floor for screening, not a
  product.

Usage, from the repository root::

    .venv/bin/python loadtests/bench_proxy.py --concurrency 16 --firewall-ready tcp \\
        --firewall-cmd "{python} loadtests/reference_proxies.py --port {port} \\
        --upstream {upstream} --server lowlevel --screen"

It binds ``127.0.0.1`` only and answers only the chat completions body shape
that the benchmark sends.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import uvloop
from aiohttp import web

from minimal_proxy import FORWARDED_HEADERS, serve_until_signalled

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def make_handler(session: aiohttp.ClientSession, upstream: str, screen: bool) -> Handler:
    """The forwarding handler; with ``screen`` it also parses, checks, hashes and audits."""
    audit = bytearray()

    async def forward(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        headers = {k: request.headers[k] for k in FORWARDED_HEADERS if k in request.headers}
        verdict: dict[str, Any] = {}
        if screen:
            texts = [m["content"] for m in orjson.loads(body)["messages"]]
            verdict["input_flagged"] = not all(t.isascii() for t in texts)
            verdict["sha256"] = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()
        try:
            async with session.post(upstream + request.path_qs, data=body, headers=headers) as up:
                payload = await up.read()
                status = up.status
                content_type = up.headers.get("Content-Type", "application/octet-stream")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.json_response({"error": {"message": f"upstream: {exc!r}"}}, status=502)
        if screen:
            choices = orjson.loads(payload).get("choices", [])
            out = [c["message"]["content"] for c in choices]
            verdict["output_flagged"] = not all(t.isascii() for t in out)
            audit.extend(orjson.dumps(verdict, option=orjson.OPT_APPEND_NEWLINE))
            if len(audit) > 1 << 20:
                audit.clear()  # a real log would hand this to a writer
        return web.Response(body=payload, status=status, headers={"Content-Type": content_type})

    return forward


async def serve(port: int, upstream: str, server_kind: str, screen: bool) -> None:
    """Serve until SIGTERM/SIGINT with the chosen server and handler."""
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30), auto_decompress=False
    ) as session:
        handler = make_handler(session, upstream.rstrip("/"), screen)
        runner: web.BaseRunner
        if server_kind == "lowlevel":
            runner = web.ServerRunner(web.Server(handler, access_log=None), handle_signals=False)
        else:
            app = web.Application()
            app.router.add_post("/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await serve_until_signalled(runner, port)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run on uvloop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--server", choices=("app", "lowlevel"), default="app")
    parser.add_argument("--screen", action="store_true", help="parse, check, hash and audit")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.upstream, args.server, args.screen))


if __name__ == "__main__":
    main()
