"""One keyed key per text, shared by every detector that remembers what it has seen.

Detectors remember results per segment text (``detectors/segment_memory.py``,
``recurring_sentences``' analysis cache), keyed by a hash of the text so that the text
itself is never held. The key must be unpredictable: an attacker who could make a
triggered text collide with a remembered clean one would have it waved through unread.

Python's own string hash already is such a key. It is SipHash-1-3 under a random 128-bit
key drawn when the interpreter starts, and a string computes it once and keeps it, so
the second and third detector to look up the same segment get it for free; a keyed
BLAKE2b per detector and segment cost about 7% of the proxy's instructions per request
(``loadtests/bench_instructions.py``). Its 64 bits leave a blind guess no chance: with
4,096 remembered segments, 10^9 attempts collide with probability about 2 x 10^-7.

That holds only while the interpreter's key is secret. ``PYTHONHASHSEED`` set to a number
fixes it (``0`` switches hashing off altogether), and anyone who reads the deployment's
environment can then compute collisions. In that case, and only then, ``text_key`` is
a BLAKE2b under a random key of this process, as before.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
from collections.abc import Callable
from typing import Final

__all__ = ["SECRET_STRING_HASH", "text_key"]


def _string_hash_is_secret() -> bool:
    """The interpreter drew its string-hash key at random (``PYTHONHASHSEED`` unset or ``random``)."""
    if not sys.flags.hash_randomization:
        return False
    if sys.flags.ignore_environment:  # -E / -I: the variable was not read
        return True
    return os.environ.get("PYTHONHASHSEED", "random") in ("", "random")


SECRET_STRING_HASH: Final = _string_hash_is_secret()
_KEY: Final = secrets.token_bytes(16)


def _blake2b_key(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), key=_KEY, digest_size=16).digest()
    return int.from_bytes(digest, "little")


#: The key that stands for ``text`` in a detector's memory (an ``int``; see the module docstring).
text_key: Final[Callable[[str], int]] = hash if SECRET_STRING_HASH else _blake2b_key
