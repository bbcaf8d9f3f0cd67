"""``trigger-firewall learn-baseline``: what clean traffic normally holds, for a detector to excuse.

A detector that remembers sentences across requests (``recurring_sentences``)
flags prompt templates too: they recur across unrelated prompts by design. This
command runs clean traffic (records in the format ``scan`` reads) through a
fresh instance configured exactly as in the firewall config, so the baseline is
learnt with the same roles, word minimum and context rule the proxy will use,
and writes the baseline file that the detector's ``baseline`` param points at.

Pointed at a ``rare_tokens`` detector (``--detector NAME``), it learns that
detector's vocabulary instead: the deployment's own jargon ("sql", "yaml",
"pyspark") is where its false alarms on real traffic come from. The detector runs
with its configured params but *no* vocabulary, so the file is learnt from scratch
and stands on its own (list it beside ``builtin:chat`` or instead of it), and every
token that scores at or above the detector's configured threshold in records of at
least ``--min-requests`` distinct sources is written. A record's source is its
``source`` field (a user, a tenant, a conversation) or, without one, the record
itself. Sources, not records or occurrences, are counted so that whoever can slip
text into the "clean" traffic needs that many identities to add a word (see
docs/detectors/rare_tokens.md).

Exit status: 0 on success; 2 on bad arguments, an unreadable input or config, or
a config without such a detector.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Hashable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from firewall.cli.args import positive_int

if TYPE_CHECKING:
    from firewall.config.schema import DetectorConfig, FirewallConfig
    from firewall.core.types import Sample

__all__ = ["add_baseline_parser", "run_learn_baseline"]

_PROG = "trigger-firewall learn-baseline"
_KIND = "recurring_sentences"
_VOCABULARY_KIND = "rare_tokens"
_MIN_REQUESTS = 3


def add_baseline_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``learn-baseline`` subcommand to the CLI's subparsers."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "learn-baseline",
        help="learn the recurring sentences (templates) of clean traffic for recurring_sentences, "
        "or the vocabulary of a rare_tokens detector",
        description="Reads clean JSONL records (the format `scan` reads: 'text' or an OpenAI "
        "'request' body), splits them into sentences as the recurring_sentences detector "
        "configured in --config does, and writes a baseline of the sentences seen in at least "
        "its fire_after distinct requests. Point the detector's `baseline` param at the file. "
        "The file holds the hash key, so whoever has it can confirm a guessed template sentence: "
        "keep it as private as your templates. See docs/detectors/recurring_sentences.md. "
        "With --detector naming a rare_tokens detector (`--detector rare_tokens` with the built-in "
        "defaults), it instead runs that detector without a vocabulary and writes the tokens scoring "
        "at or above its threshold in records of at least --min-requests distinct sources (a record's "
        "'source' field: a user, a conversation; the record itself without one), for its `vocabulary` "
        "param (see docs/detectors/rare_tokens.md).",
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
        help="detector instance name in the config (default: the config's one recurring_sentences); "
        "a rare_tokens detector learns a vocabulary",
    )
    parser.add_argument(
        "--route", help="route whose protocol reads 'request' records (default: chat_completions)"
    )
    parser.add_argument(
        "--min-requests",
        type=positive_int,
        metavar="N",
        help=f"rare_tokens only: distinct sources (records sharing a 'source' field count once) a token "
        f"must score in to be written (default {_MIN_REQUESTS}); refused for recurring_sentences, whose "
        "fire_after param decides",
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
    vocabulary_for = _vocabulary_detector(config, args.detector)
    if vocabulary_for is None and args.min_requests is not None:
        print(
            f"{_PROG}: --min-requests applies to rare_tokens detectors only ({_KIND} learns the "
            "sentences seen in its fire_after distinct requests)",
            file=err,
        )
        return 2
    params: dict[str, Any] = {}
    if vocabulary_for is None:
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
        if vocabulary_for is not None:
            data = _learn_vocabulary(vocabulary_for, samples, args.min_requests or _MIN_REQUESTS)
        else:
            data = learn_baseline(
                (sample for _, sample in samples),
                RecurringSentencesParams.model_validate(params),
                source=args.file,
            )
    except (OSError, UnicodeDecodeError, ValueError, RuntimeError) as exc:
        print(f"{_PROG}: {args.file}: {exc}", file=err)
        return 2
    Path(args.output).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    if vocabulary_for is not None:
        learned = data["learned_from"]
        print(
            f"{len(data['tokens'])} vocabulary tokens (scoring at least {learned['detector_threshold']} "
            f"in records of {learned['min_requests']} or more sources) from {learned['records']} records "
            f"of {learned['sources']} sources written to {args.output}",
            file=err,
        )
        return 0
    learned = data["learned"]
    print(
        f"{len(data['hashes'])} recurring sentences from {learned['records']} records written to "
        f"{args.output} (the file holds its hash key: keep it as private as your templates)",
        file=err,
    )
    return 0


def _vocabulary_detector(config: FirewallConfig, name: str | None) -> DetectorConfig | None:
    """The rare_tokens detector ``--detector`` names, if it names one (never by default:
    without ``--detector`` the command keeps learning a recurring_sentences baseline)."""
    if name is None:
        return None
    return next((d for d in config.detectors if d.name == name and d.kind == _VOCABULARY_KIND), None)


def _learn_vocabulary(
    det: DetectorConfig, samples: Iterable[tuple[Hashable, Sample]], min_requests: int
) -> dict[str, Any]:
    """Run ``det`` as configured but without a vocabulary over ``samples``; the file's content.

    The threshold is the detector's own (``threshold`` in its config entry): the tokens
    written are exactly those that would have fired it. Its vocabulary is cleared, so
    the file is learnt from scratch rather than topping up the vocabularies it lists.
    """
    import asyncio

    from detectors.rare_tokens.detector import RareTokensDetector
    from detectors.rare_tokens.vocabulary import learn_vocabulary

    params = RareTokensDetector.parse_params({**det.params, "vocabulary": []})
    detector = RareTokensDetector(det.name, params)
    asyncio.run(detector.start())  # RuntimeError when wordfreq is missing
    try:
        return learn_vocabulary(detector, samples, threshold=det.threshold, min_requests=min_requests)
    finally:
        asyncio.run(detector.close())


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


def _samples(
    path: str, config: FirewallConfig, route: str | None, err: IO[str]
) -> Iterator[tuple[Hashable, Sample]]:
    """The records as input samples, as the proxy would extract them, each with its source
    (the record's ``source`` field, else its line); bad lines reported, skipped."""
    from firewall.core.types import Phase, Sample
    from firewall.offline.scanning import RecordError, Scanner

    scanner = Scanner(config, route=route)
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    try:
        for line_no, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                segments = scanner.segments(record, Phase.INPUT)
            except (json.JSONDecodeError, RecordError) as exc:
                print(f"{path}:{line_no}: skipped: {exc}", file=err)
                continue
            source = record.get("source")
            # Tagged, so that a 'source' value never meets a line number by accident.
            key = ("source", source) if isinstance(source, str) and source else ("line", line_no)
            yield key, Sample(str(line_no), Phase.INPUT, scanner.route.config.name, tuple(segments))
    finally:
        if stream is not sys.stdin:
            stream.close()
