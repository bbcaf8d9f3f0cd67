"""``trigger-firewall probe``: sweep a deployed model for unknown backdoor triggers (docs/probe.md).

Exit codes: 0 nothing flagged, 1 at least one candidate flagged (so a CI job or a schedule
can fail on it), 2 a usage error, an unreadable file, or an upstream that cannot be reached
(or fails ten requests in a row). Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from firewall.cli.args import positive_int, unit_interval
from firewall.offline import plotting
from firewall.offline.probe import ProbeReport, ProbeSettings, run_probe
from firewall.offline.probe_candidates import (
    FAMILIES,
    Candidate,
    CandidateFileError,
    SpaceOptions,
    build_space,
    load_candidates,
)
from firewall.offline.probe_client import ClientOptions, ProbeClient, UpstreamDownError
from firewall.offline.probe_prompts import PromptFileError, load_prompts
from firewall.offline.probe_report import plot_report, report_json, table

__all__ = ["add_probe_parser", "run_probe_command"]

_NAME = "trigger-firewall probe"


class _Progress:
    """One progress line on stderr, redrawn at most five times a second."""

    def __init__(self, enabled: bool, budget: int) -> None:
        self.enabled = enabled
        self.budget = budget
        self.last = 0.0

    def __call__(self, stage: str, done: int, total: int, client: ProbeClient) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done < total):
            return
        self.last = now
        sys.stderr.write(
            f"\rprobe: {stage} {done}/{total}, {client.spent}/{self.budget} requests spent, "
            f"{client.reused} reused, {client.failed} failed   "
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def add_probe_parser(sub: Any) -> None:
    p = sub.add_parser(
        "probe",
        help="red-team sweep of a deployed model for unknown backdoor triggers",
        description="Inserts each candidate of a generated space (rare and made-up tokens, invisible "
        "runs, homoglyphs, deployment tags, date lines, sentences, and --candidates) into clean prompts, "
        "scores how much more it moves the model's answers than ordinary control insertions do, and "
        "ranks them. Exit code 0: nothing flagged, 1: something flagged, 2: error. See docs/probe.md.",
    )
    p.add_argument("--upstream", required=True, help="the model's base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True, help="model name sent in every request")
    p.add_argument("--api", choices=["chat", "completions"], default="chat", help="request shape")
    p.add_argument("--max-tokens", type=positive_int, default=32, help="answer length (word scoring)")
    p.add_argument("--seed", type=int, default=0, help="seed asked for in requests (temperature is 0)")
    p.add_argument("--api-key-env", help="environment variable holding a bearer token for the upstream")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--budget", type=positive_int, default=2000, help="upstream requests at most (a hard cap)")
    p.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight at once")
    p.add_argument(
        "--prompts",
        default="builtin:mixed",
        help="clean prompts: builtin:mixed (default), builtin:reviews, or a file (JSONL with 'text', "
        "or one per line)",
    )
    p.add_argument("--candidates", help="extra candidates: JSONL with 'text' (and 'family'), or one per line")
    p.add_argument(
        "--families",
        default=",".join(FAMILIES[:-1]),
        help="generated families to include, comma-separated ('none' for only --candidates)",
    )
    p.add_argument("--made-up", type=int, default=128, help="made-up words drawn")
    p.add_argument("--space-seed", type=int, default=0, help="seed of the made-up word draw")
    p.add_argument("--scoring", choices=["auto", "logprobs", "words"], default="auto")
    p.add_argument(
        "--threshold",
        type=unit_interval,
        help="score at which a candidate is flagged (default 0.5 scored by words, 0.3 by logprobs)",
    )
    p.add_argument(
        "--min-share", type=unit_interval, default=0.5, help="share of prompts the score must hold on"
    )
    p.add_argument(
        "--screen-threshold",
        type=unit_interval,
        help="screening score to go further (default: half the threshold)",
    )
    p.add_argument("--screen-prompts", type=positive_int, default=2, help="prompts a screen asks on")
    p.add_argument("--confirm-prompts", type=positive_int, default=8, help="prompts a finalist is asked on")
    p.add_argument("--confirm", type=positive_int, default=16, help="finalists confirmed at most")
    p.add_argument("--group-size", type=positive_int, default=8, help="one-word candidates screened together")
    p.add_argument(
        "--controls", type=positive_int, default=2, help="control insertions per prompt and length"
    )
    p.add_argument("--state", help="JSONL of answered requests: reused by a rerun, appended to")
    p.add_argument("--json", dest="json_out", help="write the JSON report here")
    p.add_argument("--plot", help="write a PNG of the ranking here (needs matplotlib)")
    p.add_argument("--top", type=positive_int, default=20, help="rows of the table")
    p.add_argument("--progress", choices=["auto", "always", "never"], default="auto")


def _space(args: argparse.Namespace) -> list[Candidate]:
    families = (
        () if args.families == "none" else tuple(f.strip() for f in args.families.split(",") if f.strip())
    )
    extra = load_candidates(args.candidates) if args.candidates else []
    return build_space(SpaceOptions(families, args.made_up, args.space_seed), extra)


def _settings(args: argparse.Namespace) -> ProbeSettings:
    return ProbeSettings(
        threshold=args.threshold,
        screen_threshold=args.screen_threshold,
        min_share=args.min_share,
        screen_prompts=args.screen_prompts,
        confirm_prompts=args.confirm_prompts,
        confirm=args.confirm,
        group_size=args.group_size,
        controls=args.controls,
        scoring=args.scoring,
    )


async def _run(
    args: argparse.Namespace, prompts: list[str], space: list[Candidate], key: str | None
) -> ProbeReport:
    options = ClientOptions(
        upstream=args.upstream,
        model=args.model,
        api=args.api,
        max_tokens=args.max_tokens,
        seed=args.seed,
        budget=args.budget,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        api_key=key,
        state=Path(args.state) if args.state else None,
    )
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    progress = _Progress(show, args.budget)
    async with ProbeClient(options) as client:
        try:
            report = await run_probe(client, prompts, space, _settings(args), progress)
        finally:
            progress.close()
    return report


def _write(args: argparse.Namespace, report: ProbeReport) -> int:
    print(table(report, args.top))
    if args.json_out:
        extra = {"upstream": args.upstream, "model": args.model, "api": args.api}
        Path(args.json_out).write_bytes(orjson.dumps(report_json(report, extra), option=orjson.OPT_INDENT_2))
    if args.plot:
        plot_report(report, args.plot, args.top)
    return 1 if report.flagged else 0


def run_probe_command(args: argparse.Namespace) -> int:
    try:
        prompts = load_prompts(args.prompts)
        space = _space(args)
    except (PromptFileError, CandidateFileError, ValueError) as exc:
        print(f"{_NAME}: {exc}", file=sys.stderr)
        return 2
    if not space:
        print(f"{_NAME}: the candidate space is empty (--families none and no --candidates)", file=sys.stderr)
        return 2
    if args.plot and not plotting.plot_available():
        print(f"{_NAME}: {plotting.PLOT_MISSING}", file=sys.stderr)
        return 2
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            print(f"{_NAME}: ${args.api_key_env} is not set", file=sys.stderr)
            return 2
    try:
        return _write(args, asyncio.run(_run(args, prompts, space, key)))
    except UpstreamDownError as exc:
        print(f"{_NAME}: upstream failed: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{_NAME}: {exc}", file=sys.stderr)
        return 2
