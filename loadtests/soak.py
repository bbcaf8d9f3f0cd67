"""Soak: steady mixed load for minutes while the firewall's RSS and open fds are sampled.

A leak that costs a few kilobytes a request is invisible in a unit test and
fatal after a day in production. This runs the firewall (subprocess) in front
of the scenario upstream, keeps a mixed load on it (clean, blocked, malformed,
oversized and streamed requests, plus periodic bursts past the concurrency
limit), and samples ``VmRSS`` from ``/proc/PID/status`` and the entries of
``/proc/PID/fd`` every ``--interval`` seconds. It prints the series, fits a
least-squares slope to the samples after the warm-up, and exits 1 when RSS grows
faster than ``--max-rss-mb-per-min`` or fds faster than ``--max-fd-per-min``,
or when a request went missing.

    .venv/bin/python loadtests/soak.py                   # 10 minutes
    .venv/bin/python loadtests/soak.py --duration 180    # 3 minutes

Not part of the default test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenarios import (
    BAD_JSON,
    CLEAN,
    MAX_CONCURRENCY,
    STREAM,
    TOO_LARGE,
    TRIGGER,
    Tally,
    running_stack,
    send,
)


@dataclass
class Sample:
    t: float
    rss_kb: int
    fds: int
    sent: int


def read_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def count_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_min(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return 0.0
    sxy = sum((t - mx) * (v - my) for t, v in points)
    return sxy / sxx * 60.0


async def drive(url: str, deadline: float, tally: Tally, concurrency: int) -> None:
    """Closed-loop mixed load, with a burst past the concurrency limit every 20 s."""
    mix = [(CLEAN, False)] * 12 + [
        (TRIGGER, False),
        (BAD_JSON, False),
        (TOO_LARGE, False),
        (STREAM, True),
    ]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def worker(offset: int) -> None:
            i = offset
            while time.monotonic() < deadline:
                body, stream = mix[i % len(mix)]
                target = url + "?tokens=100" if stream else url
                await send(session, target, body, tally, stream=stream)
                i += 5

        async def bursts() -> None:
            while time.monotonic() + 20 < deadline:
                await asyncio.sleep(20)
                slow = url + "?delay_ms=200"
                await asyncio.gather(
                    *(send(session, slow, CLEAN, tally) for _ in range(2 * MAX_CONCURRENCY))
                )

        await asyncio.gather(bursts(), *(worker(k) for k in range(concurrency)))


async def soak(args: argparse.Namespace) -> int:
    async with running_stack() as stack:
        pid = stack.firewall_pid
        url = stack.proxy_url + "/v1/chat/completions"
        tally = Tally()
        start = time.monotonic()
        deadline = start + args.duration
        load = asyncio.create_task(drive(url, deadline, tally, args.concurrency))
        samples: list[Sample] = []
        print(f"soak: firewall pid {pid}, {args.duration:.0f} s, sampling every {args.interval} s")
        print(f"{'t_s':>6} {'rss_mb':>8} {'fds':>5} {'sent':>8}")
        while not load.done():
            s = Sample(time.monotonic() - start, read_rss_kb(pid), count_fds(pid), tally.sent)
            samples.append(s)
            print(f"{s.t:6.0f} {s.rss_kb / 1024:8.1f} {s.fds:5d} {s.sent:8d}", flush=True)
            await asyncio.wait({load}, timeout=args.interval)
        await load
        alive = stack.firewall.poll() is None
    settled = [s for s in samples if s.t >= args.warmup] or samples
    rss_slope = slope_per_min([(s.t, s.rss_kb / 1024) for s in settled])
    fd_slope = slope_per_min([(s.t, s.fds) for s in settled])
    rate = tally.sent / max(1e-9, samples[-1].t if samples else 1)
    print()
    print(f"requests sent {tally.sent} ({rate:.0f}/s), lost {tally.lost}")
    print(f"answered by class {dict(tally.classes)}")
    if samples:
        first, last = settled[0], settled[-1]
        print(
            f"RSS after warm-up {first.rss_kb / 1024:.1f} -> {last.rss_kb / 1024:.1f} MB, "
            f"slope {rss_slope:+.3f} MB/min (limit {args.max_rss_mb_per_min})"
        )
        limit = args.max_fd_per_min
        print(f"fds {first.fds} -> {last.fds}, slope {fd_slope:+.3f}/min (limit {limit})")
    problems = []
    if rss_slope > args.max_rss_mb_per_min:
        problems.append("RSS grows")
    if fd_slope > args.max_fd_per_min:
        problems.append("file descriptors grow")
    if tally.lost:
        problems.append(f"{tally.lost} requests lost ({tally.lost_examples[:3]})")
    if not alive:
        problems.append("firewall died")
    print("SOAK " + ("FAILED: " + "; ".join(problems) if problems else "PASSED"))
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds left out of the slopes")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-rss-mb-per-min", type=float, default=1.0)
    parser.add_argument("--max-fd-per-min", type=float, default=0.5)
    args = parser.parse_args(argv)
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
