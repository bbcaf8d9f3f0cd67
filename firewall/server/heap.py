"""Keep the cyclic garbage collector off the objects that live as long as the process.

After start-up the heap holds tens of thousands of long-lived objects (modules,
the validated config, detector tables and models). Request handling allocates
many short-lived containers, and every few hundred of them the collector runs;
each full collection walks the whole heap again (about 13 ms with the default
detectors loaded), for objects that never become garbage. ``gc.freeze()`` moves
everything alive now into a permanent generation that collections skip.

Frozen objects are still freed by reference counting, but cycles among them are
not collected until they are unfrozen. A reload therefore calls
:func:`freeze_long_lived` again once the previous runtime is closed: unfreeze,
collect (the old runtime's cycles go), freeze what is left.
"""

from __future__ import annotations

import gc
import logging
import time

__all__ = ["freeze_long_lived"]

log = logging.getLogger("trigger_firewall.heap")


def freeze_long_lived() -> None:
    """Collect once, then exempt every surviving object from later collections."""
    t0 = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.debug(
        "heap frozen",
        extra={"objects": gc.get_freeze_count(), "seconds": round(time.perf_counter() - t0, 4)},
    )
