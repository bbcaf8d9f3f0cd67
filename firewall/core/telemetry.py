"""What detectors and batchers may report, as a protocol the metrics registry satisfies.

Detectors sit below the observability layer: they must not import the Prometheus
registry, yet their micro-batchers and upstream probes are what an SRE needs to
see on ``/metrics``. This protocol is the seam. The runtime hands each detector the
server's :class:`~firewall.observability.metrics.Metrics` (which implements every
method here) or ``None`` offline.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

__all__ = ["DetectorTelemetry"]


class DetectorTelemetry(Protocol):
    """The metric calls a detector's batcher and probes make; all labelled by detector name."""

    def prepare_batcher(self, detector: str) -> None:
        """Create the batcher's series at zero, so dashboards show them before traffic."""

    def observe_batch_start(self, detector: str, size: int, waits: Iterable[float]) -> None:
        """A batch of ``size`` items left the queue; ``waits`` are their seconds queued."""

    def observe_batch_run(self, detector: str, seconds: float) -> None:
        """A batch function ran for ``seconds``."""

    def set_batch_queue_depth(self, detector: str, depth: int) -> None:
        """Items waiting in the batcher's queue now."""

    def count_batch_shed(self, detector: str) -> None:
        """An item was refused because the queue was full."""

    def prepare_probes(self, detector: str) -> None:
        """Create the upstream-probe outcome series at zero."""

    def observe_probe(self, detector: str, seconds: float) -> None:
        """How long one probe took, from sending it to reading its answer (or its failure)."""

    def count_probes(self, detector: str, outcome: str, n: int = 1) -> None:
        """``n`` upstream probes ended with ``outcome``."""

    def prepare_candidates(self, detector: str) -> None:
        """Create a behavioural detector's candidate-outcome series at zero."""

    def count_candidates(self, detector: str, outcome: str, n: int = 1) -> None:
        """``n`` suspected spans were judged with ``outcome`` (confirmed, cleared, ...)."""

    def prepare_shared_memory(self, detector: str) -> None:
        """Create a detector's shared-memory error series (write, sync) at zero."""

    def count_shared_memory_error(self, detector: str, operation: str) -> None:
        """A write to or a sync from a detector's shared store failed or timed out."""
