"""Machine instructions per proxied request, counted by callgrind: a ratio that noise cannot move.

``bench_proxy.py`` times both proxies on the same machine, which is what a user
sees, but on a small shared VM its ratio moves by +-0.07 from run to run: a 5%
change in the firewall's cost cannot be told from noise. This runner counts
instead. It starts the mock upstream, then each target under ``valgrind
--tool=callgrind`` with counting off; once the target is ready and warmed up it
switches counting on (``callgrind_control -i on``), sends ``--requests`` chat
requests one at a time over one keep-alive connection, switches counting off and
reads the instructions the target executed (``Ir``). The same code on the same
requests gives the same count within about 0.5%.

    .venv/bin/python -m loadtests.bench_instructions                      # minimal vs defaults
    .venv/bin/python -m loadtests.bench_instructions --config loadtests/bench-config.yaml
    .venv/bin/python -m loadtests.bench_instructions --keep /tmp/cg   # then: callgrind_annotate \
        --inclusive=yes /tmp/cg/firewall.callgrind*                    # where the instructions go
    git worktree add /tmp/before HEAD~3          # then count a second build side by side:
    .venv/bin/python -m loadtests.bench_instructions --also "PYTHONPATH=/tmp/before {python} -P \
        -m firewall serve --config {config} --upstream {upstream} --host 127.0.0.1 --port {port} \
        --admin-port {admin_port}"

Targets start in the repository root, where ``python -m`` finds this checkout's
``firewall`` before any ``PYTHONPATH`` entry: ``-P`` (Python 3.11+) leaves the
working directory off ``sys.path``, so the other checkout is the one imported.

Read the ratio as "how much more work than the floor", not as a throughput
ratio: instructions are not time (a C hash and a Python call differ in cost per
instruction, and valgrind hides CPU features such as SHA extensions, so hashing
counts heavier than it runs). It is the tool for before/after comparisons of the
firewall's own code.

Under valgrind everything runs about 50 times slower, so an inline detector call
would overrun the firewall's wall-clock budget for holding the event loop
(``server.inline_budget_ms``) and be moved to a worker thread, a path the real
proxy does not take. The runner therefore serves a copy of the config with that
budget raised to its maximum, and says so. Needs ``valgrind`` on PATH (Debian:
``apt-get install valgrind``); the runner itself uses the standard library and
the helpers of ``bench_proxy.py``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtests import bench_proxy as bp

DEFAULT_CONFIG = bp.LOADTESTS_DIR / "bench-config-defaults.yaml"
MINIMAL_CMD = "{python} loadtests/minimal_proxy.py --port {port} --upstream {upstream}"
_ENV_TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
#: The largest ``server.inline_budget_ms`` the config schema accepts.
_MAX_INLINE_BUDGET_MS = 10_000


@dataclass(frozen=True, slots=True)
class Counted:
    """One target's count: instructions over the measured requests."""

    name: str
    instructions: int
    requests: int

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


def measuring_config(config: Path, workdir: Path) -> Path:
    """``config`` with ``server.inline_budget_ms`` at its maximum (see the module docstring).

    Appends a ``server`` block when the file has none; a file that sets ``server``
    itself must set the budget there (the runner refuses to guess at merging YAML).
    """
    text = config.read_text()
    if re.search(r"^server\s*:", text, re.M):
        if "inline_budget_ms" not in text:
            raise bp.BenchError(
                f"{config} has a server block: add inline_budget_ms: {_MAX_INLINE_BUDGET_MS} to it"
            )
        return config
    out = workdir / f"measured-{config.name}"
    out.write_text(f"{text.rstrip()}\nserver:\n  inline_budget_ms: {_MAX_INLINE_BUDGET_MS}\n")
    return out


def _argv_and_env(template: str, fields: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command line a template names, with leading ``NAME=value`` words as environment.

    A leading ``env`` (as ``bench_proxy.py`` templates are often written) is dropped too:
    valgrind would otherwise run ``env`` itself and not count the Python it starts.
    """
    words = shlex.split(template.format(**fields))
    if words[:1] == ["env"]:
        words.pop(0)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    while words and _ENV_TOKEN.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return words, env


def _post(conn: http.client.HTTPConnection, body: bytes) -> None:
    conn.request("POST", bp.CHAT_PATH, body=body, headers=bp.REQUEST_HEADERS)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise bp.BenchError(f"answer {resp.status}: {data[:200]!r}")


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def count_target(
    name: str,
    template: str,
    *,
    upstream: str,
    config: Path,
    body: bytes,
    requests: int,
    warmup: int,
    workdir: Path,
    startup_timeout: float,
) -> Counted:
    """Start ``template`` under callgrind, warm it up, and count ``requests`` requests."""
    port, admin_port = bp.free_ports(2)
    fields = {
        "python": shlex.quote(sys.executable),
        "port": str(port),
        "admin_port": str(admin_port),
        "upstream": upstream,
        "config": shlex.quote(str(config)),
    }
    argv, env = _argv_and_env(template, fields)
    out = workdir / f"{name}.callgrind"
    for stale in workdir.glob(f"{out.name}*"):  # a kept folder's earlier run would be summed in
        stale.unlink()
    valgrind = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        *argv,
    ]
    service = bp.Service(name, valgrind, workdir / f"{name}.log", env=env)
    service.start()
    try:
        ready = (
            bp.http_ok(f"http://{bp.HOST}:{admin_port}/readyz")
            if "{admin_port}" in template
            else bp.tcp_accepts(port)
        )
        bp.wait_until("readiness", ready, service, startup_timeout)
        conn = http.client.HTTPConnection(bp.HOST, port, timeout=120)
        for _ in range(warmup):
            _post(conn, body)
        _control("-i", "on", str(service.pid))
        for _ in range(requests):
            _post(conn, body)
        _control("-i", "off", str(service.pid))
        _control("-d", str(service.pid))
        conn.close()
    finally:
        service.stop(grace_s=60)  # valgrind writes its last dump on the way out
    total = 0
    for dump in workdir.glob(f"{out.name}*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    if total == 0:
        raise bp.BenchError(f"{name}: callgrind counted nothing; log tail:\n{service.log_tail()}")
    return Counted(name, total, requests)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="firewall config")
    parser.add_argument("--requests", type=int, default=600, help="counted requests per target")
    parser.add_argument("--warmup", type=int, default=300, help="uncounted requests first")
    parser.add_argument(
        "--firewall-cmd", default=bp.DEFAULT_FIREWALL_CMD, help="template, as in bench_proxy.py"
    )
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="TEMPLATE",
        help="another target to count (leading NAME=value words set its environment); repeatable",
    )
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--output", type=Path, help="JSON path (default: loadtests/results/)")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the callgrind dumps and logs in DIR (read them with callgrind_annotate)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for template in (args.firewall_cmd, *args.also):
        bp.check_template(template)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (with callgrind_control) is not on PATH", file=sys.stderr)
        return 2
    body = bp.request_body(stream=False)
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        workdir = Path(tmp)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            workdir = args.keep
        config = measuring_config(args.config, workdir)
        if config != args.config:
            print(f"config: {args.config} with server.inline_budget_ms = {_MAX_INLINE_BUDGET_MS}")
        (up_port,) = bp.free_ports(1)
        upstream = bp.Service(
            "upstream",
            [sys.executable, "loadtests/mock_upstream.py", "--port", str(up_port)],
            workdir / "upstream.log",
        )
        upstream.start()
        try:
            bp.wait_until("upstream", bp.tcp_accepts(up_port), upstream, 60)
            targets = [("minimal", MINIMAL_CMD), ("firewall", args.firewall_cmd)]
            targets += [(f"also-{i + 1}", t) for i, t in enumerate(args.also)]
            counted = []
            for name, template in targets:
                started = time.monotonic()
                c = count_target(
                    name,
                    template,
                    upstream=f"http://{bp.HOST}:{up_port}",
                    config=config,
                    body=body,
                    requests=args.requests,
                    warmup=args.warmup,
                    workdir=workdir,
                    startup_timeout=args.startup_timeout,
                )
                counted.append(c)
                print(
                    f"  {name:10s} {c.per_request:12,.0f} instructions/request "
                    f"({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
        finally:
            upstream.stop()
    floor = counted[0].per_request
    print(f"\n{'target':10s} {'instructions/request':>22s} {'x minimal':>10s}")
    for c in counted:
        print(f"{c.name:10s} {c.per_request:22,.0f} {c.per_request / floor:10.3f}")
    out = args.output or bp.RESULTS_DIR / f"instructions-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "config": str(args.config),
        "requests": args.requests,
        "warmup": args.warmup,
        "targets": [
            {
                "name": c.name,
                "instructions_per_request": round(c.per_request),
                "x_minimal": c.per_request / floor,
            }
            for c in counted
        ],
        "commands": {name: template for name, template in targets},
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
