"""The heap freeze: survivors leave the collector's view, and a second freeze reclaims old cycles."""

from __future__ import annotations

import gc
import weakref

from firewall.server.heap import freeze_long_lived


class _Node:
    """A container that can reference itself (a reference cycle)."""

    def __init__(self) -> None:
        self.me: _Node | None = None


def test_frozen_cycles_survive_collection_until_the_next_freeze() -> None:
    try:
        node = _Node()
        node.me = node  # a cycle: only the cyclic collector can free it
        alive = weakref.ref(node)
        freeze_long_lived()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert alive() is not None, "a frozen object must be skipped by collections"
        freeze_long_lived()  # what a reload does once the old runtime is closed
        assert alive() is None, "unfreezing before the collect must reclaim the dead cycle"
    finally:
        gc.unfreeze()


def test_objects_created_after_a_freeze_are_collected_as_usual() -> None:
    try:
        freeze_long_lived()
        node = _Node()
        node.me = node
        alive = weakref.ref(node)
        del node
        gc.collect()
        assert alive() is None
    finally:
        gc.unfreeze()
