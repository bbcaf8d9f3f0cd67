"""What screening one request costs with the built-in defaults, in process (not a test).

``bench_proxy.py`` measures the whole proxy against a minimal one; this isolates the
part that is screening: the proxy's ``screen()`` on the benchmark's chat request
(input: a system prompt and a user ticket) and on a short answer (output), with the
built-in default detectors, no network, no audit line. It prints microseconds per
call (median of rounds) and, with ``--profile``, the costliest functions of the input
phase. The benchmark request is resent as the load test resends it, so segment and
sample memories are warm: the flattering case, as in the load test. Run from the
repository root:

    .venv/bin/python -m loadtests.bench.bench_screen_defaults [--calls N] [--rounds N] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import time
from typing import Any

import orjson

from firewall.config.schema import build_config
from firewall.core.types import Phase, Segment
from firewall.offline.scanning import Scanner
from firewall.screening.screen import screen, screened_segments
from loadtests.bench_proxy import request_body

ANSWER = (
    "Thanks for the detailed report. Version 4.3 changed the cache eviction policy; rolling back "
    "to 4.2.7 is safe. Please send the server log from the last 24 hours and the config file."
)


async def run(calls: int, rounds: int, profile: bool) -> None:
    config = build_config({"upstream": {"url": "http://127.0.0.1:1"}})
    # With an upstream (never called: the benchmark request is not suspected), so the defaults'
    # behavioural detector is in the runtime and its gate is checked as in the proxy.
    async with Scanner(config, upstream=True) as scanner:
        route, runtime = scanner.route, scanner.runtime
        body: Any = orjson.loads(request_body(False))
        answer = [Segment("assistant", ANSWER, "/choices/0/message/content")]

        async def inputs(n: int) -> None:
            for _ in range(n):
                segments = screened_segments(route, route.adapter.input_segments(body))
                await screen(runtime, route, Phase.INPUT, segments, model="m", request_id="r")

        async def outputs(n: int) -> None:
            for _ in range(n):
                await screen(runtime, route, Phase.OUTPUT, answer, model="m", request_id="r")

        await inputs(200)  # warm the memories and caches, as a running sidecar has them
        await outputs(200)
        results: dict[str, list[float]] = {"input": [], "output": []}
        for _ in range(rounds):
            for name, fn in (("input", inputs), ("output", outputs)):
                t0 = time.perf_counter()
                await fn(calls)
                results[name].append((time.perf_counter() - t0) / calls * 1e6)
        names = ", ".join(r.detector for r in route.policy.rules(Phase.INPUT))
        print(f"built-in defaults ({names}), {rounds} rounds of {calls} calls")
        for name, values in results.items():
            median = statistics.median(values)
            print(f"  {name:6s} {median:7.1f} us per call (min {min(values):.1f})")
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await inputs(calls)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    asyncio.run(run(args.calls, args.rounds, args.profile))


if __name__ == "__main__":
    main()
