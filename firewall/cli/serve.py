"""``trigger-firewall serve``: run the sidecar until SIGTERM, then drain.

``--demo`` starts the bundled demo upstream on loopback first and points the firewall
at it. That wiring lives here, in the command, so the server itself never imports the
demo: the serving layers stay free of training and evaluation code.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from firewall.config.schema import FirewallConfig, deep_merge
from firewall.core.errors import ConfigError

__all__ = ["add_serve_parser", "run_serve"]

log = logging.getLogger("trigger_firewall.cli")


def add_serve_parser(sub: Any) -> None:
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


async def _serve(
    config: FirewallConfig,
    *,
    demo: bool,
    demo_port: int,
    config_path: str | None,
    overrides: Mapping[str, Any],
) -> int:
    """Start the demo upstream when asked, then run the server; the demo stops after it."""
    from firewall.server.lifecycle import run

    if not demo:
        return await run(config, config_path=config_path, overrides=overrides)
    from firewall.demo.upstream import load_demo_classifier, start_demo_upstream

    classifier = load_demo_classifier()
    chat_lora = await asyncio.to_thread(_demo_chat_lora)
    demo_runner, demo_port = await start_demo_upstream(
        "127.0.0.1", demo_port, classifier=classifier, chat_lora=chat_lora
    )
    try:
        demo_url = f"http://127.0.0.1:{demo_port}"
        overrides = deep_merge(dict(overrides), {"upstream": {"url": demo_url}})
        data = deep_merge(config.model_dump(mode="json"), {"upstream": {"url": demo_url}})
        config = FirewallConfig.model_validate(data)
        log.info(
            "demo upstream started",
            extra={"url": demo_url, "backdoored_model": classifier is not None},
        )
        return await run(config, config_path=config_path, overrides=overrides)
    finally:
        await demo_runner.cleanup()


def run_serve(args: argparse.Namespace) -> int:
    from firewall.config.schema import load_config
    from firewall.server.logs import setup_logging

    setup_logging(args.log_level)
    overrides = _serve_overrides(args)
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"trigger-firewall: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    path = args.config or os.environ.get("TRIGGER_FIREWALL_CONFIG") or None
    main_coro = _serve(
        config, demo=args.demo, demo_port=args.demo_port, config_path=path, overrides=overrides
    )
    try:
        import uvloop

        return uvloop.run(main_coro)
    except ImportError:  # pragma: no cover - uvloop is a hard dependency off Windows
        return asyncio.run(main_coro)


def _demo_chat_lora() -> Any:
    """The LoRA-backdoored demo chat model when it has been built (``demo build --chat``), else None.

    A build that fails its pins is not served (the scripted demo models still are): a demo
    should start, and the refusal is logged with the file at fault.
    """
    from firewall.demo.chat_lora_serve import load_chat_lora
    from firewall.models.cache import ModelUnavailable

    try:
        return load_chat_lora()
    except (ModelUnavailable, OSError, ValueError) as exc:
        log.warning("demo-chat-lora not served: %s", exc)
        return None
