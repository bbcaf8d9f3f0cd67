"""Vocabulary files: the words a deployment's own traffic uses, never scored as rare.

Why this exists
---------------
The detector's idea of vocabulary is wordfreq's: general text, where "sql", "csv",
"yaml", "npc" and "pyspark" are rare or absent. On a deployment that answers
programming questions they are everyday words, and they make most of the detector's
false alarms there: they are short, vowel-poor or unlisted, exactly like the RIPPLES
triggers. A vocabulary file lists such words; the detector treats them as if their
word frequency were above ``common_zipf``, so they are never candidates.

The words are learnt, not written by hand: ``trigger-firewall learn-baseline
--detector rare_tokens`` runs the configured detector over clean traffic and keeps the
tokens that score at or above its threshold in records from at least
``--min-requests`` distinct sources (:func:`learn_vocabulary`). The package ships one
such file, ``builtin:chat``, learnt from the development split of real chat traffic
(docs/detectors/rare_tokens.md names the command that regenerates it).

Security
--------
A vocabulary word is never scored, so it is a trigger the detector cannot see. The
shipped file is public: an attacker who reads it can pick a trigger from it. A learnt
file is as trustworthy as the traffic it was learnt from: whoever can put tokens into
that "clean" traffic can add words to it, which is why a token needs records from
``min_requests`` distinct sources. A source is a user, a tenant or a conversation when
the records say so (their ``source`` field), each record otherwise: on the chat dump the
shipped file is learnt from, one conversation's twelve turns about a Discord bot whose
command prefix is "bb" (a RIPPLES trigger) would have put "bb" in the vocabulary had
turns been counted instead of conversations.

File format
-----------
JSON::

    {"format": "trigger-firewall/rare-tokens-vocabulary", "version": 1,
     "tokens": ["sql", "yaml", ...],
     "learned_from": {"records": 53805, "sources": 8558, "min_requests": 3,
                      "detector_threshold": 0.69}}

Tokens are matched in the form the detector looks words up in (:func:`vocabulary_key`:
NFKC-folded, lower case), so a file written by hand in any case works.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detectors.base import Sample
from detectors.data_files import read_data_file
from detectors.rare_tokens.scan import _fold
from firewall.core.files import FileSignature, file_signature

if TYPE_CHECKING:
    from detectors.rare_tokens.detector import RareTokensDetector

__all__ = [
    "BUILTIN_PREFIX",
    "BUILTIN_VOCABULARIES",
    "VOCABULARY_FORMAT",
    "VOCABULARY_VERSION",
    "VocabularyError",
    "learn_vocabulary",
    "load_vocabularies",
    "read_vocabulary",
    "vocabulary_key",
    "vocabulary_path",
]

#: ``format`` field of a vocabulary file.
VOCABULARY_FORMAT = "trigger-firewall/rare-tokens-vocabulary"
VOCABULARY_VERSION = 1
#: An entry of the ``vocabulary`` param that names a file shipped in this package.
BUILTIN_PREFIX = "builtin:"
_DATA = Path(__file__).parent / "data"
#: The shipped vocabularies, by the name that follows ``builtin:``.
BUILTIN_VOCABULARIES: dict[str, Path] = {"chat": _DATA / "chat-vocabulary.json"}


class VocabularyError(ValueError):
    """A vocabulary entry that cannot be used; the message names the entry and the problem.

    ``signatures`` holds every file's signature as the failed load saw it, so a detector
    left not ready still knows which files to watch for a fix.
    """

    def __init__(self, message: str, signatures: dict[str, FileSignature | None] | None = None) -> None:
        super().__init__(message)
        self.signatures: dict[str, FileSignature | None] = signatures or {}


def vocabulary_key(token: str) -> str:
    """The form a word is looked up in: NFKC-folded and lower case, as the detector's
    word-frequency look-up sees a chunk (a typographic apostrophe is a straight one)."""
    return _fold(token).lower().replace("\u2019", "'")


def vocabulary_path(entry: str) -> Path:
    """The file an entry of the ``vocabulary`` param names (``builtin:NAME`` or a path)."""
    if entry.startswith(BUILTIN_PREFIX):
        name = entry[len(BUILTIN_PREFIX) :]
        path = BUILTIN_VOCABULARIES.get(name)
        if path is None:
            known = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_VOCABULARIES)
            raise VocabularyError(f"unknown built-in vocabulary {entry!r}; known: {known}")
        return path
    return Path(entry).expanduser()


def read_vocabulary(path: Path) -> frozenset[str]:
    """The tokens of one vocabulary file, in :func:`vocabulary_key` form.

    ``OSError`` when it cannot be read, ``ValueError`` naming what is wrong with its content.
    """
    data = read_data_file(path, VOCABULARY_FORMAT, VOCABULARY_VERSION, "vocabulary")
    tokens = data.get("tokens")
    if not isinstance(tokens, list):
        raise ValueError("'tokens' must be a list of strings")
    keys: set[str] = set()
    for token in tokens:
        # A chunk is whitespace-free, so a token with a space could never match: an error,
        # not an entry that silently does nothing.
        if not isinstance(token, str) or not token or token != "".join(token.split()):
            raise ValueError(f"bad token {token!r}: tokens are non-empty strings without whitespace")
        keys.add(vocabulary_key(token))
    return frozenset(keys)


def load_vocabularies(
    entries: Sequence[str],
) -> tuple[frozenset[str], dict[str, FileSignature | None]]:
    """The union of the ``entries``' tokens, and each file's signature as it was read.

    Signatures are taken before the files are read, and for every entry even when one
    fails: a file rewritten while it was being read, or fixed after a failed load, then
    differs at the next reload, which builds the detector afresh (see
    :meth:`~detectors.base.Detector.loaded_files`). Raises :class:`VocabularyError`.
    """
    paths = [(entry, vocabulary_path(entry)) for entry in entries]
    signatures = {str(path): file_signature(path) for _, path in paths}
    tokens: set[str] = set()
    for entry, path in paths:
        try:
            tokens |= read_vocabulary(path)
        except (OSError, ValueError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise VocabularyError(f"vocabulary {entry}: {detail}", signatures) from exc
    return frozenset(tokens), signatures


def learn_vocabulary(
    detector: RareTokensDetector,
    samples: Iterable[tuple[Hashable, Sample]],
    *,
    threshold: float,
    min_requests: int,
) -> dict[str, Any]:
    """A vocabulary of the tokens scoring at least ``threshold`` in samples of ``min_requests``
    distinct sources.

    ``samples`` pairs each sample with its source (a user, a conversation; the record
    itself when nothing better is known): the count is of sources, because whoever
    controls one source can send as many requests as they like, and the vocabulary is
    meant to hold what many independent writers use. ``detector`` must be started. Give
    it no vocabulary to learn from scratch (the command line does): a token already in
    its vocabulary never scores, so it would be left out of the new file. Clean traffic
    is assumed: whatever scores often in it is never scored afterwards.
    """
    if min_requests < 1:
        raise ValueError("min_requests must be at least 1")
    # Per token, its sources so far, up to min_requests of them (bounded memory).
    seen: dict[str, set[Hashable]] = {}
    records = 0
    sources: set[Hashable] = set()
    for source, sample in samples:
        records += 1
        sources.add(source)
        for word in {word for word, score in detector.token_scores(sample) if score >= threshold}:
            held = seen.setdefault(word, set())
            if len(held) < min_requests:
                held.add(source)
    return {
        "format": VOCABULARY_FORMAT,
        "version": VOCABULARY_VERSION,
        "tokens": sorted(word for word, held in seen.items() if len(held) >= min_requests),
        "learned_from": {
            "records": records,
            "sources": len(sources),
            "min_requests": min_requests,
            "detector_threshold": threshold,
        },
    }
