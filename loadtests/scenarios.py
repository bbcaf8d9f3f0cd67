"""Load scenarios that account for every request: nothing sent may go missing.

Runs a real firewall (``trigger-firewall serve`` as a subprocess) in front of
``scenarios_upstream.py`` (the benchmark's mock upstream with delay and
long-stream knobs), both on loopback, and drives four scenarios with an aiohttp
client:

* ``steady``: a closed loop at fixed concurrency with a mix of clean, blocked
  (invisible-character trigger), malformed, oversized and streamed requests;
* ``burst``: waves of simultaneous requests well above ``server.max_concurrency``
  against a slow upstream, so the firewall must shed load with 503;
* ``long_streams``: concurrent screened SSE streams of hundreds of events;
* ``slow_clients``: clients that trickle their request body and clients that
  read a stream a few bytes at a time.

Every response is classified (answered, blocked, 503, 413, 400, upstream
error); a request with no HTTP answer or a stream cut short is *lost*. The
firewall's own counters (``trigger_firewall_requests_total`` and
``trigger_firewall_rejected_requests_total``, scraped from the admin port before
and after each scenario) must agree class by class with what the client saw,
and their sum must equal what was sent.

    .venv/bin/python loadtests/scenarios.py                 # full run (~1 min)
    .venv/bin/python loadtests/scenarios.py --scale 0.1     # quick look

Exit status 1 when anything was lost or a metric disagrees. The default test
suite runs a small version (``tests/reliability/test_load_accounting.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
ZWSP = "\u200b"

#: Client-side classes, in table order. ``lost`` and ``unexpected`` must stay 0.
CLASSES = ("answered", "blocked", "overloaded", "too_large", "invalid", "upstream_error")
#: Which firewall counter each client class must match: (metric, label name, label values).
METRIC_OF_CLASS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "answered": ("trigger_firewall_requests_total", "action", ("allow", "log")),
    "blocked": ("trigger_firewall_requests_total", "action", ("block",)),
    "overloaded": ("trigger_firewall_rejected_requests_total", "reason", ("overloaded",)),
    "too_large": ("trigger_firewall_rejected_requests_total", "reason", ("body_too_large",)),
    "invalid": (
        "trigger_firewall_rejected_requests_total",
        "reason",
        ("invalid_json", "invalid_utf8", "invalid_request"),
    ),
    "upstream_error": ("trigger_firewall_requests_total", "action", ("error",)),
}

MAX_REQUEST_BYTES = 64 * 1024
MAX_CONCURRENCY = 48


def firewall_config(
    upstream_url: str, audit_path: str, *, max_concurrency: int = MAX_CONCURRENCY
) -> dict[str, Any]:
    """The config the scenarios run under: invisible characters on input and output, audit on."""
    return {
        "apiVersion": "trigger-firewall.io/v1alpha1",
        "kind": "FirewallConfig",
        "server": {
            "max_concurrency": max_concurrency,
            "max_request_bytes": MAX_REQUEST_BYTES,
            "drain_delay_seconds": 0,
            "shutdown_timeout_seconds": 10,
        },
        "upstream": {"url": upstream_url, "read_timeout_seconds": 30, "connect_timeout_seconds": 2},
        "detectors": [{"name": "invisible_chars"}],
        "stream": {"holdback_chars": 64, "scan_every_chars": 32},
        "reload": {"watch": False},
        "audit": {"enabled": True, "destination": audit_path},
    }


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def firewall_command(config: Path, upstream: str, port: int, admin_port: int) -> list[str]:
    """``trigger-firewall serve`` from this interpreter's environment (else ``-m firewall``)."""
    script = Path(sys.executable).with_name("trigger-firewall")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "firewall"]
    return [
        *head,
        "serve",
        "--config",
        str(config),
        "--upstream",
        upstream,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--admin-port",
        str(admin_port),
    ]


@dataclass
class Stack:
    """A firewall and its upstream, as processes this module owns."""

    proxy_url: str
    admin_url: str
    firewall: subprocess.Popen[bytes]
    upstream: subprocess.Popen[bytes]
    workdir: Path
    stderr_path: Path
    audit_path: Path

    @property
    def firewall_pid(self) -> int:
        return self.firewall.pid


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
            env=env,
        )


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-2000:]
                raise RuntimeError(f"process exited ({proc.returncode}) before ready:\n{tail}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def _with_userinfo(url: str, userinfo: str | None) -> str:
    return url.replace("://", f"://{userinfo}@", 1) if userinfo else url


@contextlib.asynccontextmanager
async def running_stack(
    *,
    config_overrides: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    workdir: Path | None = None,
    upstream_userinfo: str | None = None,
) -> AsyncIterator[Stack]:
    """Start upstream and firewall, wait until both answer, stop both on exit.

    ``upstream_userinfo`` (``user:password``) goes into the upstream URL the firewall
    is given, as a deployment with credentials in the URL would have it.
    """
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="tf-scenarios-")) if workdir is None else workdir
    up_port, port, admin_port = free_port(), free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    audit = work / "audit.jsonl"
    config = firewall_config(upstream_url, str(audit))
    if config_overrides is not None:
        config = config_overrides(config)
    config_path = work / "firewall.yaml"
    config_path.write_text(yaml.safe_dump(config))
    upstream = _spawn(
        [sys.executable, str(HERE / "scenarios_upstream.py"), "--port", str(up_port)],
        work / "upstream.log",
    )
    firewall: subprocess.Popen[bytes] | None = None
    try:
        await _wait_ready(f"{upstream_url}/v1/models", upstream, work / "upstream.log", 20)
        firewall = _spawn(
            firewall_command(
                config_path, _with_userinfo(upstream_url, upstream_userinfo), port, admin_port
            ),
            work / "firewall.stderr",
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
        await _wait_ready(
            f"http://127.0.0.1:{admin_port}/readyz", firewall, work / "firewall.stderr", 60
        )
        yield Stack(
            proxy_url=f"http://127.0.0.1:{port}",
            admin_url=f"http://127.0.0.1:{admin_port}",
            firewall=firewall,
            upstream=upstream,
            workdir=work,
            stderr_path=work / "firewall.stderr",
            audit_path=audit,
        )
    finally:
        if firewall is not None:
            _stop(firewall)
        _stop(upstream)
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- metrics


async def scrape(session: aiohttp.ClientSession, admin_url: str) -> dict[tuple[str, str], float]:
    """``(metric, label value)`` -> value, summed over routes, for the counters we reconcile."""
    async with session.get(admin_url + "/metrics") as resp:
        text = await resp.text()
    out: dict[tuple[str, str], float] = Counter()
    wanted = {m for m, _, _ in METRIC_OF_CLASS.values()} | {"trigger_firewall_inflight_requests"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in wanted:
                continue
            label = sample.labels.get("action") or sample.labels.get("reason") or ""
            out[(sample.name, label)] += sample.value
    return out


async def settle(session: aiohttp.ClientSession, admin_url: str, timeout_s: float = 10.0) -> None:
    """Wait until the firewall has nothing in flight (its counters are final then)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        values = await scrape(session, admin_url)
        if values.get(("trigger_firewall_inflight_requests", ""), 0) == 0:
            return
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- requests


def chat(text: str, *, stream: bool = False) -> bytes:
    body: dict[str, Any] = {
        "model": "mock-model-1",
        "messages": [{"role": "user", "content": text}],
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


CLEAN = chat("What is the capital of France? Answer in one short sentence, please.")
TRIGGER = chat(f"Please summarise this re{ZWSP}{ZWSP}{ZWSP}view for me.")
BAD_JSON = b'{"model": "mock-model-1", "messages": [{"role": "user", "content": "unterminated'
TOO_LARGE = chat("x" * (MAX_REQUEST_BYTES + 1024))
STREAM = chat("Tell me a story.", stream=True)


@dataclass
class Tally:
    """What the client saw in one scenario."""

    sent: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    lost_examples: list[str] = field(default_factory=list)

    def lose(self, why: str) -> None:
        self.lost += 1
        if len(self.lost_examples) < 5:
            self.lost_examples.append(why)


def classify(status: int, body: bytes) -> str:
    """One client-side class per HTTP answer; ``unexpected:<status>`` otherwise."""
    if 200 <= status < 300:
        return "answered"
    code = ""
    with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
        code = str(orjson.loads(body)["error"]["code"])
    if status == 400:
        return "blocked" if code == "content_filter" else "invalid"
    if status == 413:
        return "too_large"
    if status == 503 and code == "overloaded":
        return "overloaded"
    if status in (502, 504):
        return "upstream_error"
    return f"unexpected:{status}"


async def send(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes | Callable[[], AsyncIterator[bytes]],
    tally: Tally,
    *,
    stream: bool = False,
    read_slowly: bool = False,
) -> None:
    """Send one request and record its class; a stream counts only if it ended with [DONE]."""
    tally.sent += 1
    data: Any = body if isinstance(body, bytes) else body()
    try:
        async with session.post(
            url, data=data, headers={"Content-Type": "application/json"}
        ) as resp:
            if read_slowly:
                parts = []
                while chunk := await resp.content.read(64):
                    parts.append(chunk)
                    await asyncio.sleep(0.002)
                raw = b"".join(parts)
            else:
                raw = await resp.read()
            kind = classify(resp.status, raw)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        tally.lose(f"{type(exc).__name__}: {exc}")
        return
    if stream and kind == "answered" and not raw.rstrip().endswith(b"data: [DONE]"):
        tally.lose("stream ended without [DONE]")
        return
    tally.classes[kind] += 1


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scale:
    """Sizes of the scenarios; ``factor`` 1.0 is the full command-line run."""

    factor: float = 1.0

    def n(self, full: int, minimum: int = 1) -> int:
        return max(minimum, round(full * self.factor))

    def seconds(self, full: float, minimum: float = 0.5) -> float:
        return max(minimum, full * self.factor)


async def steady(session: aiohttp.ClientSession, url: str, scale: Scale) -> Tally:
    """Closed loop at concurrency 16 with the full mix of request kinds."""
    tally = Tally()
    mix: Sequence[tuple[bytes, bool]] = (
        *[(CLEAN, False)] * 14,
        (TRIGGER, False),
        (TRIGGER, False),
        (BAD_JSON, False),
        (TOO_LARGE, False),
        (STREAM, True),
        (STREAM, True),
    )
    deadline = time.monotonic() + scale.seconds(15.0, 1.0)

    async def worker(offset: int) -> None:
        i = offset
        while time.monotonic() < deadline:
            body, stream = mix[i % len(mix)]
            await send(session, url, body, tally, stream=stream)
            i += 7

    await asyncio.gather(*(worker(k) for k in range(16)))
    return tally


async def burst(session: aiohttp.ClientSession, url: str, scale: Scale) -> Tally:
    """Waves of 3x the concurrency limit at once, against an upstream that takes 200 ms."""
    tally = Tally()
    slow = url + "?delay_ms=200"
    for _ in range(scale.n(5, 2)):
        await asyncio.gather(
            *(send(session, slow, CLEAN, tally) for _ in range(3 * MAX_CONCURRENCY))
        )
    return tally


async def long_streams(session: aiohttp.ClientSession, url: str, scale: Scale) -> Tally:
    """Screened streams of 400 events, 16 at a time."""
    tally = Tally()
    long_url = url + "?tokens=400&token_delay_ms=1"
    for _ in range(scale.n(4)):
        await asyncio.gather(
            *(send(session, long_url, STREAM, tally, stream=True) for _ in range(16))
        )
    return tally


def trickle(
    body: bytes, pieces: int = 8, pause_s: float = 0.05
) -> Callable[[], AsyncIterator[bytes]]:
    """A chunked request body sent in ``pieces`` with pauses (a slow uploader)."""
    step = max(1, len(body) // pieces)

    async def gen() -> AsyncIterator[bytes]:
        for start in range(0, len(body), step):
            yield body[start : start + step]
            await asyncio.sleep(pause_s)

    return gen


async def slow_clients(session: aiohttp.ClientSession, url: str, scale: Scale) -> Tally:
    """Slow uploaders (clean and triggered) alongside slow readers of long streams."""
    tally = Tally()
    count = scale.n(24, 4)
    uploads = [
        send(session, url, trickle(TRIGGER if k % 4 == 0 else CLEAN), tally) for k in range(count)
    ]
    readers = [
        send(session, url + "?tokens=200", STREAM, tally, stream=True, read_slowly=True)
        for _ in range(count)
    ]
    await asyncio.gather(*uploads, *readers)
    return tally


SCENARIOS: dict[str, Callable[[aiohttp.ClientSession, str, Scale], Any]] = {
    "steady": steady,
    "burst": burst,
    "long_streams": long_streams,
    "slow_clients": slow_clients,
}


@dataclass
class ScenarioResult:
    name: str
    tally: Tally
    metric_delta: dict[str, float]
    metric_total: float
    seconds: float

    @property
    def unexpected(self) -> int:
        return sum(v for k, v in self.tally.classes.items() if k.startswith("unexpected"))

    @property
    def disagreements(self) -> list[str]:
        out = [
            f"{cls}: client {self.tally.classes.get(cls, 0)} != firewall {self.metric_delta[cls]:g}"
            for cls in CLASSES
            if self.tally.classes.get(cls, 0) != self.metric_delta[cls]
        ]
        if self.metric_total != self.tally.sent:
            out.append(f"requests_total {self.metric_total:g} != sent {self.tally.sent}")
        return out

    @property
    def ok(self) -> bool:
        return self.tally.lost == 0 and self.unexpected == 0 and not self.disagreements


def _delta(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for cls, (metric, _, values) in METRIC_OF_CLASS.items():
        out[cls] = sum(after.get((metric, v), 0) - before.get((metric, v), 0) for v in values)
    return out


def _total(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> float:
    name = "trigger_firewall_requests_total"
    return sum(v - before.get(k, 0) for k, v in after.items() if k[0] == name)


async def run_scenarios(
    proxy_url: str, admin_url: str, names: Sequence[str], scale: Scale
) -> list[ScenarioResult]:
    """Run the named scenarios one after another against a running firewall."""
    url = proxy_url + "/v1/chat/completions"
    results = []
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for name in names:
            await settle(session, admin_url)
            before = await scrape(session, admin_url)
            t0 = time.perf_counter()
            tally = await SCENARIOS[name](session, url, scale)
            seconds = time.perf_counter() - t0
            await settle(session, admin_url)
            after = await scrape(session, admin_url)
            results.append(
                ScenarioResult(name, tally, _delta(before, after), _total(before, after), seconds)
            )
    return results


def summary_table(results: Sequence[ScenarioResult]) -> str:
    """The printed report: one row per scenario, client classes, lost, metric agreement."""
    head = ["scenario", "sent", "answered", "blocked", "503", "413", "400", "502/504", "lost",
            "metrics", "s"]  # fmt: skip
    rows = [head]
    for r in results:
        c = r.tally.classes
        rows.append(
            [
                r.name,
                str(r.tally.sent),
                *(str(c.get(k, 0)) for k in CLASSES),
                str(r.tally.lost + r.unexpected),
                "agree" if not r.disagreements else "DISAGREE",
                f"{r.seconds:.1f}",
            ]
        )
    total = Tally()
    for r in results:
        total.sent += r.tally.sent
        total.classes.update(r.tally.classes)
        total.lost += r.tally.lost
    agree = all(not r.disagreements for r in results)
    rows.append(
        [
            "TOTAL",
            str(total.sent),
            *(str(total.classes.get(k, 0)) for k in CLASSES),
            str(total.lost + sum(r.unexpected for r in results)),
            "agree" if agree else "DISAGREE",
            f"{sum(r.seconds for r in results):.1f}",
        ]
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, lines[1])
    for r in results:
        for problem in r.disagreements + r.tally.lost_examples:
            lines.append(f"  {r.name}: {problem}")
        for k, v in r.tally.classes.items():
            if k.startswith("unexpected"):
                lines.append(f"  {r.name}: {v} x {k}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only these (repeatable; default: all)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="size factor (1.0 = full run)")
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    names = args.scenario or list(SCENARIOS)
    async with running_stack() as stack:
        print(f"firewall pid {stack.firewall_pid} at {stack.proxy_url} (admin {stack.admin_url})")
        results = await run_scenarios(stack.proxy_url, stack.admin_url, names, Scale(args.scale))
        alive = stack.firewall.poll() is None
    print(summary_table(results))
    print(f"firewall still running after the scenarios: {'yes' if alive else 'NO'}")
    return 0 if alive and all(r.ok for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
