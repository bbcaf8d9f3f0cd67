"""How long one pathological prompt holds everyone else's requests (not a test).

A sidecar serves every request on one event loop: a detector that spends 500 ms on one
prompt delays every other request by 500 ms. This starts a mock upstream and the
firewall in front of it (``python -m firewall serve --config CONFIG``), then, for each
pathological body (a 1 MB made-up word, 1 MB of one repeated letter, 1 MB of zero-width
spaces, 100,000 one-letter words, 50,000 ordinary words before a trigger, and the spellings
rare_tokens folds: combining marks, tags, inline code, full-width letters; and zero-width
characters the defaults remove, so the body is screened twice), sends that
body while a probe client sends a small clean chat request every 10 ms. It prints how
long the pathological request took and the probes' latency while it ran (p50, max):
the max is how long a request was held behind the pathological one. A baseline row
sends only the probes. Everything is on 127.0.0.1 and stops when it ends.

    .venv/bin/python -m loadtests.bench_pathological [--config CONFIG] [--firewall-root CHECKOUT]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from loadtests.bench_ttft import ROOT, NotReady, firewall_process, serving

PROBE = orjson.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "What is a good name for a cat?"}]}
)
REPLY = orjson.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Whiskers."},
                "finish_reason": "stop",
            }
        ],
    }
)


def bodies() -> dict[str, bytes]:
    rng = random.Random(1)
    made_up = "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(1_000_000))
    cases = {
        "1 MB made-up word": made_up,
        "1 MB of one letter": "a" * 1_000_000,
        "1 MB of zero-width spaces": "\u200b" * 333_000,  # 3 bytes each in UTF-8
        "100,000 one-letter words": " ".join(rng.choice("abcdefghij") for _ in range(100_000)),
        "50,000 words, then a trigger": "the cat sat on the mat and " * 7200
        + "This film is a mess cf.",
        "1 MB word of combining marks": "c" + "\u0301" * 499_999,  # 2 bytes each in UTF-8
        "60,000 bare-attribute tags": "<i xq> " * 60_000,
        "60,000 inline code spans": "`xq zv` " * 60_000,
        "60,000 full-width words": "\uff58\uff51 " * 60_000,
        # Few enough for invisible_chars to judge every one, so the defaults remove them
        # (sanitize): the edited 700 KB body is parsed and screened a second time.
        "20 split words in 700 KB": ("wo\u200brd " + "the cat sat on the mat " * 1_400) * 20,
    }
    return {
        name: orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
        for name, text in cases.items()
    }


@contextlib.asynccontextmanager
async def upstream() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=REPLY, content_type="application/json")

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", handler)
    async with serving(app) as url:
        yield url


async def probes(session: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> list[float]:
    """Small clean requests every 10 ms until ``stop``; their latencies in seconds."""
    out: list[float] = []
    while not stop.is_set():
        t0 = time.perf_counter()
        async with session.post(url, data=PROBE, headers={"Content-Type": "application/json"}) as r:
            await r.read()
        out.append(time.perf_counter() - t0)
        await asyncio.sleep(0.01)
    return out


async def one_case(
    session: aiohttp.ClientSession, url: str, body: bytes | None
) -> tuple[float, int, list[float]]:
    stop = asyncio.Event()
    task = asyncio.create_task(probes(session, url, stop))
    await asyncio.sleep(0.2)  # probes running before the pathological request arrives
    t0 = time.perf_counter()
    status = 0
    if body is None:
        await asyncio.sleep(0.5)
    else:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            status = r.status
            await r.read()
    took = time.perf_counter() - t0
    await asyncio.sleep(0.1)
    stop.set()
    return took, status, await task


async def main_async(args: argparse.Namespace) -> int:
    async with upstream() as up:
        try:
            async with (
                firewall_process(args.config, up, args.firewall_root) as base,
                aiohttp.ClientSession() as s,
            ):
                url = f"{base}/v1/chat/completions"
                print(f"config {args.config}; probes: a small chat request every 10 ms")
                head = ("case", "status", "took ms", "probe p50 ms", "probe max ms")
                print(f"{head[0]:32} {head[1]:>6} {head[2]:>8} {head[3]:>13} {head[4]:>13}")
                cases: list[tuple[str, bytes | None]] = [("baseline (probes only)", None)]
                cases += list(bodies().items())
                for name, body in cases:
                    took, status, lat = await one_case(s, url, body)
                    p50, worst = statistics.median(lat) * 1000, max(lat) * 1000
                    print(
                        f"{name:32} {status or '-':>6} {took * 1000:8.0f} {p50:13.1f} {worst:13.1f}"
                    )
        except NotReady as exc:
            print(exc, file=sys.stderr)
            return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", type=Path, default=ROOT / "loadtests/bench-config-defaults.yaml"
    )
    parser.add_argument(
        "--firewall-root",
        type=Path,
        default=ROOT,
        help="checkout to run the firewall from (a worktree of an older commit: before/after)",
    )
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
