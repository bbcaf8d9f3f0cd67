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
* ``probe --upstream URL --model NAME``: an offline red-team sweep of a deployed model for
  unknown triggers, ranked, within a request budget (docs/probe.md);
* ``calibrate --target-fpr F CLEAN.jsonl``: thresholds for a target false-positive rate on
  your own clean traffic (or a shadow score log), with a confidence bound and a config patch;
* ``check-config FILE``: validate a config, print every error with its path;
* ``config-schema``: print the config's JSON Schema;
* ``version``.

Flags beat ``TRIGGER_FIREWALL_*`` environment variables, which beat the file.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from typing import Any

from firewall import __version__

__all__ = ["main"]

# command -> (module under firewall.cli, its parser adder, its runner). Adding a command is
# one module with those two functions and one line here. An adder may add several commands.
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("serve", "add_serve_parser", "run_serve"),
    "demo-upstream": ("demo_upstream", "add_demo_upstream_parser", "run_demo_upstream"),
    "scan": ("scan", "add_scan_parser", "run_scan"),
    "eval": ("evaluate", "add_eval_parser", "run_eval"),
    "calibrate": ("calibrate", "add_calibrate_parser", "run_calibrate"),
    "probe": ("probe", "add_probe_parser", "run_probe_command"),
    "demo": ("demo", "add_demo_parser", "run_demo"),
    "models": ("models", "add_models_parser", "run_models"),
    "learn-baseline": ("baseline", "add_baseline_parser", "run_learn_baseline"),
    "check-config": ("config", "add_config_parsers", "run_check_config"),
    "config-schema": ("config", "add_config_parsers", "run_config_schema"),
}


def _function(module: str, name: str) -> Callable[..., Any]:
    fn: Callable[..., Any] = getattr(importlib.import_module(f"firewall.cli.{module}"), name)
    return fn


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trigger-firewall",
        description="Inference-time firewall that screens model traffic for backdoor triggers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    added: set[tuple[str, str]] = set()
    for module, adder, _ in _COMMANDS.values():
        if (module, adder) not in added:
            _function(module, adder)(sub)
            added.add((module, adder))
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    module, _, runner = _COMMANDS[args.command]
    code: int = _function(module, runner)(args)
    return code
