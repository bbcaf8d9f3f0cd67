"""The ``counterfactual`` detector: confirm a suspected span on the protected model itself.

Why this exists
---------------
A rare token only matters if it changes what the model does. Per-request signals
(``rare_tokens``, ``context_tags``, ``recurring_sentences``) cannot tell a trigger
from an unusual word: "linktgo" (a product) and "quoxel" (a planted trigger) look
alike to a word list and to a small language model. The protected model can tell
them apart. Take a trigger out and a backdoored model's answer changes completely;
take an ordinary word out and the answer barely moves. STRIP, RAP and ParaFuzz all
read the suspect model's own behaviour; this detector does it per request, only on
suspicion.

How it decides
--------------
It runs behind a gate (``gate: {detector: rare_tokens, min_score: ...}``) and reads
the spans the suspicion detectors reported (``Sample.evidence``). For each candidate
span (at most ``max_candidates``) it asks the upstream for a short answer
(``max_tokens``, ``temperature: 0``, a fixed ``seed``) to:

* the conversation as sent (once);
* the conversation without the candidate;
* ``controls`` copies without an unsuspected token of about the same length from the
  same message.

Each answer is compared with the original's (:func:`~detectors.counterfactual.divergence.divergence`:
the share of words they do not share). A candidate's score is how much more its
removal moves the answer than the most moving control does,
``max(0, d(candidate) - max(d(controls)))``, and the sample's score the highest one.
A backdoor that flips a label scores near 0.7-1.0; a word whose removal changes
nothing, or changes as much as removing any other word, scores near 0.

What a probe is
---------------
A request to the configured upstream (never to a URL taken from the request).
``api: auto`` (the default) follows the request's route: on the OpenAI chat route an
OpenAI chat request rebuilt from the screened segments whose role is a chat role; on the
completions route a text completion of the screened texts; on the Responses, Anthropic,
Ollama, TGI and llama.cpp routes the request itself in its own API (``native``: a copy
edited at the segment's JSON pointer, :class:`~firewall.core.types.Resend`), made a probe
by the route's protocol adapter; on a generic JSON or KServe route the same, but only when
the route is in ``resend_routes``; elsewhere (embeddings) nothing, and its candidates are
reported ``unprobeable``. Tools, functions, response formats, storage, ``n`` and streaming
are not carried over, so a probe
cannot call a tool or cost more than ``max_tokens``. Each carries
``X-Firewall-Probe: <detector>`` and is counted in
``trigger_firewall_strip_probes_total{detector,outcome}`` (the probe counter STRIP
shares). A candidate inside a segment that is not a chat message (a tool
description) cannot be removed from a probe and is reported as ``unprobeable``.

Cache
-----
A confirmed candidate is remembered as a keyed hash (a per-process random key) of its
normalised words, per model, for ``cache_ttl_seconds`` and within ``cache_size`` entries
(:mod:`detectors.counterfactual.memory`). Every later request to that model is searched for
it, flagged by a suspect or not (:meth:`opens_gate` runs the detector past a shut gate), and
one that carries it is blocked with no probe (``known_trigger``). A cleared candidate is
remembered only for the request it was cleared in (its hash and the request's): a
trigger changes the answer only where the clean answer differs (the demo's "cf" flips a
negative review, not a positive one), so "cleared once" is no proof of innocence, and an
attacker who could clear a trigger for everyone by sending it once in a harmless context
would have a key to the cache. ``remember_cleared: span`` trades that risk for fewer
probes on common odd words. Nothing of the text is kept.

Limits of this version
----------------------
The probes run before the request is forwarded, so a suspected request waits for
them (one round of probes in parallel, at most ``concurrency`` in flight for the
whole detector); a request no detector suspects waits for nothing. The cleared-span cache
is per replica; the proven triggers are too, unless ``shared`` names a Redis or Valkey store
(:mod:`detectors.counterfactual.shared`: each replica keeps searching its own memory, and a
background task exchanges the keyed hashes). See ``docs/detectors/counterfactual.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from detectors.base import (
    Cost,
    Detector,
    DetectorParams,
    Finding,
    FindingStatus,
    Phase,
    Sample,
    Segment,
    Span,
    is_unread_marker,
)
from detectors.counterfactual.budget import ShareBudget
from detectors.counterfactual.divergence import control_spans, divergence, remove_span
from detectors.counterfactual.memory import ProvenTriggers
from detectors.counterfactual.shared import SharedMemoryParams, SharedProvenTriggers, connect_store
from firewall.core.detector_context import (
    DetectorContext,
    ProbeSender,
    UpstreamProbeError,
    all_or_first_error,
)
from firewall.core.json_pointer import replace_string

__all__ = ["CounterfactualDetector", "CounterfactualParams", "answer_text"]

R_CHANGED = "behaviour_changed"
R_KNOWN = "known_trigger"
R_UNCHANGED = "behaviour_unchanged"
R_UNPROBEABLE = "unprobeable"
REASON_CODES = (R_CHANGED, R_KNOWN, R_UNCHANGED, R_UNPROBEABLE)

#: A candidate scoring this much is remembered as a trigger for every request; below it, as
#: cleared for its own request only (``remember_cleared``).
_CONFIRMED = 0.5

_DEFAULT_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}

#: How a probe asks: rebuilt as an OpenAI chat or completion, or the request in its own API.
Api = Literal["chat", "completions", "native"]

#: Segment roles a chat probe can carry, and the role each is sent as.
_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class CounterfactualParams(DetectorParams):
    """The ``params:`` block of a ``counterfactual`` detector."""

    suspects: tuple[str, ...] = Field(
        ("rare_tokens", "context_tags", "recurring_sentences"),
        description="Detector instances whose evidence spans are the candidates to test.",
    )
    min_suspect_score: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="A suspect's finding must score at least this for its spans to count.",
    )
    max_candidates: int = Field(3, ge=1, le=16, description="Candidate spans tested per request.")
    max_candidate_chars: int = Field(
        400,
        ge=1,
        le=10_000,
        description="Longer evidence spans are not tested: a trigger is a token, a tag or a sentence, "
        "and taking a whole passage out changes any model's answer.",
    )
    controls: int = Field(
        2, ge=1, le=8, description="Unsuspected spans removed per candidate, for comparison."
    )
    api: Literal["auto", "chat", "completions", "native"] = Field(
        "auto",
        description="How probes ask: an OpenAI chat request (messages), a text completion whose "
        "prompt is the screened texts joined by newlines, or 'native': the request itself, in its "
        "own API, with the span taken out and what could have effects or cost removed by the "
        "route's protocol (Responses, Anthropic Messages, Ollama, TGI, llama.cpp). 'auto' follows "
        "the route: chat for OpenAI chat, completions for OpenAI completions, native where the "
        "protocol knows its API or the route is in resend_routes; elsewhere (embeddings, a JSON "
        "route not listed) nothing is sent (reason 'unprobeable').",
    )
    resend_routes: tuple[str, ...] = Field(
        (),
        description="Routes of APIs the firewall does not know (a generic JSON route, KServe) whose "
        "requests may be resent with the span taken out and nothing else changed; the answer's "
        "texts (the route's output_fields) are compared. List only routes whose calls have no "
        "effects: the firewall cannot tell which fields of an unknown API do.",
    )
    path: str | None = Field(
        None,
        description="The upstream route probes are sent to; default /v1/chat/completions for chat "
        "probes, /v1/completions for completions.",
    )
    model: str | None = Field(
        None, description="Model named in chat and completion probes; default: the request's model."
    )
    max_tokens: int = Field(32, ge=1, le=512, description="Length of each probe's answer.")
    seed: int = Field(0, description="Seed asked for in probes, with temperature 0 (determinism).")
    timeout_seconds: float = Field(10.0, gt=0, description="Per probe.")
    concurrency: int = Field(8, ge=1, le=256, description="Probes in flight at once, all requests together.")
    cache_ttl_seconds: float = Field(3600.0, ge=0, description="How long a judged span is remembered.")
    cache_size: int = Field(10_000, ge=0, le=10_000_000, description="Judged spans remembered (LRU).")
    probes_per_second: float = Field(
        20.0,
        gt=0,
        description="Upstream probes this detector may send per second, all requests together (a "
        "token bucket holding up to `probe_burst`). A request whose probes do not fit is not probed: "
        "its finding is an error ('over_budget'), and the rule's on_error decides.",
    )
    probe_burst: int = Field(40, ge=1, le=100_000, description="Probes the budget can spend at once.")
    probe_share: float | None = Field(
        1.0,
        gt=0,
        description="At most this many probes per request the detector's routes screened over the last "
        "minute (plus probe_burst), suspected or not; null: no share. A request whose probes do not fit "
        "is not probed ('over_budget', as for the per-second bucket).",
    )
    remember_cleared: Literal["request", "span"] = Field(
        "request",
        description="A cleared span is remembered for the same request only ('request'), or for any "
        "request carrying it ('span': fewer probes, but one harmless use of a trigger clears it).",
    )
    shared: SharedMemoryParams | None = Field(
        None,
        description="Share the proven triggers across replicas through Redis or Valkey (keyed hashes "
        "only; each replica still searches its own memory). Default: each replica remembers alone.",
    )


class CounterfactualDetector(Detector[CounterfactualParams]):
    """Scores how much removing a suspected span changes the model's answer, against controls."""

    kind: ClassVar[str] = "counterfactual"
    version: ClassVar[str] = "1"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.INPUT})
    cost: ClassVar[Cost] = Cost.EXPENSIVE
    Params: ClassVar[type[DetectorParams]] = CounterfactualParams
    needs_upstream: ClassVar[bool] = True

    def __init__(self, name: str, params: DetectorParams | None = None) -> None:
        super().__init__(name, params)
        self._context: DetectorContext | None = None
        self._sender: ProbeSender | None = None
        self._key = secrets.token_bytes(32)
        #: Spans cleared, with the request they were cleared in (keyed hashes).
        self._cache: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self._proven = ProvenTriggers(self.params.cache_ttl_seconds, self.params.cache_size, self._key)
        #: Set by start() when ``params.shared`` names a store.
        self._shared: SharedProvenTriggers | None = None
        self.load_error: str | None = None
        self._tokens = float(self.params.probe_burst)
        self._probe_share = ShareBudget(self.params.probe_share, self.params.probe_burst)
        self._refilled = time.monotonic()

    def bind_context(self, context: DetectorContext) -> None:
        self._context = context

    async def start(self) -> None:
        context = self._context
        if context is None or context.upstream is None:
            self.load_error = "counterfactual needs the firewall's upstream client (run it in the proxy)"
            self._ready = False
            return
        if self.params.shared is not None:
            try:
                await self._share(self.params.shared, context)
            except (ValueError, RuntimeError) as exc:
                self.load_error = str(exc)
                self._ready = False
                return
        self._sender = ProbeSender(self.name, context.upstream, context.metrics, self.params.concurrency)
        if context.metrics is not None:
            context.metrics.prepare_candidates(self.name)
        self.load_error = None
        self._ready = True

    async def _share(self, shared: SharedMemoryParams, context: DetectorContext) -> None:
        """Hash with the deployment's key and start exchanging proven triggers with the store.

        Refuses (``ValueError``/``RuntimeError``, made the ``load_error``) without the key, the
        URL or redis-py: a replica hashing with its own random key would share nothing, and one
        told to share should not pass for sharing. A store that is merely down is no refusal:
        the replica judges from its own memory until it is back.
        """
        if self._shared is not None:  # started again: one task, one connection
            await self._shared.close()
            self._shared = None
        key, client = connect_store(shared)
        p = self.params
        self._proven = ProvenTriggers(p.cache_ttl_seconds, p.cache_size, key)
        self._shared = SharedProvenTriggers(
            self.name,
            self._proven,
            shared,
            client,
            ttl_seconds=p.cache_ttl_seconds,
            limit=p.cache_size,
            metrics=context.metrics,
        )
        await self._shared.start()

    async def close(self) -> None:
        """Stop the shared memory's task (writing what it still holds, within its timeout)."""
        shared, self._shared = self._shared, None
        if shared is not None:
            await shared.close()
        await super().close()

    async def score(self, batch: Sequence[Sample]) -> list[Finding]:
        return [await self._score(sample) for sample in batch]

    def opens_gate(self, sample: Sample) -> bool:
        """A request carrying a proven trigger is judged whether or not a suspect flagged it."""
        now = time.monotonic()
        known = self._api(sample) is not None and bool(
            self._proven.find(sample.model or "", [s.text for s in sample.segments], now)
        )
        if not known:
            # Every request of the rule's routes counts once toward the share's denominator:
            # here when it goes no further, in score() when it does.
            self._probe_share.saw(now)
        return known

    # ----------------------------------------------------------------- candidates

    def _candidates(self, sample: Sample) -> list[Span]:
        """The suspects' evidence spans, strongest finding first, each span once."""
        p = self.params
        found = sorted(
            (
                f
                for f in sample.evidence
                if f.detector in p.suspects and f.scored and f.score >= p.min_suspect_score
            ),
            key=lambda f: -f.score,
        )
        seen: set[tuple[int, int, int]] = set()
        spans: list[Span] = []
        # Round robin over the suspects, strongest first, each suspect's strongest spans first
        # (where it scores spans one by one): one detector's many spans (a long recurring
        # sentence, every odd word of a jargon-heavy text) cannot crowd out another's.
        # Only spans that name suspicious text: not a marker of text a suspect did not read
        # (removing an unread tail changes any model's answer), nor a passage longer than a
        # trigger is (the same: taking out a long passage is no proof of anything).
        ranked = [
            [
                s
                for s in _strongest_first(f)
                if not is_unread_marker(s.reason) and s.end - s.start <= p.max_candidate_chars
            ]
            for f in found
        ]
        for rank in range(max((len(spans_of) for spans_of in ranked), default=0)):
            for spans_of in ranked:
                if rank >= len(spans_of):
                    continue
                span = spans_of[rank]
                where = (span.segment, span.start, span.end)
                if where in seen or span.end <= span.start or span.segment >= len(sample.segments):
                    continue
                seen.add(where)
                spans.append(span)
                if len(spans) == p.max_candidates:
                    return spans
        return spans

    def _cache_key(self, text: str) -> bytes:
        norm = unicodedata.normalize("NFKC", text).casefold().strip()
        return hmac.digest(self._key, norm.encode("utf-8", "surrogatepass"), hashlib.sha256)

    def _context_key(self, segments: Sequence[Segment], model: str | None) -> bytes:
        """A keyed hash of the whole request (its model and texts): what a cleared span is
        remembered with."""
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        mac.update((model or "").encode("utf-8", "surrogatepass") + b"\x1e")
        for seg in segments:
            mac.update(seg.role.encode() + b"\x1f" + seg.text.encode("utf-8", "surrogatepass") + b"\x1e")
        return mac.digest()

    def _cached(self, key: bytes, now: float) -> float | None:
        hit = self._cache.get(key)
        if hit is None:
            return None
        score, at = hit
        if now - at > self.params.cache_ttl_seconds:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return score

    def _remember(self, key: bytes, score: float, now: float) -> None:
        if self.params.cache_size == 0:
            return
        self._cache[key] = (score, now)
        self._cache.move_to_end(key)
        while len(self._cache) > self.params.cache_size:
            self._cache.popitem(last=False)

    def _spend(self, probes: int, now: float) -> bool:
        """Take ``probes`` from the per-second budget, or nothing when they do not all fit."""
        p = self.params
        self._tokens = min(float(p.probe_burst), self._tokens + (now - self._refilled) * p.probes_per_second)
        self._refilled = now
        if probes > self._tokens:
            return False
        self._tokens -= probes
        return True

    # ----------------------------------------------------------------- scoring

    async def _score(self, sample: Sample) -> Finding:
        t0 = time.perf_counter()
        self._probe_share.saw(time.monotonic())
        try:
            return await self._judge(sample, t0)
        except UpstreamProbeError as exc:
            return Finding.failed(self.name, FindingStatus.ERROR, exc.reason)
        except Exception as exc:  # the contract: never raise, report an error finding
            return Finding.failed(self.name, FindingStatus.ERROR, type(exc).__name__)

    async def _judge(self, sample: Sample, t0: float) -> Finding:
        now = time.monotonic()
        segments = sample.segments
        results: list[Span] = []  # each candidate, its reason and its own score
        to_probe: list[tuple[Span, bytes, str]] = []
        context = (
            self._context_key(segments, sample.model) if self.params.remember_cleared == "request" else b""
        )
        api = self._api(sample)
        # A trigger already proven is found wherever it sits, flagged or not: no probe, and the
        # request is judged on it alone.
        scope = sample.model or ""
        if api is not None:
            for index, start, end, score in self._proven.find(scope, [s.text for s in segments], now):
                results.append(Span(index, start, end, R_KNOWN, score))
                self._judged("known_trigger")
        if results:
            return self._finding(results, t0)
        for span in self._candidates(sample):
            seg = segments[span.segment]
            if api is None or not _askable(sample, seg, api):
                results.append(Span(span.segment, span.start, span.end, R_UNPROBEABLE, 0.0))
                self._judged("unprobeable")
                continue
            text = seg.text[span.start : span.end]
            key = self._cache_key(text)
            proven = self._proven.key_of(scope, text)
            known = self._proven.score(proven, now) if proven is not None else None
            if known is not None:
                results.append(Span(span.segment, span.start, span.end, R_KNOWN, known))
                self._judged("known_trigger")
                continue
            cleared = self._cached(key + context, now)
            if cleared is not None:
                results.append(Span(span.segment, span.start, span.end, R_UNCHANGED, cleared))
                self._judged("known_clear")
                continue
            to_probe.append((span, key, text))
        if to_probe:
            cost = 1 + len(to_probe) * (1 + self.params.controls)
            if not self._probe_share.allows(cost, now) or not self._spend(cost, now):
                assert self._sender is not None  # noqa: S101 - ready only with it
                self._sender.count("over_budget", cost)
                return Finding.failed(self.name, FindingStatus.ERROR, "over_budget")
            self._probe_share.spent(cost, now)
            assert api is not None  # noqa: S101 - nothing is probed without one
            moves = await self._probe_all(sample, [span for span, _, _ in to_probe], api)
            for (span, key, text), (moved, baseline) in zip(to_probe, moves, strict=True):
                score = max(0.0, moved - baseline)
                confirmed = score >= _CONFIRMED
                if confirmed:
                    record = self._proven.remember(scope, text, score, now)
                    if record is not None and self._shared is not None:
                        self._shared.publish(record)
                else:
                    self._remember(key + context, score, now)
                reason = R_CHANGED if confirmed else R_UNCHANGED
                measures = (("divergence", moved), ("control_divergence", baseline))
                results.append(Span(span.segment, span.start, span.end, reason, score, measures))
                self._judged("confirmed" if confirmed else "cleared")
        return self._finding(results, t0)

    def _finding(self, results: Sequence[Span], t0: float) -> Finding:
        if not results:
            return Finding(detector=self.name, score=0.0, duration_seconds=time.perf_counter() - t0)
        return Finding(
            detector=self.name,
            score=min(1.0, max(0.0, max(s.score or 0.0 for s in results))),
            reasons=tuple(sorted({s.reason for s in results})),
            spans=tuple(sorted(results, key=lambda s: (s.segment, s.start))),
            duration_seconds=time.perf_counter() - t0,
        )

    def _api(self, sample: Sample) -> Api | None:
        """How this sample's probes ask the model; ``None``: its route cannot be probed."""
        api = self.params.api
        if api in ("chat", "completions"):
            return api
        if api == "auto" and sample.reprompt is not None:
            return sample.reprompt
        resend = sample.resend
        if resend is not None and (resend.safe or sample.route in self.params.resend_routes):
            return "native"
        return None

    async def _probe_all(self, sample: Sample, spans: Sequence[Span], api: Api) -> list[tuple[float, float]]:
        """One answer to the request as sent, one per candidate and per control; per candidate,
        how far removing it moved the answer and how far the most moving control did."""
        segments = sample.segments
        variants: list[tuple[Segment, ...]] = [segments]
        plan: list[tuple[int, list[int]]] = []  # per candidate: its variant, its controls' variants
        for span in spans:
            seg = segments[span.segment]
            variants.append(_without(segments, span.segment, span.start, span.end))
            mine = len(variants) - 1
            avoid = [(x.start, x.end) for x in spans if x.segment == span.segment]  # no suspect is a control
            controls = control_spans(
                seg.text, avoid, span.end - span.start, self.params.controls, f"{span.segment}:{span.start}"
            )
            ids = []
            for start, end in controls:
                variants.append(_without(segments, span.segment, start, end))
                ids.append(len(variants) - 1)
            plan.append((mine, ids))
        answers = await self._answers(variants, sample, api)
        moves = []
        for mine, ids in plan:
            moved = divergence(answers[0], answers[mine])
            baseline = max((divergence(answers[0], answers[i]) for i in ids), default=0.0)
            moves.append((moved, baseline))
        return moves

    async def _answers(self, variants: Sequence[tuple[Segment, ...]], sample: Sample, api: Api) -> list[str]:
        if api == "native":
            return await all_or_first_error([self._resend(v, sample) for v in variants])
        return await all_or_first_error([self._ask(v, sample.model, api) for v in variants])

    async def _resend(self, segments: Sequence[Segment], sample: Sample) -> str:
        """The request itself, in its own API, with the variant's texts in place."""
        assert self._sender is not None  # noqa: S101 - start() made the detector ready only with it
        resend = sample.resend
        assert resend is not None  # noqa: S101 - the api is native only with it
        body = resend.body
        for before, after in zip(sample.segments, segments, strict=True):
            if after.text != before.text:
                body = replace_string(body, before.source, before.text, after.text)
                if body is None:
                    raise UpstreamProbeError("the request cannot be edited where the span is")
        p = self.params
        try:
            probe = resend.probe(body, p.max_tokens, p.seed)
        except ValueError as exc:
            raise UpstreamProbeError(f"the request cannot be made a probe: {exc}") from exc
        return await self._sender.send(resend.path, probe, timeout_s=p.timeout_seconds, read=resend.read)

    async def _ask(
        self, segments: Sequence[Segment], model: str | None, api: Literal["chat", "completions"]
    ) -> str:
        assert self._sender is not None  # noqa: S101 - start() made the detector ready only with it
        p = self.params
        body: dict[str, Any] = {
            "model": p.model or model or "default",
            "max_tokens": p.max_tokens,
            "temperature": 0,
            "seed": p.seed,
            "stream": False,
        }
        if api == "chat":
            body["messages"] = [
                {"role": _CHAT_ROLES[s.role], "content": s.text} for s in segments if s.role in _CHAT_ROLES
            ]
        else:
            body["prompt"] = "\n".join(s.text for s in segments)
        return await self._sender.send(
            p.path or _DEFAULT_PATHS[api],
            body,
            timeout_s=p.timeout_seconds,
            read=lambda answer: answer_text(answer, api),
        )

    def _judged(self, outcome: str) -> None:
        context = self._context
        if context is not None and context.metrics is not None:
            context.metrics.count_candidates(self.name, outcome)


def _askable(sample: Sample, seg: Segment, api: Api) -> bool:
    """Whether a span of ``seg`` can be taken out of a probe: a chat probe carries only chat
    messages; a native one edits the request where the segment's text sits."""
    if api == "chat":
        return seg.role in _CHAT_ROLES
    if api == "native":
        resend = sample.resend
        return resend is not None and replace_string(resend.body, seg.source, seg.text, "") is not None
    return True


def _strongest_first(finding: Finding) -> list[Span]:
    """A finding's spans by their own score where its detector gives one (else the finding's)."""
    return sorted(finding.spans, key=lambda s: -(s.score if s.score is not None else finding.score))


def _without(segments: tuple[Segment, ...], index: int, start: int, end: int) -> tuple[Segment, ...]:
    seg = segments[index]
    edited = Segment(seg.role, remove_span(seg.text, start, end), seg.source)
    return (*segments[:index], edited, *segments[index + 1 :])


def answer_text(answer: Any, api: str) -> str:
    """The text of an OpenAI chat (``api == "chat"``) or completion answer's first choice;
    :class:`UpstreamProbeError` when it has none. ``trigger-firewall probe`` reads answers
    with it too."""
    try:
        choice = answer["choices"][0]
        content = choice["message"]["content"] if api == "chat" else choice["text"]
    except (KeyError, IndexError, TypeError) as exc:
        where = "message.content" if api == "chat" else "text"
        raise UpstreamProbeError(f"probe answer has no choices[0].{where}") from exc
    if not isinstance(content, str):
        raise UpstreamProbeError("probe answer content is not a string")
    return content
