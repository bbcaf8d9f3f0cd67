"""``trigger-firewall calibrate``: clean traffic in, thresholds with their price and a config patch out.

Imported whenever the CLI builds its parser, so nothing heavy is imported at
module level: the statistics, the Scanner and the detectors load only when the
command runs. Every argument (output paths, matplotlib for ``--plot``, the
config) is checked before the input is read, so a typo costs nothing.

Exit status: 0 on success; 2 on bad arguments, an unreadable input or config,
no usable records, or a sample too small for the requested FPR (the message
names the minimum sample size); 1 if the patch fails its own validation (a bug:
nothing is written).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from firewall.cli.args import fraction, positive_int

if TYPE_CHECKING:
    from firewall.config.schema import FirewallConfig
    from firewall.offline.calibration import CalibrationResult, FamilyTPR, ScoreSample

__all__ = ["add_calibrate_parser", "run_calibrate"]

_PROG = "trigger-firewall calibrate"


def add_calibrate_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``calibrate`` subcommand to the CLI's subparsers."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "calibrate",
        help="compute detector thresholds for a target false-positive rate from clean traffic",
        description="Reads clean traffic (a shadow score log, `scan` output, or records `scan` accepts, "
        "which are scored now with the configured detectors), and prints per detector the threshold "
        "for the target false-positive rate, the observed FPR, a one-sided Clopper-Pearson upper bound "
        "on the true FPR, and the detection rate on the built-in trigger families. Writes a config "
        "patch to review and commit. Refuses samples too small for the target. See docs/calibration.md.",
    )
    parser.add_argument(
        "file", help="clean JSONL: score-log lines, scan output, or text/request records; - for stdin"
    )
    parser.add_argument(
        "--target-fpr",
        type=fraction,
        required=True,
        help="false-positive rate to calibrate for, e.g. 0.01 (no default: the team chooses it)",
    )
    parser.add_argument(
        "--per-route",
        action="store_true",
        help="also calibrate each route in the data (score-log 'route' field) and patch per-route overrides",
    )
    parser.add_argument(
        "--config", help="YAML config the patch applies to (default: $TRIGGER_FIREWALL_CONFIG or built-in)"
    )
    parser.add_argument("--phase", choices=["input", "output"], default="input", help="phase to calibrate")
    parser.add_argument(
        "--route", help="route whose policy and protocol score text records (default: chat_completions)"
    )
    parser.add_argument(
        "--confidence",
        type=fraction,
        default=0.95,
        help="confidence of the one-sided FPR upper bound (default 0.95)",
    )
    parser.add_argument(
        "--plot", metavar="PNG", help="write clean score distributions with the thresholds (needs matplotlib)"
    )
    parser.add_argument("--patch", metavar="OUT.yaml", help="write the config patch here")
    parser.add_argument(
        "--families-tpr",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure TPR on the built-in trigger families at the calibrated thresholds (default: on)",
    )
    parser.add_argument(
        "--tpr-limit",
        type=positive_int,
        default=200,
        help="clean texts the trigger families are planted in (default 200)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the text sample and trigger insertion")
    return parser


def _fail(message: str, code: int = 2) -> int:
    print(f"{_PROG}: {message}", file=sys.stderr)
    return code


def _check_output(path: str | None, flag: str) -> str | None:
    if path is None:
        return None
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        return f"{flag}: directory {parent} does not exist"
    if Path(path).is_dir():
        return f"{flag}: {path} is a directory"
    return None


def _report_bad(name: str, bad: list[tuple[int, str]]) -> None:
    from firewall.offline.calibration import MAX_REPORTED_BAD_LINES

    for line_no, why in bad[:MAX_REPORTED_BAD_LINES]:
        print(f"{name}:{line_no}: skipped: {why}", file=sys.stderr)
    if len(bad) > MAX_REPORTED_BAD_LINES:
        print(f"{name}: ... and {len(bad) - MAX_REPORTED_BAD_LINES} more bad lines", file=sys.stderr)


class _Failure(Exception):
    """Stops the run with a message and an exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


async def _collect_and_calibrate(
    args: argparse.Namespace, config: FirewallConfig, sample: ScoreSample, name: str
) -> tuple[CalibrationResult, FamilyTPR | None, str | None]:
    """Score pending records, calibrate, then measure family TPR with one Scanner (detectors load once)."""
    from firewall.core.errors import ConfigError
    from firewall.evaluation.data import DataUnavailableError
    from firewall.offline.calibration import SampleTooSmallError, calibrate, family_tpr, score_pending
    from firewall.offline.scanning import Scanner

    scanner: Scanner | None = None

    async def start_scanner() -> Scanner:
        s = Scanner(config, route=args.route)
        try:
            await s.__aenter__()
        except BaseException:
            await s.runtime.close()
            raise
        return s

    try:
        if sample.pending:
            try:
                scanner = await start_scanner()
            except ConfigError as exc:
                raise _Failure(f"cannot score the text records: {exc}") from exc
            await score_pending(scanner, sample)
        _report_bad(name, sample.bad)
        if not sample.records:
            raise _Failure(f"{name}: no usable clean records in the {sample.phase.value} phase")
        try:
            result = calibrate(
                sample,
                config,
                target_fpr=args.target_fpr,
                confidence=args.confidence,
                per_route=args.per_route,
            )
        except SampleTooSmallError as exc:
            raise _Failure(f"sample too small: {exc}") from exc
        if not args.families_tpr:
            return result, None, "not measured (--no-families-tpr)"
        try:
            if scanner is None:
                scanner = await start_scanner()
            tpr = await family_tpr(
                scanner,
                result.thresholds,
                sample.texts,
                phase=sample.phase,
                seed=args.seed,
                limit=args.tpr_limit,
            )
        except (ConfigError, DataUnavailableError) as exc:
            return result, None, f"not measured ({exc})"
        return result, tpr, None
    finally:
        if scanner is not None:
            await scanner.__aexit__(None, None, None)


def run_calibrate(args: argparse.Namespace) -> int:
    """Run ``calibrate`` from parsed arguments; see the module docstring for the exit status."""
    from firewall.config.schema import config_hash, load_config, read_config_file
    from firewall.core.errors import ConfigError
    from firewall.core.types import Phase
    from firewall.offline.calibration import (
        PlotUnavailableError,
        build_patch,
        format_table,
        patch_header,
        plot_available,
        read_sample,
        render_patch,
        verify_patch,
        write_plot,
    )
    from firewall.offline.plotting import PLOT_MISSING

    for problem in (_check_output(args.patch, "--patch"), _check_output(args.plot, "--plot")):
        if problem:
            return _fail(problem)
    if args.plot and not plot_available():
        return _fail(f"{PLOT_MISSING} (or run without --plot)")
    try:
        config = load_config(args.config)
        base = read_config_file(args.config) if args.config else {}
    except ConfigError as exc:
        return _fail(f"invalid configuration\n{exc}")
    if args.route is not None and args.route not in {r.name for r in config.routing.routes}:
        return _fail(f"--route: unknown route {args.route!r}")

    name = "<stdin>" if args.file == "-" else args.file
    try:
        source: IO[bytes] = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror}")
    try:
        sample = read_sample(source, Phase(args.phase), text_limit=args.tpr_limit, seed=args.seed)
    finally:
        if source is not sys.stdin.buffer:
            source.close()

    try:
        result, tpr, tpr_note = asyncio.run(_collect_and_calibrate(args, config, sample, name))
    except _Failure as exc:
        return _fail(str(exc), exc.code)

    current_hash = config_hash(config)
    print(
        f"{name}: {sample.records:,} clean records used, {len(sample.bad):,} bad lines skipped"
        + (f", {sample.other_phase:,} lines of the other phase ignored" if sample.other_phase else ""),
        file=sys.stderr,
    )
    other_hashes = sorted(h for h in sample.config_hashes if h != current_hash)
    if other_hashes:
        print(
            f"{_PROG}: note: scores were collected under config hash(es) {', '.join(other_hashes)} "
            f"(current: {current_hash}); thresholds do not change scores, but detector params do",
            file=sys.stderr,
        )
    if args.per_route and sample.without_route:
        print(
            f"{_PROG}: note: {sample.without_route:,} records carry no route; they count in the pooled "
            "thresholds only",
            file=sys.stderr,
        )
    sys.stdout.write(format_table(result, tpr, tpr_note=tpr_note))
    sys.stdout.flush()

    if args.patch:
        patch = build_patch(config, result)
        try:
            verify_patch(base, patch, result)
        except (ConfigError, ValueError) as exc:  # pragma: no cover - a bug, never a user error
            return _fail(f"internal error: the patch does not validate; nothing written\n{exc}", 1)
        header = patch_header(
            result,
            source=name,
            source_sha256=sample.source_sha256,
            records=sample.records,
            config_source=args.config or "built-in defaults",
            config_hash=current_hash,
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )
        Path(args.patch).write_text(render_patch(patch, header), encoding="utf-8")
        print(f"config patch written to {args.patch}", file=sys.stderr)
    else:
        print("no patch written (use --patch OUT.yaml)", file=sys.stderr)
    if args.plot:
        try:
            write_plot(sample, result, args.plot)
        except PlotUnavailableError as exc:  # pragma: no cover - checked before the run
            return _fail(str(exc))
        print(f"score distributions written to {args.plot}", file=sys.stderr)
    return 0
