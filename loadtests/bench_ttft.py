"""Time to first content and gaps between tokens, direct and through the firewall.

A token-by-token stream is what an LLM user watches: the time to the first content
and the rhythm after it matter more than total stream time. This starts a mock
upstream that streams ``--tokens`` chat chunks ``--token-ms`` apart (prose, or an
answer that opens a code block after a sentence with ``--code``), then the firewall
in front of it (``python -m firewall serve --config CONFIG``), and reads ``--streams``
streams one after another, first directly, then through the firewall. It prints the
p50/p95 time to first content, the median gap between content chunks, and what the
firewall added. Everything is on 127.0.0.1 and stops when it ends.

    .venv/bin/python -m loadtests.bench_ttft --config loadtests/bench-config-defaults.yaml
    .venv/bin/python -m loadtests.bench_ttft --config CONFIG_WITH_INSECURE_CODE --code
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
PROSE = "The answer depends on how the list is used later, so here is a short explanation. "
CODE_LEAD = "Here is a function that does it:\n\n```python\n"
CODE_BODY = "def reverse(items):\n    items.reverse()\n    return items\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tokens(n: int, code: bool) -> list[str]:
    text = (CODE_LEAD + CODE_BODY * 8 + "```\n") if code else PROSE * 8
    words = text.split(" ")
    out = [w + " " for w in words]
    return (out * (n // len(out) + 1))[:n]


def _chunk(text: str | None, finish: str | None = None) -> bytes:
    delta = {"content": text} if text is not None else {}
    event = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + orjson.dumps(event) + b"\n\n"


@contextlib.asynccontextmanager
async def upstream(tokens: list[str], gap: float) -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_chunk(None))  # the role chunk, as servers send first
        for token in tokens:
            await asyncio.sleep(gap)
            await resp.write(_chunk(token))
        await resp.write(_chunk(None, "stop"))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async with serving(app) as url:
        yield url


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def one_stream(session: aiohttp.ClientSession, base: str) -> tuple[float, list[float]]:
    """(seconds to the first content, gaps between content chunks)."""
    body = orjson.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Hi."}]}
    )
    start = time.perf_counter()
    first = None
    last = 0.0
    gaps: list[float] = []
    async with session.post(base + "/v1/chat/completions", data=body) as resp:
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            if not orjson.loads(line[6:])["choices"][0]["delta"].get("content"):
                continue
            now = time.perf_counter()
            if first is None:
                first = now - start
            else:
                gaps.append(now - last)
            last = now
    return (first if first is not None else float("nan")), gaps


async def measure(base: str, streams: int) -> tuple[list[float], list[float]]:
    firsts: list[float] = []
    gaps: list[float] = []
    async with aiohttp.ClientSession() as session:
        await one_stream(session, base)  # warm-up: connections, first-use caches
        for _ in range(streams):
            first, g = await one_stream(session, base)
            firsts.append(first)
            gaps.extend(g)
    return firsts, gaps


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class NotReady(RuntimeError):
    """The firewall process did not answer /readyz in time."""


@contextlib.asynccontextmanager
async def firewall_process(
    config: Path, upstream_url: str, root: Path = ROOT
) -> AsyncIterator[str]:
    """``python -m firewall serve`` from checkout ``root`` in front of ``upstream_url``,
    ready; yields its base URL and stops it at exit."""
    port, admin = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "firewall", "serve", "--config", str(config),
           "--upstream", upstream_url, "--host", "127.0.0.1", "--port", str(port),
           "--admin-port", str(admin)]  # fmt: skip
    # Started once, before any measurement: a blocking Popen here costs the loop nothing.
    proc = subprocess.Popen(  # noqa: ASYNC220
        cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(600):
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise NotReady("the firewall did not become ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def main_async(args: argparse.Namespace) -> int:
    tokens = _tokens(args.tokens, args.code)
    async with upstream(tokens, args.token_ms / 1000) as up:
        try:
            async with firewall_process(args.config, up) as base:
                direct = await measure(up, args.streams)
                through = await measure(base, args.streams)
        except NotReady as exc:
            print(exc, file=sys.stderr)
            return 1
    kind = "code answer" if args.code else "prose"
    print(
        f"{args.streams} streams of {args.tokens} tokens, {args.token_ms:g} ms apart ({kind}),"
        f" config {args.config}"
    )
    print(
        f"{'':10} {'first p50 ms':>13} {'first p95 ms':>13} {'gap p50 ms':>11} {'gap p95 ms':>11}"
    )
    rows = {"direct": direct, "firewall": through}
    for name, (firsts, gaps) in rows.items():
        print(f"{name:10} {_pct(firsts, 0.5) * 1000:13.1f} {_pct(firsts, 0.95) * 1000:13.1f} "
              f"{_pct(gaps, 0.5) * 1000:11.1f} {_pct(gaps, 0.95) * 1000:11.1f}")  # fmt: skip
    added_first = (statistics.median(through[0]) - statistics.median(direct[0])) * 1000
    added_gap = (statistics.median(through[1]) - statistics.median(direct[1])) * 1000
    print(
        f"added: first content {added_first:+.1f} ms (p50),"
        f" gap between tokens {added_gap:+.1f} ms (p50)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("loadtests/bench-config-defaults.yaml"))
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--token-ms", type=float, default=20.0)
    parser.add_argument(
        "--code", action="store_true", help="the answer opens a code block after one line"
    )
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
