"""Where a proxied request's time goes: the firewall and the minimal proxy under cProfile.

``bench_proxy.py`` says *how much* the firewall costs over the floor; this says
*where*. It starts the mock upstream, then each target in turn under the same
load, with a deterministic profiler (``cProfile`` on the wall clock: run it on a
quiet machine, or other jobs' time slices are charged to whatever was running)
switched on only while the measured load runs. It prints, per target, the
profiled time per request split by who runs it (aiohttp, asyncio, the
firewall's own modules, C built-ins such as orjson and hashlib, everything else)
and the firewall's costliest functions.

Profiling inflates every cost, and code made of many small Python calls more
than C code, so read the split as shares and as the difference between the two
targets, not as absolute microseconds (``bench_proxy.py`` gives those). Run from
the repository root:

    .venv/bin/python loadtests/profile_proxy.py [--config loadtests/bench-config.yaml]
        [--concurrency 16] [--duration 8] [--top 20] [--save DIR]

The same file is the profiled child process (``child`` sub-command): it installs
the profiler on SIGUSR1 (start) and SIGUSR2 (stop and write the stats), then runs
the target's own ``main``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_proxy as bp  # the runner's process and load helpers

GROUPS = ("aiohttp", "asyncio", "firewall", "builtins (C)", "other")


def _child(argv: Sequence[str]) -> int:
    """Run one target with a profiler that the parent starts and stops by signal."""
    target, out, rest = argv[0], argv[1], list(argv[2:])
    profiler = cProfile.Profile(time.perf_counter)

    def start(_sig: int, _frame: FrameType | None) -> None:
        profiler.enable()

    def stop(_sig: int, _frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    if target == "minimal":
        import minimal_proxy

        minimal_proxy.main(rest)
        return 0
    from firewall.cli.main import main

    return int(main(rest) or 0)


def _group(filename: str) -> str:
    if filename == "~":
        return "builtins (C)"
    if "/aiohttp/" in filename:
        return "aiohttp"
    if "/asyncio/" in filename or "/uvloop/" in filename:
        return "asyncio"
    root = str(bp.REPO_ROOT)
    if filename.startswith((f"{root}/firewall/", f"{root}/detectors/")):
        return "firewall"
    return "other"


Summary = tuple[dict[str, float], list[tuple[float, str]]]


def summarise(stats_path: Path, requests: int, top: int) -> Summary:
    """Profiled CPU microseconds per request by group, and the firewall's top functions."""
    stats = pstats.Stats(str(stats_path))
    groups = dict.fromkeys(GROUPS, 0.0)
    ours: list[tuple[float, str]] = []
    root = str(bp.REPO_ROOT) + "/"
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = stats.stats  # type: ignore[attr-defined]
    for (filename, line, func), (_cc, _nc, tottime, cumtime, _callers) in raw.items():
        group = _group(filename)
        groups[group] += tottime * 1e6 / requests
        if group == "firewall":
            ours.append((cumtime * 1e6 / requests, f"{filename.removeprefix(root)}:{line}({func})"))
    ours.sort(reverse=True)
    return groups, ours[:top]


def profile_target(
    name: str,
    argv: list[str],
    ready: Callable[[], bool],
    url: str,
    load: bp.LoadGenerator,
    args: argparse.Namespace,
    workdir: Path,
) -> tuple[Path, int]:
    """Start a target, warm it up, profile one load run; return the stats file and requests."""
    stats_path = workdir / f"{name}.pstats"
    child = [sys.executable, __file__, "child", name, str(stats_path), *argv]
    service = bp.Service(name, child, workdir / f"{name}.log")
    with bp.services_running([service]):
        bp.wait_until("ready", ready, service, 120.0)
        bp.preflight(name, url, bp.request_body(False), False)
        load.run(url, args.concurrency, args.warmup)
        os.kill(service.pid, signal.SIGUSR1)
        result = load.run(url, args.concurrency, args.duration)
        os.kill(service.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not stats_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # let the dump finish writing
    if not stats_path.exists():
        raise bp.BenchError(f"{name}: no profile written; log tail:\n{service.log_tail()}")
    return stats_path, result.requests


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.save) if args.save else Path(tempfile.mkdtemp(prefix="profile-proxy-"))
    workdir.mkdir(parents=True, exist_ok=True)
    body_path = workdir / "body.json"
    body_path.write_bytes(bp.request_body(False))
    load = bp.pick_generator("auto", workdir, body_path, 1)
    up_port, min_port, fw_port, admin_port = bp.free_ports(4)
    upstream_url = f"http://{bp.HOST}:{up_port}"
    upstream = bp.Service(
        "upstream",
        [sys.executable, str(bp.LOADTESTS_DIR / "mock_upstream.py"), "--port", str(up_port)],
        workdir / "upstream.log",
    )
    targets = {
        "minimal": (
            ["--port", str(min_port), "--upstream", upstream_url, "--connector-limit", "256"],
            bp.tcp_accepts(min_port),
            f"http://{bp.HOST}:{min_port}/v1/chat/completions",
        ),
        "firewall": (
            shlex.split(
                f"serve --config {shlex.quote(args.config)} --upstream {upstream_url} "
                f"--host {bp.HOST} --port {fw_port} --admin-port {admin_port}"
            ),
            bp.http_ok(f"http://{bp.HOST}:{admin_port}/readyz"),
            f"http://{bp.HOST}:{fw_port}/v1/chat/completions",
        ),
    }
    results: dict[str, tuple[dict[str, float], list[tuple[float, str]], int]] = {}
    with bp.services_running([upstream]):
        bp.wait_until("ready", bp.tcp_accepts(up_port), upstream, 60.0)
        for name, (argv, ready, url) in targets.items():
            stats_path, requests = profile_target(name, argv, ready, url, load, args, workdir)
            groups, top = summarise(stats_path, max(requests, 1), args.top)
            results[name] = (groups, top, requests)
    print(
        f"profiled time per request (cProfile inflates it: compare shares and differences), "
        f"concurrency {args.concurrency}, {args.duration} s each, config {args.config}"
    )
    print(f"{'':16s}{'minimal':>12s}{'firewall':>12s}{'difference':>12s}")
    minimal, firewall = results["minimal"][0], results["firewall"][0]
    for group in (*GROUPS, "total"):
        a = sum(minimal.values()) if group == "total" else minimal[group]
        b = sum(firewall.values()) if group == "total" else firewall[group]
        print(f"{group:16s}{a:12.1f}{b:12.1f}{b - a:+12.1f}")
    print(f"requests profiled: minimal {results['minimal'][2]}, firewall {results['firewall'][2]}")
    print(f"\nfirewall code, inclusive profiled us per request (top {args.top}):")
    for micros, where in results["firewall"][1]:
        print(f"{micros:9.1f}  {where}")
    print(f"\nstats files: {workdir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["child"]:
        return _child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(bp.BENCH_CONFIG.relative_to(bp.REPO_ROOT)))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=int, default=8, help="profiled load, whole seconds")
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled load first, seconds")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--save", help="folder for the stats files and logs (default: a temp dir)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except bp.BenchError as exc:
        print(f"profile_proxy: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
