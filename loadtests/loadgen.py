"""Fallback closed-loop HTTP load generator, used when ``wrk`` is not installed.

``wrk`` is preferred because it is C and uses a fraction of the CPU that a Python
client needs for the same request rate -- on a 2-core box every cycle the
client burns is taken from the proxy under test. When ``wrk`` is missing, this
module does the same job: N workers share one keep-alive ``ClientSession`` (one
pooled connection per worker), each sends the same POST back to back until a
fixed deadline, and latencies are recorded per response. The run is bounded by
``--duration``; requests in flight at the deadline are allowed to finish, and
the measured window is extended to cover them, so requests/s stays honest.

It is run by ``bench_proxy.py`` as a subprocess (so it gets its own interpreter
and event loop, like ``wrk`` would) and prints one JSON object on stdout with the
same fields the runner extracts from ``wrk``::

    python loadtests/loadgen.py --url http://127.0.0.1:18002/v1/chat/completions \
        --body-file body.json --concurrency 16 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

# Back off this long after a socket error so a dead target does not turn the
# generator into a busy loop that starves everything else on the machine.
ERROR_BACKOFF_S = 0.01


@dataclass
class Tally:
    """Counters shared by all workers of one run (single event loop, so no locks)."""

    latencies_ns: list[int] = field(default_factory=list)
    non_2xx: int = 0
    socket_errors: int = 0


def percentile_us(sorted_ns: list[int], pct: float) -> float | None:
    """Nearest-rank percentile of already-sorted nanosecond samples, in microseconds."""
    if not sorted_ns:
        return None
    rank = max(1, min(len(sorted_ns), math.ceil(pct / 100.0 * len(sorted_ns))))
    return sorted_ns[rank - 1] / 1000.0


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    deadline: float,
    tally: Tally,
) -> None:
    """Send requests back to back until the deadline (closed loop, one at a time)."""
    clock = time.perf_counter_ns
    while time.perf_counter() < deadline:
        start = clock()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            tally.socket_errors += 1
            await asyncio.sleep(ERROR_BACKOFF_S)
            continue
        tally.latencies_ns.append(clock() - start)
        if not 200 <= status < 400:
            tally.non_2xx += 1


async def run_load(
    url: str,
    body: bytes,
    concurrency: int,
    duration_s: float,
    timeout_s: float = 10.0,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Drive ``concurrency`` workers for ``duration_s`` seconds and summarise.

    The returned fields (``requests``, ``duration_s``, ``non_2xx``,
    ``socket_errors``, ``p50_us`` ...) match what the runner parses from ``wrk``
    so the two generators are interchangeable in reports.
    """
    hdrs = {"Content-Type": "application/json"}
    if headers:
        hdrs.update(headers)
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        started = time.perf_counter()
        deadline = started + duration_s
        await asyncio.gather(
            *(_worker(session, url, body, hdrs, deadline, tally) for _ in range(concurrency))
        )
        elapsed = time.perf_counter() - started
    ordered = sorted(tally.latencies_ns)
    mean = sum(ordered) / len(ordered) / 1000.0 if ordered else None
    return {
        "generator": "python",
        "requests": len(ordered),
        "duration_s": elapsed,
        "non_2xx": tally.non_2xx,
        "socket_errors": tally.socket_errors,
        "p50_us": percentile_us(ordered, 50),
        "p90_us": percentile_us(ordered, 90),
        "p99_us": percentile_us(ordered, 99),
        "max_us": ordered[-1] / 1000.0 if ordered else None,
        "mean_us": mean,
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: run once, print the JSON summary on stdout."""
    parser = argparse.ArgumentParser(description="closed-loop aiohttp load generator")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (bounded run)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s")
    parser.add_argument(
        "--header", action="append", default=[], help="extra 'Name: value' header (repeatable)"
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.duration <= 0:
        parser.error("--concurrency must be >= 1 and --duration > 0")
    extra: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            parser.error(f"bad --header {item!r}; expected 'Name: value'")
        extra[name.strip()] = value.strip()
    result = uvloop.run(
        run_load(
            args.url,
            args.body_file.read_bytes(),
            args.concurrency,
            args.duration,
            args.timeout,
            extra,
        )
    )
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
