"""What a detector remembers about segments it has seen, keyed by a hash of their text.

Chat clients resend the system prompt and the whole history with every turn, so most of
a request's segments were screened before. A detector whose verdict on a segment is a
pure function of its text (and a few small inputs, such as a budget) can remember the
result and skip the work. The key is a BLAKE2b of the text under a random per-instance
key, 16 bytes: the text itself is never held, and without the key nobody can craft a
text that collides with one already remembered. The memory is bounded: when it is full
it is cleared, which costs one re-analysis per segment and no bookkeeping per hit.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["SegmentMemory"]

V = TypeVar("V")


class SegmentMemory(Generic[V]):
    """A bounded map from (keyed text hash, extra key parts) to a detector's result."""

    __slots__ = ("_entries", "_key", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._key = secrets.token_bytes(16)
        self._entries: dict[Hashable, V] = {}

    def digest(self, text: str) -> bytes:
        """The keyed 16-byte hash that stands for ``text``."""
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), key=self._key, digest_size=16).digest()

    def get(self, key: Hashable) -> V | None:
        return self._entries.get(key)

    def put(self, key: Hashable, value: V) -> None:
        if len(self._entries) >= self.limit:
            self._entries.clear()
        self._entries[key] = value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
