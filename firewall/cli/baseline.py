"""``trigger-firewall learn-baseline``: the templates of clean traffic, for a stateful detector.

A detector that remembers sentences across requests (``recurring_sentences``)
flags prompt templates too: they recur across unrelated prompts by design. This
command runs clean traffic (records in the format ``scan`` reads) through a
fresh instance configured exactly as in the firewall config, so the baseline is
learnt with the same roles, word minimum and context rule the proxy will use,
and writes the baseline file that the detector's ``baseline`` param points at.

Exit status: 0 on success; 2 on bad arguments, an unreadable input or config, or
a config without such a detector.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from firewall.config.schema import FirewallConfig
    from firewall.core.types import Sample

__all__ = ["add_baseline_parser", "run_learn_baseline"]

_PROG = "trigger-firewall learn-baseline"
_KIND = "recurring_sentences"


def add_baseline_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``learn-baseline`` subcommand to the CLI's subparsers."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "learn-baseline",
        help="learn the recurring sentences (templates) of clean traffic for recurring_sentences",
        description="Reads clean JSONL records (the format `scan` reads: 'text' or an OpenAI "
        "'request' body), splits them into sentences as the recurring_sentences detector "
        "configured in --config does, and writes a baseline of the sentences seen in at least "
        "its fire_after distinct requests. Point the detector's `baseline` param at the file. "
        "The file holds the hash key, so whoever has it can confirm a guessed template sentence: "
        "keep it as private as your templates. See docs/detectors/recurring_sentences.md.",
    )
    parser.add_argument("file", help="clean JSONL records; - for stdin")
    parser.add_argument("--output", "-o", required=True, help="baseline JSON file to write")
    parser.add_argument(
        "--config",
        help="YAML config holding the detector (default: $TRIGGER_FIREWALL_CONFIG; without one, "
        "the detector's default params)",
    )
    parser.add_argument(
        "--detector",
        help="detector instance name in the config (default: the config's one recurring_sentences)",
    )
    parser.add_argument(
        "--route", help="route whose protocol reads 'request' records (default: chat_completions)"
    )
    return parser


def run_learn_baseline(args: argparse.Namespace, stderr: IO[str] | None = None) -> int:
    """Learn and write the baseline; messages go to ``stderr``."""
    from detectors.recurring_sentences import RecurringSentencesParams, learn_baseline
    from firewall.config.schema import load_config
    from firewall.core.errors import ConfigError

    err = stderr or sys.stderr
    try:
        config = load_config(args.config) if args.config else load_config()
    except (ConfigError, OSError) as exc:
        print(f"{_PROG}: {exc}", file=err)
        return 2
    try:
        params = _detector_params(config, args.detector)
    except ValueError as exc:
        print(f"{_PROG}: {exc}", file=err)
        return 2
    if args.file != "-" and not Path(args.file).is_file():
        print(f"{_PROG}: {args.file}: no such file", file=err)
        return 2
    try:
        samples = _samples(args.file, config, args.route, err)
        data = learn_baseline(samples, RecurringSentencesParams.model_validate(params), source=args.file)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"{_PROG}: {args.file}: {exc}", file=err)
        return 2
    Path(args.output).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    learned = data["learned"]
    print(
        f"{len(data['hashes'])} recurring sentences from {learned['records']} records written to "
        f"{args.output} (the file holds its hash key: keep it as private as your templates)",
        file=err,
    )
    return 0


def _detector_params(config: FirewallConfig, name: str | None) -> dict[str, Any]:
    """The params of the named (or the only) recurring_sentences detector; defaults without one."""
    found = [d for d in config.detectors if d.kind == _KIND and (name is None or d.name == name)]
    if name is not None and not found:
        raise ValueError(f"no {_KIND} detector named {name!r} in the config")
    if len(found) > 1:
        names = ", ".join(d.name for d in found)
        raise ValueError(f"several {_KIND} detectors ({names}): pick one with --detector")
    params = dict(found[0].params) if found else {}
    params.pop("baseline", None)  # learning starts from nothing, not from an older baseline
    return params


def _samples(path: str, config: FirewallConfig, route: str | None, err: IO[str]) -> Iterator[Sample]:
    """The records as input samples, as the proxy would extract them; bad lines reported, skipped."""
    from firewall.core.types import Phase, Sample
    from firewall.offline.scanning import RecordError, Scanner

    scanner = Scanner(config, route=route)
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    try:
        for line_no, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                segments = scanner.segments(json.loads(line), Phase.INPUT)
            except (json.JSONDecodeError, RecordError) as exc:
                print(f"{path}:{line_no}: skipped: {exc}", file=err)
                continue
            yield Sample(str(line_no), Phase.INPUT, scanner.route.config.name, tuple(segments))
    finally:
        if stream is not sys.stdin:
            stream.close()
