"""``trigger-firewall check-config FILE`` and ``config-schema``: validate a config, print the schema."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from firewall.core.errors import ConfigError

__all__ = ["add_config_parsers", "run_check_config", "run_config_schema"]


def add_config_parsers(sub: Any) -> None:
    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    sub.add_parser("config-schema", help="print the config JSON Schema")


def run_check_config(args: argparse.Namespace) -> int:
    from firewall.config.schema import config_hash, load_config

    try:
        config = load_config(args.file, environ={})
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    detectors = ", ".join(d.name for d in config.detectors if d.enabled) or "none"
    print(f"{args.file}: OK (hash {config_hash(config)}; mode {config.mode.value}; detectors: {detectors})")
    return 0


def run_config_schema(args: argparse.Namespace) -> int:
    from firewall.config.schema import json_schema

    sys.stdout.write(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
