"""What a detector remembers about segments it has seen, keyed by a hash of their text.

Chat clients resend the system prompt and the whole history with every turn, so most of
a request's segments were screened before. A detector whose verdict on a segment is a
pure function of its text (and a few small inputs, such as a budget) can remember the
result and skip the work. The key is the text's ``firewall.core.text_keys.text_key``, a
hash under a key secret to the process that every detector shares (the string caches
it, so only the first detector to look pays): the text itself is never held, and nobody
can craft a text that collides with one already remembered. The memory is bounded: when
it is full it is cleared, which costs one re-analysis per segment and no bookkeeping per
hit.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from firewall.core.text_keys import text_key

__all__ = ["SegmentMemory"]

V = TypeVar("V")


class SegmentMemory(Generic[V]):
    """A bounded map from (keyed text hash, extra key parts) to a detector's result."""

    __slots__ = ("_entries", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: dict[Hashable, V] = {}

    @staticmethod
    def digest(text: str) -> int:
        """The keyed hash that stands for ``text`` (``text_key``)."""
        return text_key(text)

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
