"""``trigger-firewall scan``: JSONL in, JSONL out, with the proxy's own detectors and policy.

Bad lines (not JSON, not an object, no text) are reported on stderr with their
line number and skipped; the run never stops for them. Results come out in input
order. A progress line on stderr shows lines done and the rate (and the share of
the file read, when the input is a file).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import IO, Any

import orjson

from firewall.config.schema import load_config
from firewall.core.errors import ConfigError
from firewall.core.types import Phase
from firewall.offline.scanning import RecordError, Scanner

__all__ = ["run_scan"]


class Progress:
    """A one-line progress display on stderr, redrawn at most five times a second."""

    def __init__(self, enabled: bool, total_bytes: int | None) -> None:
        self.enabled = enabled
        self.total = total_bytes
        self.start = time.monotonic()
        self.last = 0.0

    def update(self, done: int, read_bytes: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        share = ""
        if self.total:
            pct = min(100.0, 100.0 * read_bytes / self.total)
            filled = int(pct / 5)
            share = f"[{'#' * filled}{'.' * (20 - filled)}] {pct:5.1f}% "
        sys.stderr.write(f"\r{share}{done} lines, {rate:,.0f}/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


async def _records(
    stream: IO[bytes], errors: list[tuple[int, str]], counter: list[int]
) -> AsyncIterator[tuple[int, Any]]:
    for line_no, line in enumerate(stream, start=1):
        counter[0] += len(line)
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            errors.append((line_no, f"invalid JSON ({exc.msg})"))
            continue
        yield line_no, record
        if line_no % 256 == 0:
            await asyncio.sleep(0)  # let scans progress while a large file is read


async def _scan(args: argparse.Namespace, source: IO[bytes], sink: IO[bytes]) -> int:
    overrides = {"upstream": {"url": args.upstream}} if args.upstream else None
    config = load_config(args.config, overrides=overrides)
    phase = Phase(args.phase)
    total = None if args.file == "-" else os.fstat(source.fileno()).st_size
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    progress = Progress(show, total)
    errors: list[tuple[int, str]] = []
    read = [0]
    done = flagged = skipped = 0
    async with Scanner(config, route=args.route, upstream=bool(args.upstream)) as scanner:
        async for line_no, result in scanner.scan_many(
            _records(source, errors, read), phase, concurrency=max(1, args.concurrency)
        ):
            if isinstance(result, RecordError):
                errors.append((line_no, str(result)))
            else:
                sink.write(orjson.dumps(result, option=orjson.OPT_APPEND_NEWLINE))
                done += 1
                flagged += bool(result["flagged"])
            progress.update(done, read[0])
            skipped += _report(args.file, errors)
    skipped += _report(args.file, errors)
    sink.flush()
    progress.update(done, read[0], force=True)
    progress.close()
    sys.stderr.write(f"scanned {done} records, {flagged} flagged, {skipped} bad lines skipped\n")
    return 0


def _report(path: str, errors: list[tuple[int, str]]) -> int:
    """Print and clear the bad lines found so far; returns how many there were."""
    name = "<stdin>" if path == "-" else path
    count = len(errors)
    for bad_line, why in sorted(errors):
        sys.stderr.write(f"{name}:{bad_line}: skipped: {why}\n")
    errors.clear()
    return count


def add_scan_parser(sub: Any) -> None:
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
        "--upstream",
        help="the protected model's base URL: detectors that ask the model (counterfactual) probe it "
        "as the proxy would; without it they do not run, and a line on stderr says so",
    )
    scan.add_argument(
        "--progress",
        choices=["auto", "always", "never"],
        default="auto",
        help="progress bar on stderr (auto: when stderr is a terminal)",
    )


def run_scan(args: argparse.Namespace) -> int:
    try:
        source: IO[bytes] = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as exc:
        print(f"trigger-firewall scan: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        sink: IO[bytes] = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
    except OSError as exc:
        print(f"trigger-firewall scan: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_scan(args, source, sink))
    except ConfigError as exc:
        print(f"trigger-firewall scan: {exc}", file=sys.stderr)
        return 2
    finally:
        if source is not sys.stdin.buffer:
            source.close()
        if sink is not sys.stdout.buffer:
            sink.close()
