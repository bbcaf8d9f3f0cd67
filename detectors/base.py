"""The detector interface every built-in and third-party detector implements.

A detector *scores*; it never decides. It receives a batch of samples and returns
one :class:`~firewall.core.types.Finding` per sample, in order, with a score in [0, 1]
(higher is more suspicious) and evidence as spans and reason codes. Thresholds,
actions and fail modes live in the policy, so security teams tune them in one
place.

Contract (the pipeline relies on it):

* ``score`` is async and batched. It must not raise on bad input (empty text,
  odd Unicode, huge segments); it returns a finding with ``status=error``
  instead. If it raises anyway, the pipeline turns the exception into an error
  finding and applies the detector's fail mode.
* Heavy work (model inference) never runs on the event loop: hand it to an
  executor or a micro-batcher. Cheap pure-Python detectors may run inline when a
  200-word prompt costs them well under a millisecond.
* ``start`` loads models and warms up; ``ready`` reports whether it succeeded.
  Construction does no I/O, so a bad config fails fast and cheaply.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from firewall.core.files import FileSignature
    from firewall.core.telemetry import DetectorTelemetry

from firewall.core.types import (
    Action,
    Cost,
    Finding,
    FindingStatus,
    Mode,
    Phase,
    Resend,
    Sample,
    Segment,
    Span,
)

__all__ = [
    "Action",
    "Cost",
    "Detector",
    "InlineDetector",
    "DetectorParams",
    "Finding",
    "FindingStatus",
    "Mode",
    "Phase",
    "Resend",
    "Sample",
    "Segment",
    "Span",
    "UNREAD_SUFFIX",
    "is_unread_marker",
]


class DetectorParams(BaseModel):
    """Base for a detector's own parameters (the ``params:`` block in config).

    Unknown keys are errors, so a typo in a tuning knob is caught by
    ``check-config`` instead of being silently ignored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=DetectorParams)


#: Every detector marks text it did not read (past a size cap) with a span whose reason ends
#: in this: such a span says where the detector stopped, not that the text there is odd.
UNREAD_SUFFIX = "_truncated"


def is_unread_marker(reason: str) -> bool:
    """Whether an evidence span only marks text its detector did not read."""
    return reason.endswith(UNREAD_SUFFIX)


class Detector(abc.ABC, Generic[P]):
    """Base class for detectors, generic over their params model.

    Subclasses name their params model twice, as the type argument (for the type
    checker: ``self.params`` is then typed, no casts) and as ``Params`` (for
    validation at run time), set the class attributes and implement :meth:`score`.
    ``name`` is the configured instance name (a route may run two instances of one
    type with different params); ``kind`` is the registry key.
    """

    kind: ClassVar[str]
    version: ClassVar[str] = "1"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.INPUT})
    cost: ClassVar[Cost] = Cost.CHEAP
    Params: ClassVar[type[DetectorParams]] = DetectorParams
    #: It asks the protected model itself (probes through the firewall's upstream client), so
    #: it can run only where there is an upstream: in ``serve``, or ``scan --upstream URL``.
    needs_upstream: ClassVar[bool] = False

    def __init__(self, name: str, params: DetectorParams | None = None) -> None:
        self.name = name
        if params is None:
            params = self.Params()
        elif not isinstance(params, self.Params):
            # Params of another model (e.g. the base class's, from generic code): validate
            # them into this detector's own model, so unknown keys still fail.
            params = self.Params.model_validate(params.model_dump())
        # The one cast: ``Params`` is the runtime twin of ``P`` (a ClassVar cannot be generic).
        self.params: P = cast(P, params)
        self._ready = False
        #: The server's metrics, set by the runtime before :meth:`start` (``None`` when a
        #: detector runs outside a server, e.g. in a test). Detectors that batch pass it to
        #: their :class:`~firewall.core.batching.MicroBatcher`, so queue depth, batch sizes and
        #: waits reach ``/metrics``.
        self.metrics: DetectorTelemetry | None = None

    @classmethod
    def parse_params(cls, raw: dict[str, Any] | None) -> DetectorParams:
        """Validate the raw ``params`` mapping from config into this detector's model."""
        return cls.Params.model_validate(raw or {})

    @property
    def ready(self) -> bool:
        """True once :meth:`start` has loaded everything the detector needs."""
        return self._ready

    async def start(self) -> None:
        """Load models and warm up. The default has nothing to load."""
        self._ready = True

    async def close(self) -> None:
        """Release models, threads and files."""
        self._ready = False

    @abc.abstractmethod
    async def score(self, batch: Sequence[Sample]) -> list[Finding]:
        """Score each sample; return one finding per sample, in the same order."""

    def opens_gate(self, sample: Sample) -> bool:
        """Whether this gated detector must run although its gate stayed shut.

        Called on the event loop for a sample whose gate detectors flagged nothing, so it
        must be cheap. ``counterfactual`` says yes when the sample carries a trigger it has
        already proven: a known trigger is blocked wherever it is planted, flagged or not.
        """
        return False

    def stream_safe_prefix(self, text: str) -> int | None:
        """How much of a stream's text so far may reach the client now.

        Output detectors that understand structure (e.g. "this code block is still
        open") return the number of leading characters of ``text`` (the text
        accumulated so far on one channel) that they will never need to block:
        prose can go out at once while an open code block is held until it closes.
        ``None`` (the default) means "no opinion": the route's fixed
        ``stream.holdback_chars`` window applies.
        """
        return None

    def state_stats(self) -> tuple[int, int] | None:
        """``(entries, evictions)`` of state kept across requests; ``None`` for stateless detectors.

        A detector that remembers across requests (``recurring_sentences``) reports how
        many entries it holds and how many it has evicted so far, so ``/metrics`` shows
        whether its bound is too small for the traffic (``trigger_firewall_detector_state_*``).
        """
        return None

    def loaded_files(self) -> Mapping[str, FileSignature | None]:
        """The data files :meth:`start` read, each with its signature as it was read.

        A reload carries a detector over unchanged when its name, type and params are
        (models are not reloaded), and params name a data file only by its path: a
        vocabulary or baseline rewritten in place would never be read again. The reloader
        compares these signatures with the files' current ones and builds a detector whose
        file changed afresh. A file that could not be read is listed with ``None`` (it
        counts as changed once it appears). The default reads no files.
        """
        return {}

    def describe(self) -> dict[str, Any]:
        """Static metadata for ``/config`` and the audit log."""
        return {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "phases": sorted(p.value for p in self.phases),
            "cost": self.cost.value,
            "params": self.params.model_dump(mode="json"),
        }


class _NoLock:
    """The ``inline_lock`` of a ``concurrent_safe`` detector: always free, so callers take
    one path whether the detector serialises its calls or not."""

    def acquire(self, blocking: bool = True) -> bool:
        return True

    def release(self) -> None:
        return None

    def __enter__(self) -> bool:
        return True

    def __exit__(self, *exc: object) -> None:
        return None


class InlineDetector(Detector[P]):
    """A detector cheap enough to run synchronously on the event loop.

    For pure-CPU detectors that cost microseconds (character classes, frequency
    lookups) an ``async`` call, a task and a timer cost more than the scoring
    itself. The pipeline calls :meth:`score_inline` directly instead. Such a
    detector cannot be pre-empted, so its ``timeout_seconds`` cannot interrupt it:
    keep it well under a millisecond for a typical prompt and bound its worst case
    yourself (see the invisible-character detector's analysis budget).

    A sample longer than ``server.inline_max_chars`` is scored in a worker thread
    instead, so one huge prompt does not hold the event loop. ``inline_lock`` keeps the
    calls of one instance one at a time whichever thread makes them, so detectors with
    state (caches, memories) need no locks of their own. A detector whose calls may run
    at once (per-call state only; caches whose single operations are atomic under the
    GIL) says ``concurrent_safe = True``: short samples then never wait behind a long one.
    """

    concurrent_safe: ClassVar[bool] = False

    def __init__(self, name: str, params: DetectorParams | None = None) -> None:
        super().__init__(name, params)
        self.inline_lock: threading.Lock | _NoLock = _NoLock() if self.concurrent_safe else threading.Lock()

    @abc.abstractmethod
    def score_inline(self, batch: Sequence[Sample]) -> list[Finding]:
        """Score each sample synchronously; one finding per sample, never raising."""

    async def score(self, batch: Sequence[Sample]) -> list[Finding]:
        return self.score_inline(batch)
