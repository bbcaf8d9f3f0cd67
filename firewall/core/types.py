"""Value types shared by the proxy, the pipeline, the policy and the detectors.

Everything here is immutable (slotted dataclasses that the type checker holds
frozen, see :mod:`firewall.core.values`) because one request's sample and findings
are read from several places (policy, metrics, audit log) and must never change
under them. Detectors import these names through
``detectors.base``; third-party detectors should do the same.

Evidence is always *positions and codes*, never text: a :class:`Span` names the
segment and the character offsets inside it, and a reason code such as
``"zero_width_run"``. The audit log can then be shipped to a SIEM without carrying
the prompt.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any, Literal

from firewall.core.values import value_type

__all__ = [
    "Action",
    "BlockKind",
    "Cost",
    "Finding",
    "FindingStatus",
    "Mode",
    "Phase",
    "Resend",
    "Sample",
    "Segment",
    "Span",
    "Verdict",
]


class Phase(enum.StrEnum):
    """Which side of the exchange a sample comes from."""

    INPUT = "input"
    OUTPUT = "output"


class Mode(enum.StrEnum):
    """How a route applies its verdicts.

    ``enforce`` blocks, ``monitor`` (shadow) only logs what it would have blocked,
    ``off`` skips screening entirely (the request is still forwarded and counted).
    """

    ENFORCE = "enforce"
    MONITOR = "monitor"
    OFF = "off"


class Action(enum.StrEnum):
    """What a detector asks for when its score crosses the threshold.

    ``sanitize`` removes the characters the finding names (its ``remedy``) and
    forwards the rest unchanged. It applies on the input phase to a finding that
    offers a remedy which clears it; anything else that fires with ``sanitize``
    blocks, so the action never lets through what it cannot remove.
    """

    ALLOW = "allow"
    LOG = "log"
    SANITIZE = "sanitize"
    BLOCK = "block"


# Read by Verdict's properties on every request, bound once: on Python 3.11 ``Enum.MEMBER``
# goes through EnumType's __getattr__ hook, about ten times the cost of reading a global.
_SANITIZE, _BLOCK = Action.SANITIZE, Action.BLOCK


class Cost(enum.StrEnum):
    """Cost class used to order the cascade: cheap detectors always run first."""

    CHEAP = "cheap"
    EXPENSIVE = "expensive"


class FindingStatus(enum.StrEnum):
    """Whether a detector produced a score.

    Kept apart from the score on purpose: a timeout is neither "clean" nor
    "suspicious", and the policy decides what it means (fail open or closed).
    ``PARTIAL``: scored on part of the input, the rest being past one of the detector's
    caps; the score is a lower bound. The policy fires on it as on ``OK``; below the
    threshold it applies the fail mode, because the unread rest could hold a trigger.
    """

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"
    PARTIAL = "partial"


#: The statuses whose score means something (:attr:`Finding.scored`), as one set: read for
#: every finding of every request (see ``_SANITIZE`` above on enum member reads).
_SCORED = frozenset({FindingStatus.OK, FindingStatus.PARTIAL})


class BlockKind(enum.StrEnum):
    """Why a request was stopped: a policy decision or a detector failing closed."""

    POLICY = "policy"
    FAIL_CLOSED = "fail_closed"
    #: A detector failing closed because it read only part of the text (past a cap): not
    #: transient, so it is not answered as a retryable 503.
    UNSCREENABLE = "unscreenable"


@value_type
class Segment:
    """One piece of text to screen.

    ``role`` is the chat role (``system``, ``user``, ``assistant``, ``tool``,
    ``developer``) or ``"text"`` for protocols without roles; ``source`` is a JSON
    pointer to where the text sits in the body, so evidence can be traced without
    copying the text.
    """

    role: str
    text: str
    source: str = ""


@value_type
class Resend:
    """A request in its own API, for a detector that asks the model again with a span taken out.

    The screening path sets it on routes whose API is not re-asked as an OpenAI chat or
    completion (:attr:`Sample.reprompt` is ``None``): the Responses and Anthropic APIs, Ollama,
    TGI, llama.cpp's native completion, a generic JSON route. The detector edits a copy of
    ``body`` at a segment's JSON pointer, passes it through ``probe`` and posts it to ``path``
    on the configured upstream (never a host from the request); ``read`` gives the answer's
    text to compare. The callables come from the route's protocol adapter, so a detector needs
    no knowledge of any API.
    """

    #: The path (and query) the request came on; the probe goes to the same route upstream.
    path: str
    #: The parsed request body; never mutated (edits work on a copy).
    body: Any
    #: ``(edited body, max_tokens, seed) -> probe body``: the API's fields that could have
    #: effects or cost (tools, streaming, storage, several answers) taken out, a short
    #: deterministic answer asked for. Raises ``ValueError`` for a body it cannot make safe.
    probe: Callable[[Any, int, int], Any]
    #: ``answer body -> text``: what the model said, in this API's response shape.
    read: Callable[[Any], str]
    #: Whether ``probe`` knows this API (its effects are removed). A generic JSON route's
    #: adapter cannot know which fields have effects: its requests are resent only on routes
    #: the detector is told to resend.
    safe: bool


@value_type
class Sample:
    """Everything a detector sees about one request (or one response) to screen."""

    request_id: str
    phase: Phase
    route: str
    segments: tuple[Segment, ...]
    model: str | None = None
    #: The findings of the detectors that ran before this one (a gated detector runs after
    #: the first stage): the suspicion a behavioural check tests. Empty otherwise.
    evidence: tuple[Finding, ...] = ()
    #: How a detector that asks the model again (``counterfactual``) can do it for this
    #: request's route: ``"chat"``, ``"completions"``, or ``None`` (not at all, or no route).
    reprompt: Literal["chat", "completions"] | None = None
    #: The request in its own API, on routes that are not re-asked as chat or completions.
    resend: Resend | None = None

    @property
    def chars(self) -> int:
        """Total length of all segments, in characters."""
        return sum(len(s.text) for s in self.segments)


@value_type
class Span:
    """Evidence: characters ``[start, end)`` of segment ``segment`` and why."""

    segment: int
    start: int
    end: int
    reason: str
    #: How strong this piece of evidence is on its own (a detector that scores spans one by one
    #: says so; the finding's score is the strongest). ``None``: the detector does not say.
    score: float | None = None
    #: Named numbers behind the score, for the audit line (``counterfactual``: how far removing
    #: the span moved the answer, and how far the most moving control did). Never text.
    measures: tuple[tuple[str, float], ...] = ()

    def as_dict(self) -> dict[str, int | str | float]:
        out: dict[str, int | str | float] = {
            "segment": self.segment,
            "start": self.start,
            "end": self.end,
            "reason": self.reason,
        }
        if self.score is not None:
            out["score"] = round(self.score, 4)
        for name, value in self.measures:
            out[name] = round(value, 4)
        return out


@value_type
class Finding:
    """One detector's result for one sample.

    ``score`` is in [0, 1], higher is more suspicious. ``reasons`` are short,
    stable reason codes; ``spans`` locate the evidence. ``detector`` is the
    configured instance name and is filled in by the pipeline when a detector
    leaves it empty.
    """

    detector: str
    score: float
    status: FindingStatus = FindingStatus.OK
    reasons: tuple[str, ...] = ()
    spans: tuple[Span, ...] = ()
    duration_seconds: float = 0.0
    error: str | None = None
    #: Characters whose removal, everywhere in the request, clears this finding down to
    #: ``residual`` (the score of what removal leaves). Empty: removal cannot help.
    remedy: str = ""
    residual: float = 0.0

    @property
    def scored(self) -> bool:
        """Whether ``score`` means something: ``OK``, or ``PARTIAL`` (a lower bound)."""
        return self.status in _SCORED

    @classmethod
    def failed(cls, detector: str, status: FindingStatus, error: str) -> Finding:
        """A finding for a detector that could not score (error or timeout)."""
        return cls(detector=detector, score=0.0, status=status, error=error)


@value_type
class Verdict:
    """The policy's decision for one phase of one request.

    ``action`` is what the detectors asked for; ``effective_action`` is what the
    proxy does after the route's mode is applied (monitor never blocks).
    ``reason`` is a bounded code such as ``input.invisible_chars.threshold`` and is
    safe as a metric label. ``fired`` lists the detectors over threshold,
    ``fail_open`` those that failed but were allowed through.
    """

    phase: Phase
    mode: Mode
    action: Action
    effective_action: Action
    reason: str
    findings: tuple[Finding, ...] = ()
    fired: tuple[str, ...] = ()
    fail_open: tuple[str, ...] = ()
    block_kind: BlockKind | None = None
    thresholds: Mapping[str, float] = field(default_factory=dict)
    #: What a ``sanitize`` verdict removes before forwarding (the fired findings' remedies).
    remedy: str = ""

    @property
    def would_block(self) -> bool:
        return self.action is _BLOCK

    @property
    def blocks(self) -> bool:
        return self.effective_action is _BLOCK

    @property
    def sanitizes(self) -> bool:
        return self.effective_action is _SANITIZE

    @property
    def scores(self) -> dict[str, float]:
        return {f.detector: f.score for f in self.findings if f.status is FindingStatus.OK}
