"""The ``trigger-firewall`` command line.

Subcommands:

* ``serve``: run the sidecar (``--config``, ``--upstream``, ``--host``, ``--port``,
  ``--admin-host``, ``--admin-port``; ``--demo`` starts the bundled demo
  upstream on loopback and points the firewall at it);
* ``demo-upstream``: run only the demo OpenAI-compatible endpoint;
* ``demo build``: train the backdoored demo classifier the demo upstream serves;
* ``models prepare|info``: convert the embedded reference language model once into the cache;
* ``scan [FILE|-]``: screen JSONL records offline, exactly as the proxy would;
* ``eval``: the project's trigger evaluation suite (AUROC, TPR at 1% FPR per family);
* ``calibrate --target-fpr F CLEAN.jsonl``: thresholds for a target false-positive rate on
  your own clean traffic (or a shadow score log), with a confidence bound and a config patch;
* ``check-config FILE``: validate a config, print every error with its path;
* ``config-schema``: print the config's JSON Schema;
* ``version``.

Flags beat ``TRIGGER_FIREWALL_*`` environment variables, which beat the file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from firewall import __version__
from firewall.core.errors import ConfigError

__all__ = ["main"]

log = logging.getLogger("trigger_firewall.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trigger-firewall",
        description="Inference-time firewall that screens model traffic for backdoor triggers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the firewall proxy")
    serve.add_argument("--config", help="YAML config file (default: $TRIGGER_FIREWALL_CONFIG)")
    serve.add_argument("--upstream", help="upstream base URL, e.g. http://127.0.0.1:8000")
    serve.add_argument("--host", help="proxy listen address")
    serve.add_argument("--port", type=int, help="proxy listen port")
    serve.add_argument("--admin-host", help="admin listen address (default 127.0.0.1)")
    serve.add_argument("--admin-port", type=int, help="admin port (/metrics, /livez, /readyz)")
    serve.add_argument("--mode", choices=["enforce", "monitor", "off"], help="global mode")
    serve.add_argument("--demo", action="store_true", help="start the bundled demo upstream and protect it")
    serve.add_argument(
        "--demo-port", type=int, default=8000, help="loopback port of the demo upstream (0: any free port)"
    )
    serve.add_argument("--log-level", default="info")

    demo = sub.add_parser("demo-upstream", help="run the bundled demo OpenAI-compatible endpoint")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--stream-delay", type=float, default=0.02, help="seconds between chunks")

    scan = sub.add_parser(
        "scan",
        help="screen JSONL records offline with the configured detectors",
        description="Reads JSONL (one object a line with 'id' and 'text', or an OpenAI request "
        "body under 'request'), runs the configured detectors exactly as the proxy would, and "
        "writes one JSONL result a line: id, flagged, action, scores, findings.",
    )
    scan.add_argument("file", nargs="?", default="-", help="input JSONL file, or - for stdin")
    scan.add_argument("--config", help="YAML config file (default: built-in defaults)")
    scan.add_argument("--phase", choices=["input", "output"], default="input")
    scan.add_argument("--route", help="route whose policy and protocol apply (default: chat_completions)")
    scan.add_argument("--output", "-o", default="-", help="output JSONL file (default: stdout)")
    scan.add_argument("--concurrency", type=int, default=32, help="records in flight at once")
    scan.add_argument(
        "--progress",
        choices=["auto", "always", "never"],
        default="auto",
        help="progress bar on stderr (auto: when stderr is a terminal)",
    )

    from firewall.cli.evaluate import add_eval_parser

    add_eval_parser(sub)

    from firewall.cli.calibrate import add_calibrate_parser

    add_calibrate_parser(sub)

    from firewall.cli.demo import add_demo_parser

    add_demo_parser(sub)

    from firewall.cli.models import add_models_parser

    add_models_parser(sub)

    from firewall.cli.baseline import add_baseline_parser

    add_baseline_parser(sub)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file")

    sub.add_parser("config-schema", help="print the config JSON Schema")
    sub.add_parser("version", help="print the version")
    return parser


def _serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    server: dict[str, Any] = {}
    for flag, key in (
        ("host", "host"),
        ("port", "port"),
        ("admin_host", "admin_host"),
        ("admin_port", "admin_port"),
    ):
        value = getattr(args, flag)
        if value is not None:
            server[key] = value
    out: dict[str, Any] = {}
    if server:
        out["server"] = server
    if args.upstream:
        out["upstream"] = {"url": args.upstream}
    if args.mode:
        out["mode"] = args.mode
    return out


def _run_serve(args: argparse.Namespace) -> int:
    from firewall.config.schema import load_config
    from firewall.server.lifecycle import run
    from firewall.server.logs import setup_logging

    setup_logging(args.log_level)
    overrides = _serve_overrides(args)
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"trigger-firewall: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    path = args.config or os.environ.get("TRIGGER_FIREWALL_CONFIG") or None
    main_coro = run(
        config,
        demo_upstream=args.demo,
        demo_port=args.demo_port,
        config_path=path,
        overrides=overrides,
    )
    try:
        import uvloop

        return uvloop.run(main_coro)
    except ImportError:  # pragma: no cover - uvloop is a hard dependency off Windows
        return asyncio.run(main_coro)


def _run_demo(args: argparse.Namespace) -> int:
    from aiohttp import web

    from firewall.demo.upstream import make_demo_app

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("trigger-firewall: the demo upstream binds to loopback only", file=sys.stderr)
        return 2
    from firewall.demo.upstream import load_demo_classifier

    app = make_demo_app(args.stream_delay, load_demo_classifier())
    web.run_app(app, host=args.host, port=args.port, access_log=None)
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from firewall.config.schema import config_hash, load_config

    try:
        config = load_config(args.file, environ={})
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    detectors = ", ".join(d.name for d in config.detectors if d.enabled) or "none"
    print(f"{args.file}: OK (hash {config_hash(config)}; mode {config.mode.value}; detectors: {detectors})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _run_serve(args)
    if args.command == "demo-upstream":
        return _run_demo(args)
    if args.command == "scan":
        from firewall.cli.scan import run_scan

        return run_scan(args)
    if args.command == "models":
        from firewall.cli.models import run_models

        return run_models(args)
    if args.command == "demo":
        from firewall.cli.demo import run_demo

        return run_demo(args)
    if args.command == "calibrate":
        from firewall.cli.calibrate import run_calibrate

        return run_calibrate(args)
    if args.command == "eval":
        from firewall.cli.evaluate import run_eval

        return run_eval(args)
    if args.command == "learn-baseline":
        from firewall.cli.baseline import run_learn_baseline

        return run_learn_baseline(args)
    if args.command == "check-config":
        return _run_check(args)
    if args.command == "config-schema":
        from firewall.config.schema import json_schema

        sys.stdout.write(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(__version__)
    return 0
