"""Measure the firewall's per-request overhead against a minimal pass-through floor.

Absolute requests/s on a small shared machine say more about the machine than
about the proxy, so this runner never reports the firewall alone. It starts a
mock upstream, a minimal aiohttp proxy (the floor: same stack, no screening) and
the firewall, all on 127.0.0.1, then loads both proxies back to back at each
concurrency level with the same request body, the same load generator and the
same machine noise, and reports the firewall *relative to the floor*: throughput
ratio, added median latency and CPU ratio per request.

Every load run is bounded (fixed duration), every process started here is
stopped on exit, and nothing listens on or connects to anything but loopback.

    .venv/bin/python loadtests/bench_proxy.py                 # defaults: 1,16,64 x 10 s
    .venv/bin/python loadtests/bench_proxy.py --duration 3 --repeat 3
    .venv/bin/python loadtests/bench_proxy.py --firewall-cmd \
        "{python} loadtests/minimal_proxy.py --port {port} --upstream {upstream}"

The runner itself uses only the standard library; the servers and the Python
load generator need the project's virtualenv (aiohttp, uvloop, orjson), which is
why the child processes are started with the interpreter running this script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

HOST = "127.0.0.1"
LOADTESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = LOADTESTS_DIR.parent
RESULTS_DIR = LOADTESTS_DIR / "results"
BENCH_CONFIG = LOADTESTS_DIR / "bench-config.yaml"
CHAT_PATH = "/v1/chat/completions"

DEFAULT_FIREWALL_CMD = (
    "{python} -m firewall serve --config {config} --upstream {upstream}"
    " --host 127.0.0.1 --port {port} --admin-port {admin_port}"
)
TARGETS = ("minimal", "firewall")

# The acceptance targets the numbers are read against (printed, never enforced).
TARGET_THROUGHPUT_RATIO = 0.8
TARGET_THROUGHPUT_LEVELS = (16, 64)
TARGET_ADDED_P50_MS = 0.5
TARGET_ADDED_P50_LEVEL = 1

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Share of machine CPU used by unrelated processes during a run above which we warn.
NOISY_FOREIGN_CPU_PCT = 10.0
WRK_RESULT_PREFIX = "BENCH_RESULT"

SYSTEM_PROMPT = (
    "You are a careful support assistant for a mid-sized software company. Answer in plain "
    "English, cite the ticket fields you rely on, and never invent order numbers or dates."
)
# About 200 words of ordinary prose: the size of a typical single-turn user prompt, so
# that per-byte work in the proxy (reading, decoding, scanning) is represented fairly.
USER_PROMPT = (
    "Please summarise the following customer ticket for the on-call engineer and suggest "
    "the next two steps. The customer writes: We upgraded our deployment from version 4.2 "
    "to 4.3 last Tuesday evening, following the documented procedure and the checklist in "
    "the release notes. Since then, roughly one in twenty requests to the reporting "
    "endpoint returns a timeout after thirty seconds, mostly during the morning peak "
    "between eight and ten. Before the upgrade we never saw this. The database server "
    "shows normal load, the connection pool is not exhausted according to the metrics "
    "page, and restarting the application servers helps for about an hour before the "
    "timeouts return. We tried increasing the worker count from eight to twelve, which "
    "did not change anything noticeable. Our monitoring shows that memory usage on the "
    "application servers climbs slowly during the day and drops after each restart. We "
    "also noticed new warnings in the log about slow cache lookups, which we had not seen "
    "before. We have a quarterly review with our board next Monday and need the reports "
    "to be reliable by then. Could you tell us whether this is a known issue with 4.3, "
    "whether rolling back is safe, and what information you need from us to investigate "
    "further? We can share logs and configuration files if that helps."
)


class BenchError(RuntimeError):
    """A setup problem that makes the numbers meaningless; reported, exit status 2."""


# --------------------------------------------------------------------------- request


def request_body(stream: bool) -> bytes:
    """Build the one chat request every run sends, serialised once."""
    doc: dict[str, Any] = {
        "model": "mock-model-1",
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_PROMPT},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
        "user": "bench-user-0001",
    }
    if stream:
        doc["stream"] = True
    return json.dumps(doc, separators=(",", ":")).encode()


REQUEST_HEADERS = {
    "Content-Type": "application/json",
    "Authorization": "Bearer sk-bench-not-a-real-key",
}


# --------------------------------------------------------------------------- processes


def free_ports(count: int) -> list[int]:
    """Ask the kernel for ``count`` distinct free loopback ports.

    All sockets are held open until every port is chosen so the kernel cannot
    hand out the same one twice; the short race until the servers bind is
    acceptable for a benchmark on a quiet machine.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def pin_to(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that sets the child's CPU affinity before it executes.

    Setting it in the child before ``exec`` means every thread and process the
    server later creates inherits it; the runner is single-threaded, so using
    ``preexec_fn`` is safe here.
    """
    if not cpus:
        return None

    def apply() -> None:
        os.sched_setaffinity(0, cpus)

    return apply


def plan_pinning(mode: str) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """Decide (proxy CPUs, upstream+load-generator CPUs).

    On a 2-core box, letting the scheduler place three busy processes gives
    run-to-run swings of +-30 % at high concurrency even for two identical
    proxies, because who shares a core with whom changes between runs. Giving
    the proxy under test a core of its own and the upstream plus load generator
    the rest makes the proxy the bottleneck, which is the thing being measured,
    and makes the ratio repeatable. With a single usable CPU there is nothing
    to pin.
    """
    usable = sorted(os.sched_getaffinity(0))
    if mode == "off" or len(usable) < 2:
        return None, None
    return frozenset(usable[-1:]), frozenset(usable[:-1])


@dataclass
class Service:
    """A server subprocess the runner owns: started in its own session, always stopped."""

    name: str
    argv: list[str]
    log_path: Path
    cpus: frozenset[int] | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log: TextIO | None = None
    #: The environment to start in (default: this process's).
    env: dict[str, str] | None = None

    def start(self) -> None:
        """Launch with output to a log file (a pipe nobody drains could stall the server)."""
        self._log = self.log_path.open("w")
        env = dict(os.environ if self.env is None else self.env, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: Ctrl-C reaches only the runner
            preexec_fn=pin_to(self.cpus),
        )

    @property
    def pid(self) -> int:
        """PID of the started process."""
        if self.proc is None:
            raise BenchError(f"{self.name} was never started")
        return self.proc.pid

    def check_alive(self) -> None:
        """Fail fast with the log tail when the server has died (bad flag, import error...)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} exited with status {self.proc.returncode} "
                f"({shlex.join(self.argv)}); log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 25) -> str:
        """Last lines of the service log, for error messages."""
        if self._log is not None:
            self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group we created, then SIGKILL it if it lingers."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace_s)
        if self._log is not None:
            self._log.close()
            self._log = None


def wait_until(what: str, probe: Callable[[], bool], service: Service, timeout_s: float) -> float:
    """Poll ``probe`` every 50 ms until it is true; return how long it took.

    Polling (instead of sleeping a guessed amount) makes start-up as short as
    the server allows and turns a server that dies on start into an immediate,
    explained failure instead of a timeout.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        service.check_alive()
        if probe():
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise BenchError(
                f"{service.name}: {what} not ready after {timeout_s:.0f} s; "
                f"log tail:\n{service.log_tail()}"
            )
        time.sleep(0.05)


def tcp_accepts(port: int) -> Callable[[], bool]:
    """Probe: does 127.0.0.1:port accept a TCP connection?"""

    def probe() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            return False

    return probe


def http_ok(url: str) -> Callable[[], bool]:
    """Probe: does GET url answer 200?"""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    return probe


def preflight(name: str, url: str, body: bytes, stream: bool) -> None:
    """Send one request and insist on a normal answer before loading the target.

    A proxy that blocks or mangles the benchmark request would otherwise be
    measured on its error path and look deceptively fast.
    """
    req = urllib.request.Request(url, data=body, headers=REQUEST_HEADERS, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10.0) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise BenchError(f"{name}: preflight request to {url} failed: {exc}") from exc
    ok = status == 200 and (b"[DONE]" in payload if stream else b'"choices"' in payload)
    if not ok:
        raise BenchError(
            f"{name}: preflight got HTTP {status} with body {payload[:300]!r}; the benchmark "
            "request must pass through (is the firewall blocking it?)"
        )


# --------------------------------------------------------------------------- CPU accounting


def _read_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime ticks) of one process, or None if it has gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after
    # the last ')' are fixed: state, ppid, ... utime is field 14, stime field 15.
    rest = raw[raw.rindex(")") + 2 :].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])


def process_tree_cpu_s(root_pid: int) -> float:
    """User+system CPU seconds of a process and all its live descendants.

    Summing the tree keeps the comparison fair if the firewall ever forks
    workers or helper processes; for a single process it is just its own time.
    """
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _read_stat(int(entry.name))
        if stat is None:
            continue
        ppid, used = stat
        ticks[int(entry.name)] = used
        children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += ticks.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total / CLK_TCK


def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from the first line of /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return total - idle, total


def children_cpu_s() -> float:
    """CPU seconds of reaped children: how the runner accounts for load-generator runs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- load generators


@dataclass
class LoadResult:
    """One load run against one target, in the units the report uses."""

    requests: int
    duration_s: float
    non_2xx: int
    socket_errors: int
    p50_us: float | None
    p90_us: float | None
    p99_us: float | None
    max_us: float | None
    mean_us: float | None


class LoadGenerator:
    """Common interface: run a bounded closed-loop POST load and return a LoadResult."""

    name = "abstract"
    # CPU affinity for the generator's processes; set by the runner when pinning.
    cpus: frozenset[int] | None = None

    def describe(self) -> str:
        """One line for the report header."""
        raise NotImplementedError

    def command(self, url: str, concurrency: int, duration_s: int) -> list[str]:
        """The argv that performs one run."""
        raise NotImplementedError

    def parse(self, stdout: str) -> LoadResult:
        """Turn the generator's output into a LoadResult."""
        raise NotImplementedError

    def run(self, url: str, concurrency: int, duration_s: int) -> LoadResult:
        """Run once; the subprocess timeout is a second bound on top of the duration."""
        argv = self.command(url, concurrency, duration_s)
        done = subprocess.run(
            argv,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=duration_s + 60,
            check=False,
            preexec_fn=pin_to(self.cpus),
        )
        if done.returncode != 0:
            raise BenchError(
                f"load generator failed ({done.returncode}): {shlex.join(argv)}\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return self.parse(done.stdout)


def _lua_string(text: str) -> str:
    """Quote a string as a Lua literal (paths only; no control characters expected)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class WrkGenerator(LoadGenerator):
    """``wrk`` driven by a generated Lua script that sets the POST and reports in bulk.

    The script's ``done`` hook prints exact counters and microsecond percentiles on
    one machine-readable line; the human ``--latency`` output is parsed as a
    fallback so an unusual wrk build still works.
    """

    name = "wrk"

    def __init__(self, wrk: str, workdir: Path, body_path: Path, threads: int) -> None:
        self.wrk = wrk
        self.threads = threads
        self.script = workdir / "post.lua"
        headers = "\n".join(
            f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in REQUEST_HEADERS.items()
        )
        fields = (
            "requests=%.0f duration_us=%.0f connect=%.0f read=%.0f write=%.0f status=%.0f "
            "timeout=%.0f p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f mean_us=%.1f"
        )
        self.script.write_text(
            "-- generated by loadtests/bench_proxy.py: POST the benchmark body\n"
            f"local f = assert(io.open({_lua_string(str(body_path))}, 'rb'))\n"
            "wrk.method = 'POST'\n"
            "wrk.body = f:read('*a')\n"
            "f:close()\n"
            f"{headers}\n"
            "done = function(summary, latency, requests)\n"
            "  local e = summary.errors\n"
            f"  io.write(string.format('{WRK_RESULT_PREFIX} {fields}\\n',\n"
            "    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,\n"
            "    e.timeout, latency:percentile(50), latency:percentile(90),\n"
            "    latency:percentile(99), latency.max, latency.mean))\n"
            "end\n"
        )

    def describe(self) -> str:
        """Version and thread count, so reports from different boxes can be compared."""
        try:
            out = subprocess.run(
                [self.wrk, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
            version = (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            version = "wrk (version unknown)"
        return f"{version}; {self.threads} thread(s) max"

    def command(self, url: str, concurrency: int, duration_s: int) -> list[str]:
        """wrk needs whole seconds and threads <= connections."""
        threads = max(1, min(self.threads, concurrency))
        return [
            self.wrk,
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{duration_s}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(self.script),
            url,
        ]

    def parse(self, stdout: str) -> LoadResult:
        """Prefer the Lua ``done`` line; fall back to the human-readable report."""
        for line in stdout.splitlines():
            if line.startswith(WRK_RESULT_PREFIX):
                kv = dict(item.split("=", 1) for item in line.split()[1:])
                return LoadResult(
                    requests=int(float(kv["requests"])),
                    duration_s=float(kv["duration_us"]) / 1e6,
                    non_2xx=int(float(kv["status"])),
                    socket_errors=sum(
                        int(float(kv[k])) for k in ("connect", "read", "write", "timeout")
                    ),
                    p50_us=float(kv["p50_us"]),
                    p90_us=float(kv["p90_us"]),
                    p99_us=float(kv["p99_us"]),
                    max_us=float(kv["max_us"]),
                    mean_us=float(kv["mean_us"]),
                )
        return parse_wrk_text(stdout)


_WRK_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _wrk_time_us(text: str) -> float:
    """'812.00us' / '1.23ms' / '2.00s' -> microseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise BenchError(f"cannot parse wrk time {text!r}")
    return float(match.group(1)) * _WRK_UNITS_US[match.group(2)]


def parse_wrk_text(stdout: str) -> LoadResult:
    """Parse wrk's ``--latency`` report (used only when the Lua hook line is missing)."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", stdout)
    if total is None:
        raise BenchError(f"cannot parse wrk output:\n{stdout}")
    pct = {
        p: _wrk_time_us(v)
        for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)\s*$", stdout, flags=re.MULTILINE)
    }
    avg_max = re.search(r"Latency\s+(\S+)\s+\S+\s+(\S+)", stdout)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", stdout)
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", stdout
    )
    return LoadResult(
        requests=int(total.group(1)),
        duration_s=_wrk_time_us(total.group(2) + total.group(3)) / 1e6,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
        p50_us=pct.get("50"),
        p90_us=pct.get("90"),
        p99_us=pct.get("99"),
        max_us=_wrk_time_us(avg_max.group(2)) if avg_max else None,
        mean_us=_wrk_time_us(avg_max.group(1)) if avg_max else None,
    )


class PythonGenerator(LoadGenerator):
    """The aiohttp fallback in ``loadgen.py``, run as its own process."""

    name = "python"

    def __init__(self, body_path: Path) -> None:
        self.body_path = body_path

    def describe(self) -> str:
        """Say plainly that the client competes with the servers for the same cores."""
        return "loadtests/loadgen.py (aiohttp+uvloop; Python client, CPU-hungry)"

    def command(self, url: str, concurrency: int, duration_s: int) -> list[str]:
        """Same interpreter as the runner, so it finds aiohttp/uvloop/orjson."""
        argv = [
            sys.executable,
            str(LOADTESTS_DIR / "loadgen.py"),
            "--url",
            url,
            "--body-file",
            str(self.body_path),
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration_s),
        ]
        for name, value in REQUEST_HEADERS.items():
            if name != "Content-Type":
                argv += ["--header", f"{name}: {value}"]
        return argv

    def parse(self, stdout: str) -> LoadResult:
        """The last stdout line is loadgen's JSON summary."""
        try:
            doc = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError) as exc:
            raise BenchError(f"cannot parse loadgen output:\n{stdout}") from exc
        return LoadResult(**{k: doc[k] for k in LoadResult.__dataclass_fields__})


# --------------------------------------------------------------------------- measurement


@dataclass
class RunRecord:
    """Everything measured in one (concurrency, round, target) run."""

    target: str
    concurrency: int
    round: int
    requests: int
    duration_s: float
    rps: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    non_2xx: int
    socket_errors: int
    proxy_cpu_s: float
    proxy_cpu_us_per_req: float | None
    upstream_cpu_us_per_req: float | None
    loadgen_cpu_us_per_req: float | None
    machine_busy_pct: float
    foreign_cpu_pct: float


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000.0


def measure(
    gen: LoadGenerator,
    target: str,
    url: str,
    proxy: Service,
    upstream: Service,
    concurrency: int,
    duration_s: int,
    warmup_s: int,
    round_no: int,
) -> RunRecord:
    """Warm up, then run the measured window with CPU counters read around it.

    CPU deltas are taken only around the measured run (after the warm-up), so
    connection set-up, JIT-like caches and the first GC cycles are excluded.
    """
    if warmup_s > 0:
        gen.run(url, concurrency, warmup_s)
    proxy.check_alive()
    proxy0 = process_tree_cpu_s(proxy.pid)
    up0 = process_tree_cpu_s(upstream.pid)
    busy0, total0 = machine_cpu_ticks()
    gen0 = children_cpu_s()
    res = gen.run(url, concurrency, duration_s)
    gen1 = children_cpu_s()
    busy1, total1 = machine_cpu_ticks()
    up1 = process_tree_cpu_s(upstream.pid)
    proxy1 = process_tree_cpu_s(proxy.pid)
    proxy.check_alive()

    def per_req(seconds: float) -> float | None:
        return seconds * 1e6 / res.requests if res.requests else None

    # Whatever the machine did beyond our three processes is interference (another
    # build, tests, a neighbour): reported so noisy runs can be recognised.
    capacity = max(1, total1 - total0)
    busy_s = (busy1 - busy0) / CLK_TCK
    ours_s = (proxy1 - proxy0) + (up1 - up0) + (gen1 - gen0)

    return RunRecord(
        target=target,
        concurrency=concurrency,
        round=round_no,
        requests=res.requests,
        duration_s=res.duration_s,
        rps=res.requests / res.duration_s if res.duration_s > 0 else 0.0,
        p50_ms=_ms(res.p50_us),
        p90_ms=_ms(res.p90_us),
        p99_ms=_ms(res.p99_us),
        max_ms=_ms(res.max_us),
        non_2xx=res.non_2xx,
        socket_errors=res.socket_errors,
        proxy_cpu_s=proxy1 - proxy0,
        proxy_cpu_us_per_req=per_req(proxy1 - proxy0),
        upstream_cpu_us_per_req=per_req(up1 - up0),
        loadgen_cpu_us_per_req=per_req(gen1 - gen0),
        machine_busy_pct=100.0 * (busy1 - busy0) / capacity,
        foreign_cpu_pct=100.0 * max(0.0, busy_s - ours_s) / (capacity / CLK_TCK),
    )


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(
    records: list[RunRecord], levels: Sequence[int], noise_pct: float
) -> dict[int, dict[str, Any]]:
    """Per level: median of each metric per target, and median of *paired* ratios.

    Ratios are computed within a round (firewall and minimal measured back to
    back) and then the median taken, which cancels slow drift in machine load
    better than dividing two independently-taken medians. Rounds in which
    unrelated processes took ``noise_pct`` or more of the machine during either
    run are left out, as long as at least one quiet round remains; every run is
    still kept in the JSON.
    """
    out: dict[int, dict[str, Any]] = {}
    for level in levels:
        everything = [r for r in records if r.concurrency == level]
        rounds = sorted({r.round for r in everything})
        quiet = [
            n
            for n in rounds
            if all(r.foreign_cpu_pct < noise_pct for r in everything if r.round == n)
        ]
        used = quiet or rounds
        at = [r for r in everything if r.round in used]
        per_target: dict[str, dict[str, Any]] = {}
        for target in TARGETS:
            rs = [r for r in at if r.target == target]
            per_target[target] = {
                "rounds": len(rs),
                "rps": _median([r.rps for r in rs]),
                "p50_ms": _median([r.p50_ms for r in rs]),
                "p90_ms": _median([r.p90_ms for r in rs]),
                "p99_ms": _median([r.p99_ms for r in rs]),
                "cpu_us_per_req": _median([r.proxy_cpu_us_per_req for r in rs]),
                "upstream_cpu_us_per_req": _median([r.upstream_cpu_us_per_req for r in rs]),
                "loadgen_cpu_us_per_req": _median([r.loadgen_cpu_us_per_req for r in rs]),
                "machine_busy_pct": _median([r.machine_busy_pct for r in rs]),
                "foreign_cpu_pct_max": max((r.foreign_cpu_pct for r in rs), default=None),
                "errors": sum(r.non_2xx + r.socket_errors for r in rs),
                "non_2xx": sum(r.non_2xx for r in rs),
                "socket_errors": sum(r.socket_errors for r in rs),
            }
        thr, dp50, cpu = [], [], []
        for round_no in used:
            pair = {r.target: r for r in at if r.round == round_no}
            fw, mn = pair.get("firewall"), pair.get("minimal")
            if fw is None or mn is None:
                continue
            if mn.rps > 0:
                thr.append(fw.rps / mn.rps)
            if fw.p50_ms is not None and mn.p50_ms is not None:
                dp50.append(fw.p50_ms - mn.p50_ms)
            if fw.proxy_cpu_us_per_req and mn.proxy_cpu_us_per_req:
                cpu.append(fw.proxy_cpu_us_per_req / mn.proxy_cpu_us_per_req)
        out[level] = {
            "rounds_total": len(rounds),
            "rounds_used": used,
            "noisy_rounds_excluded": len(rounds) - len(used),
            "rounds_quiet": bool(quiet),
            "targets": per_target,
            "throughput_ratio": _median(thr),
            "added_p50_ms": _median(dp50),
            "cpu_ratio": _median(cpu),
            "throughput_ratio_rounds": thr,
            "added_p50_ms_rounds": dp50,
            "cpu_ratio_rounds": cpu,
        }
    return out


def verdicts(summary: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Compare the summary against the stated targets (report only, never exit non-zero)."""
    checks: list[dict[str, Any]] = []
    for level in TARGET_THROUGHPUT_LEVELS:
        value = summary.get(level, {}).get("throughput_ratio")
        checks.append(
            {
                "name": f"throughput >= {TARGET_THROUGHPUT_RATIO:.2f}x minimal @ c={level}",
                "value": value,
                "display": "not measured" if value is None else f"{value:.3f}x",
                "status": "N/A"
                if value is None
                else ("PASS" if value >= TARGET_THROUGHPUT_RATIO else "MISS"),
            }
        )
    value = summary.get(TARGET_ADDED_P50_LEVEL, {}).get("added_p50_ms")
    checks.append(
        {
            "name": f"added p50 < {TARGET_ADDED_P50_MS} ms @ c={TARGET_ADDED_P50_LEVEL}",
            "value": value,
            "display": "not measured" if value is None else f"{value:+.3f} ms",
            "status": "N/A"
            if value is None
            else ("PASS" if value < TARGET_ADDED_P50_MS else "MISS"),
        }
    )
    return checks


# --------------------------------------------------------------------------- reporting


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(
    summary: dict[int, dict[str, Any]],
    checks: list[dict[str, Any]],
    records: list[RunRecord],
    noise_pct: float,
) -> None:
    """Print the per-target table, the ratio table and the target verdicts."""
    print()
    print("Per target (median over rounds; errors = non-2xx + socket errors, summed;")
    print("busy = whole-machine CPU use; other = max share taken by processes not in the bench)")
    print(
        f"{'conc':>5}  {'target':<9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'cpu us/req':>10} {'errors':>7} {'busy':>5} {'other':>5}"
    )
    for level, entry in summary.items():
        for target in TARGETS:
            t = entry["targets"][target]
            print(
                f"{level:>5}  {target:<9} {_fmt(t['rps'], '9.1f')} {_fmt(t['p50_ms'], '8.3f')} "
                f"{_fmt(t['p99_ms'], '8.3f')} {_fmt(t['cpu_us_per_req'], '10.1f')} "
                f"{t['errors']:>7} {_fmt(t['machine_busy_pct'], '4.0f')}% "
                f"{_fmt(t['foreign_cpu_pct_max'], '4.0f')}%"
            )
    print()
    print("Firewall relative to minimal (median of per-round paired ratios, quiet rounds)")
    print(f"{'conc':>5}  {'throughput':>10} {'added p50':>12} {'cpu/req':>8} {'rounds used':>12}")
    for level, entry in summary.items():
        thr, dp50, cpu = entry["throughput_ratio"], entry["added_p50_ms"], entry["cpu_ratio"]
        used = f"{len(entry['rounds_used'])}/{entry['rounds_total']}"
        print(
            f"{level:>5}  {_fmt(thr, '9.3f')}x {_fmt(dp50, '+9.3f')} ms "
            f"{_fmt(cpu, '7.2f')}x {used:>12}"
        )
    excluded = sum(entry["noisy_rounds_excluded"] for entry in summary.values())
    all_noisy = [level for level, entry in summary.items() if not entry["rounds_quiet"]]
    if excluded:
        print(f"note: {excluded} round(s) with other processes >= {noise_pct:g}% left out")
    if all_noisy:
        worst = max((r.foreign_cpu_pct for r in records), default=0.0)
        print(
            f"WARNING: every round at c={','.join(map(str, all_noisy))} ran while other "
            f"processes used up to {worst:.0f}% of the machine; those ratios are unreliable -- "
            "rerun on a quiet machine or with more --repeat rounds."
        )
    print()
    print("Targets (informational; exit status does not depend on them)")
    for check in checks:
        print(f"  {check['status']:<4}  {check['name']:<40} {check['display']}")


def _cpu_list(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def host_info() -> dict[str, Any]:
    """What the numbers were measured on; they are meaningless without it."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus_online": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line; defaults are the documented benchmark (1/16/64 x 10 s)."""
    parser = argparse.ArgumentParser(
        description="Benchmark the firewall against a minimal pass-through proxy on loopback."
    )
    parser.add_argument(
        "--concurrency",
        default="1,16,64",
        help="comma-separated concurrency levels (default 1,16,64)",
    )
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per run")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds before each run")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds per level, alternating order; medians"
    )
    parser.add_argument("--pause", type=float, default=0.5, help="settle seconds between runs")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument(
        "--firewall-cmd",
        default=None,
        help="command template for the proxy under test; placeholders {port} "
        "{admin_port} {upstream} {python} {config} (default: the firewall)",
    )
    parser.add_argument(
        "--firewall-ready",
        choices=("auto", "readyz", "tcp"),
        default="auto",
        help="readiness probe: GET /readyz on the admin port, or TCP accept on the port; "
        "auto = readyz when the command uses {admin_port}",
    )
    parser.add_argument(
        "--pin",
        choices=("auto", "off"),
        default="auto",
        help="auto: proxies on the last usable CPU, upstream + load generator on the others "
        "(needs >= 2 CPUs); off: let the scheduler place everything",
    )
    parser.add_argument(
        "--noise-threshold",
        type=float,
        default=NOISY_FOREIGN_CPU_PCT,
        help="leave rounds out of the medians when other processes used >= this %% of the "
        "machine during them (if any quiet round remains; default %(default)s)",
    )
    parser.add_argument("--stream", action="store_true", help="send stream: true requests")
    parser.add_argument(
        "--config",
        type=Path,
        default=BENCH_CONFIG.relative_to(REPO_ROOT),
        help="firewall config for the default command ({config}); see loadtests/ablation/",
    )
    parser.add_argument("--startup-timeout", type=float, default=30.0)
    parser.add_argument("--output", type=Path, default=None, help="JSON path override")
    args = parser.parse_args(argv)
    try:
        args.levels = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    except ValueError:
        parser.error("--concurrency must be comma-separated integers")
    if not args.levels or min(args.levels) < 1:
        parser.error("--concurrency levels must be >= 1")
    if args.duration < 1 or args.warmup < 0 or args.repeat < 1 or args.wrk_threads < 1:
        parser.error("--duration >= 1, --warmup >= 0, --repeat >= 1, --wrk-threads >= 1")
    return args


def firewall_importable() -> tuple[bool, str]:
    """Is the real firewall there? Checked in a child so a broken import cannot hurt us."""
    done = subprocess.run(
        [sys.executable, "-c", "import firewall.cli.main"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0, (done.stderr.strip().splitlines() or [""])[-1]


def pick_generator(choice: str, workdir: Path, body_path: Path, threads: int) -> LoadGenerator:
    """wrk when available (or demanded), else the Python fallback."""
    wrk = shutil.which("wrk")
    if choice == "wrk" and wrk is None:
        raise BenchError("--loadgen wrk requested but wrk is not on PATH")
    if choice in ("auto", "wrk") and wrk is not None:
        return WrkGenerator(wrk, workdir, body_path, threads)
    return PythonGenerator(body_path)


@contextlib.contextmanager
def services_running(services: list[Service]) -> Iterator[None]:
    """Start services in order; stop all of them in reverse on any exit."""
    try:
        for svc in services:
            svc.start()
        yield
    finally:
        for svc in reversed(services):
            svc.stop()


def check_template(template: str) -> None:
    """Refuse a command that would benchmark this checkout while meaning another one.

    Every target starts in the repository root, and ``python -m firewall`` puts the
    working directory first on ``sys.path``: a ``PYTHONPATH`` naming another checkout
    (a worktree of an older commit) is then ignored, and a before/after comparison
    measures the same code twice. ``python -P`` (3.11+) leaves the directory off.
    """
    words = shlex.split(template)
    if any(w.startswith("PYTHONPATH=") for w in words) and "-m" in words and "-P" not in words:
        raise BenchError(
            "the command sets PYTHONPATH and runs 'python -m' from the repository root, which "
            "imports this checkout first; add -P after {python} so PYTHONPATH decides"
        )


def run_bench(args: argparse.Namespace) -> int:
    """Start everything, load both targets level by level, report, write JSON."""
    template = args.firewall_cmd or DEFAULT_FIREWALL_CMD
    check_template(template)
    if args.firewall_cmd is None:
        ok, why = firewall_importable()
        if not ok:
            raise BenchError(
                f"the firewall is not runnable yet (import firewall.cli.main failed: {why}); "
                "pass --firewall-cmd to benchmark another proxy"
            )
    stamp = time.strftime("%Y%m%dT%H%M%S")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    workdir = RESULTS_DIR / f"bench-{stamp}.d"
    workdir.mkdir(parents=True, exist_ok=True)
    body = request_body(args.stream)
    body_path = workdir / "body.json"
    body_path.write_bytes(body)
    ready_mode = args.firewall_ready
    if ready_mode == "auto":
        ready_mode = "readyz" if "{admin_port}" in template else "tcp"

    up_port, min_port, fw_port, admin_port = free_ports(4)
    upstream_url = f"http://{HOST}:{up_port}"
    python = sys.executable
    fw_cmd = template.format(
        port=fw_port,
        admin_port=admin_port,
        upstream=upstream_url,
        python=shlex.quote(python),
        config=shlex.quote(str(args.config)),
    )
    proxy_cpus, side_cpus = plan_pinning(args.pin)
    upstream = Service(
        "upstream",
        [python, str(LOADTESTS_DIR / "mock_upstream.py"), "--port", str(up_port)],
        workdir / "upstream.log",
        cpus=side_cpus,
    )
    minimal = Service(
        "minimal",
        [
            python,
            str(LOADTESTS_DIR / "minimal_proxy.py"),
            "--port",
            str(min_port),
            "--upstream",
            upstream_url,
            "--connector-limit",
            str(max(args.levels)),
        ],
        workdir / "minimal.log",
        cpus=proxy_cpus,
    )
    firewall = Service("firewall", shlex.split(fw_cmd), workdir / "firewall.log", proxy_cpus)
    proxies = {"minimal": (minimal, min_port), "firewall": (firewall, fw_port)}
    gen = pick_generator(args.loadgen, workdir, body_path, args.wrk_threads)
    gen.cpus = side_cpus
    info = host_info()

    print("trigger-firewall proxy overhead benchmark (all traffic on 127.0.0.1)")
    print(
        f"host: {info['cpus_usable']} usable CPU(s) ({info['cpu_model']}), kernel "
        f"{info['kernel']}, python {info['python']}"
    )
    print(
        f"NOTE: load generator, mock upstream and both proxies share these "
        f"{info['cpus_usable']} cores; absolute req/s is machine-bound -- read the ratios."
    )
    if proxy_cpus is not None and side_cpus is not None:
        pinning = (
            f"proxy under test on CPU {_cpu_list(proxy_cpus)}; upstream + load generator on "
            f"CPU {_cpu_list(side_cpus)} (--pin off to disable)"
        )
    else:
        pinning = "off (scheduler places all processes)"
    print(f"pinning: {pinning}")
    print(f"load generator: {gen.describe()}")
    print(
        f"levels {args.levels}, {args.duration} s measured + {args.warmup} s warm-up per run, "
        f"{args.repeat} round(s), body {len(body)} bytes, stream={args.stream}"
    )
    print(f"minimal : {shlex.join(minimal.argv)}")
    print(f"firewall: {fw_cmd}  (ready: {ready_mode})")
    print(f"logs    : {workdir.relative_to(REPO_ROOT)}/")

    records: list[RunRecord] = []
    startup: dict[str, float] = {}
    with services_running([upstream, minimal, firewall]):
        startup["upstream"] = wait_until(
            "TCP accept", tcp_accepts(up_port), upstream, args.startup_timeout
        )
        startup["minimal"] = wait_until(
            "TCP accept", tcp_accepts(min_port), minimal, args.startup_timeout
        )
        fw_ready = 0.0
        if ready_mode == "readyz":
            fw_ready = wait_until(
                "GET /readyz 200",
                http_ok(f"http://{HOST}:{admin_port}/readyz"),
                firewall,
                args.startup_timeout,
            )
        fw_ready += wait_until("TCP accept", tcp_accepts(fw_port), firewall, args.startup_timeout)
        startup["firewall"] = fw_ready
        for name, (svc, port) in proxies.items():
            preflight(name, f"http://{HOST}:{port}{CHAT_PATH}", body, args.stream)
            svc.check_alive()
        print(
            "ready in "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in startup.items())
            + "; preflight OK"
        )
        print()
        print(
            f"{'conc':>5} {'rnd':>3}  {'target':<9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'cpu us/req':>10} {'errors':>7} {'other':>5}"
        )
        for level in args.levels:
            for round_no in range(args.repeat):
                # ABBA ordering: alternate who goes first so drift hits both equally.
                order = TARGETS if round_no % 2 == 0 else TARGETS[::-1]
                for target in order:
                    svc, port = proxies[target]
                    rec = measure(
                        gen,
                        target,
                        f"http://{HOST}:{port}{CHAT_PATH}",
                        svc,
                        upstream,
                        level,
                        args.duration,
                        args.warmup,
                        round_no,
                    )
                    records.append(rec)
                    print(
                        f"{level:>5} {round_no:>3}  {target:<9} {rec.rps:9.1f} "
                        f"{_fmt(rec.p50_ms, '8.3f')} {_fmt(rec.p99_ms, '8.3f')} "
                        f"{_fmt(rec.proxy_cpu_us_per_req, '10.1f')} "
                        f"{rec.non_2xx + rec.socket_errors:>7} {rec.foreign_cpu_pct:4.0f}%",
                        flush=True,
                    )
                    time.sleep(args.pause)

    summary = summarise(records, args.levels, args.noise_threshold)
    checks = verdicts(summary)
    print_report(summary, checks, records, args.noise_threshold)

    out_path = args.output or RESULTS_DIR / f"bench-{stamp}.json"
    doc = {
        "timestamp": stamp,
        "host": info,
        "loadgen": {"name": gen.name, "describe": gen.describe()},
        "settings": {
            "levels": args.levels,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeat": args.repeat,
            "stream": args.stream,
            "body_bytes": len(body),
            "pinning": pinning,
        },
        "commands": {
            "upstream": shlex.join(upstream.argv),
            "minimal": shlex.join(minimal.argv),
            "firewall": fw_cmd,
            "firewall_ready": ready_mode,
        },
        "startup_s": startup,
        "runs": [asdict(r) for r in records],
        "summary": {str(k): v for k, v in summary.items()},
        "targets": checks,
    }
    out_path.write_text(json.dumps(doc, indent=2) + "\n")
    print()
    print(f"results written to {out_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: setup problems are explained and exit 2; crashes propagate."""
    args = parse_args(argv)
    try:
        return run_bench(args)
    except BenchError as exc:
        print(f"bench_proxy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench_proxy: interrupted; servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
