"""The request handler: read, screen the input, forward, screen the output, answer.

One handler serves every path (no middleware chain: each layer costs
microseconds on the hot path, and the order of steps is clearer in one place).
The path of a request:

1. Name the request with the firewall's own UUID (a client's well-formed
   ``x-request-id`` is kept apart, see :mod:`firewall.proxy.request_ids`) and take the
   current runtime snapshot; refuse with 503 past ``server.max_concurrency``.
2. Paths that servers could read differently (control characters, dot segments)
   get 400 (:mod:`firewall.proxy.paths`). Unmatched paths get 404 when they carry a
   body (``unknown_routes: deny_with_body``, the default), and pass through untouched
   otherwise or when ``passthrough_prefixes`` names them.
3. Screened routes: read the body within ``server.max_request_bytes`` (413),
   parse it with orjson (400 on bad JSON or bad UTF-8; never forwarded blind),
   refuse JSON that parsers read differently (duplicate or case-variant keys,
   :mod:`firewall.protocols.json_checks`), extract the texts with the route's
   protocol adapter and run the input phase.
4. A block answers 400 ``content_filter`` (or 503 when a detector failed
   closed); the upstream is never contacted.
5. Otherwise forward over the shared session and screen the output
   (``relay.py``).
6. Count the request exactly once (in ``finally``, so a client that disconnects
   is counted too) and write one audit line per screened request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http import HttpVersion11

from firewall.config.schema import RoutingConfig
from firewall.core.errors import (
    BodyTooLarge,
    FirewallError,
    InvalidJson,
    InvalidUtf8,
    ModelNotAllowed,
    ProtocolError,
    UnsafePath,
    UnsupportedEncoding,
)
from firewall.core.types import Mode, Phase, Segment, Verdict
from firewall.observability.audit import fingerprint
from firewall.protocols.json_checks import check_unambiguous
from firewall.proxy import relay
from firewall.proxy.answers import error_response, firewall_error_response, verdict_response
from firewall.proxy.exchange import Exchange, Outcome, record_verdict, write_audit
from firewall.proxy.paths import check_path
from firewall.proxy.request_ids import client_request_id, new_request_id
from firewall.proxy.state import ServerState
from firewall.screening.runtime import MatchedRoute, Runtime
from firewall.screening.screen import screen_sanitized, screen_staged, screened_segments

__all__ = ["handle"]

# Members read on every request, bound once: on Python 3.11 ``Enum.MEMBER`` goes through
# EnumType's __getattr__ hook, about ten times the cost of reading a module global.
_OFF, _INPUT, _OUTPUT, _REJECTED = Mode.OFF, Phase.INPUT, Phase.OUTPUT, Outcome.REJECTED


async def handle(request: web.BaseRequest, state: ServerState) -> web.StreamResponse:
    """Entry point for every request on the proxy port."""
    runtime = state.runtime  # one snapshot for the whole request, even across a reload
    config = runtime.config
    rid = new_request_id()
    client_rid = client_request_id(request.headers.get("X-Request-Id"))
    reply_id = client_rid or rid
    metrics = state.metrics
    try:
        check_path(request.raw_path, request.path)
    except UnsafePath as exc:
        metrics.count_rejected("unmatched", exc.reason, config.mode)
        return firewall_error_response(exc, reply_id)
    matched = runtime.routes.match(request.method, request.path)
    route = matched.name if matched else "unmatched"
    # StrEnum members are str: no ``.value`` lookups (a Python-level descriptor) on the hot path.
    mode: str = matched.policy.mode if matched else config.mode
    if state.inflight >= config.server.max_concurrency:
        metrics.count_rejected(route, "overloaded", mode)
        return error_response(
            503,
            "The firewall is at its concurrency limit; retry shortly.",
            code="overloaded",
            error_type="server_error",
            request_id=reply_id,
            retry=True,
            retry_after=config.server.retry_after_seconds,
            adapter=matched.adapter if matched else None,
        )
    if "Expect" in request.headers and not await _expect_continue(request):
        metrics.count_rejected(route, "expectation_failed", mode)
        return error_response(
            417,
            f"Unsupported Expect header: {request.headers['Expect'][:64]!r}; only 100-continue is.",
            code="expectation_failed",
            error_type="invalid_request_error",
            request_id=reply_id,
            retry=False,
            adapter=matched.adapter if matched else None,
        )
    ex = Exchange(
        rid, route, mode, time.perf_counter(), request.method, runtime, client_request_id=client_rid
    )
    state.enter()
    runtime.users.enter()
    try:
        if matched is None:
            return await _passthrough(request, state, runtime, ex)
        return await _screened(request, state, runtime, matched, ex)
    finally:
        runtime.users.leave()
        state.leave()
        if ex.action is not _REJECTED:
            metrics.count_request(route, ex.action, ex.mode)
        metrics.observe_request(route, time.perf_counter() - ex.start)
        if ex.screened:
            write_audit(state, ex)


async def _expect_continue(request: web.BaseRequest) -> bool:
    """Answer ``Expect: 100-continue`` so a client (curl) sends its body without waiting.

    Sent after the concurrency check, so an overloaded proxy answers 503 before the
    client uploads anything. Any other expectation cannot be met by a proxy that must
    read the body to screen it: the caller answers 417 (RFC 9110, section 10.1.1).
    """
    if request.headers["Expect"].lower() != "100-continue":
        return False
    if request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim response is not part of the answer's size
    return True


def _reject(state: ServerState, ex: Exchange, reason: str) -> None:
    ex.action = Outcome.REJECTED
    state.metrics.count_rejected(ex.route, reason, ex.mode)


def _failed(
    ex: Exchange, exc: FirewallError, runtime: Runtime, matched: MatchedRoute | None = None
) -> web.Response:
    ex.action = Outcome.ERROR
    ex.status = exc.status
    ex.error = exc.code
    adapter = matched.adapter if matched else None
    return firewall_error_response(exc, ex.reply_id, runtime.config.server.retry_after_seconds, adapter)


async def _passthrough(
    request: web.BaseRequest, state: ServerState, runtime: Runtime, ex: Exchange
) -> web.StreamResponse:
    if ex.route == "unmatched" and _deny_unmatched(request, runtime.config.routing):
        _reject(state, ex, "unknown_route")
        return error_response(
            404,
            f"Route {request.method} {request.path} is not served by this firewall.",
            code="unknown_route",
            error_type="invalid_request_error",
            request_id=ex.reply_id,
            retry=False,
        )
    body: Any = None
    length = request.content_length
    if length is not None and length <= runtime.config.server.max_request_bytes:
        body = await request.read() if length else None
    elif request.body_exists:
        body = request.content  # not screened: streamed through whatever its size
    try:
        return await relay.forward(request, state, runtime, ex, body, screen=None)
    except FirewallError as exc:
        return _failed(ex, exc, runtime)


def _deny_unmatched(request: web.BaseRequest, routing: RoutingConfig) -> bool:
    """Whether a request on no configured route is refused (``routing.unknown_routes``).

    A body could carry a prompt the firewall cannot read, so by default only bodiless
    requests (model lists, health checks) pass, and the prefixes the config names.
    """
    policy = routing.unknown_routes
    if policy == "passthrough" or request.path.startswith(routing.passthrough_prefixes):
        return False
    return policy == "deny" or request.body_exists


async def _read_body(request: web.BaseRequest, limit: int) -> bytes:
    length = request.content_length
    if length is not None:
        if length > limit:
            raise BodyTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        return await request.read()  # bounded by Content-Length, which aiohttp enforces
    buf = bytearray()  # chunked: count while reading
    async for chunk in request.content.iter_any():
        buf += chunk
        if len(buf) > limit:
            raise BodyTooLarge(f"Request body exceeds the limit of {limit} bytes.")
    return bytes(buf)


def _parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidUtf8("Request body is not valid UTF-8.") from exc
        raise InvalidJson(f"Request body is not valid JSON: {exc.msg}.") from exc


async def _screened(
    request: web.BaseRequest,
    state: ServerState,
    runtime: Runtime,
    matched: MatchedRoute,
    ex: Exchange,
) -> web.StreamResponse:
    config = runtime.config
    policy = matched.policy
    if policy.mode is _OFF:
        return await _passthrough(request, state, runtime, ex)  # nothing to screen: relay untouched
    ex.screened = True
    try:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise UnsupportedEncoding(
                f"Content-Encoding {encoding!r} is not accepted on screened routes; send identity."
            )
        raw = await _read_body(request, config.server.max_request_bytes)
        body = _parse_json(raw)
        check_unambiguous(raw, body)
        segments = matched.adapter.input_segments(body)
    except ProtocolError as exc:
        ex.screened = False
        _reject(state, ex, exc.reason)
        return firewall_error_response(exc, ex.reply_id, adapter=matched.adapter)
    ex.model = matched.adapter.model(body)
    allowed = matched.allowed_models
    if allowed is not None and ex.model not in allowed:
        ex.screened = False
        refused = ModelNotAllowed("The requested model is not allowed on this route.")
        _reject(state, ex, refused.reason)
        return firewall_error_response(refused, ex.reply_id, adapter=matched.adapter)
    resolved = matched.for_model(ex.model)
    if resolved is not matched:
        matched = resolved
        policy = matched.policy
        ex.mode = policy.mode
        if policy.mode is _OFF:
            ex.screened = False
            return await _forward_unscreened(request, state, runtime, ex, raw)
    segments = screened_segments(matched, segments)
    staged = await screen_staged(
        runtime,
        matched,
        _INPUT,
        segments,
        model=ex.model,
        request_id=ex.request_id,
        request=(request.path_qs, body),
    )
    verdict = staged.verdict
    if staged.prove is not None:
        if config.blocking.forward_while_proving:
            # What the first stage already knows goes upstream with the request (a detector that
            # failed open); the held detectors' own fail modes reach the audit line only.
            first = verdict if verdict is not None and verdict.fail_open else None
            held = staged.prove
            return await _forward_held(
                request, state, runtime, matched, ex, raw, body, segments, held, fail_open=first is not None
            )
        verdict = await staged.prove()
    if verdict is not None and verdict.sanitizes:
        try:
            raw, body, matched, segments, verdict = await _sanitized(
                runtime, matched, ex, raw, verdict, request.path_qs
            )
            policy = matched.policy
        except ProtocolError as exc:
            ex.screened = False
            _reject(state, ex, exc.reason)
            return firewall_error_response(exc, ex.reply_id, adapter=matched.adapter)
    blocked = _decided(state, runtime, matched, ex, body, segments, verdict)
    if blocked is not None:
        return blocked
    if verdict is not None and verdict.sanitizes:
        ex.action = Outcome.SANITIZE

    extra = [("X-Firewall-Fail-Open", "true")] if verdict is not None and verdict.fail_open else []
    try:
        return await relay.forward(
            request,
            state,
            runtime,
            ex,
            raw,
            screen=matched if policy.screens(_OUTPUT) else None,
            extra_headers=extra,
        )
    except FirewallError as exc:
        return _failed(ex, exc, runtime, matched)


def _decided(
    state: ServerState,
    runtime: Runtime,
    matched: MatchedRoute,
    ex: Exchange,
    body: Any,
    segments: list[Segment],
    verdict: Verdict | None,
) -> web.Response | None:
    """Record the input verdict on the exchange and in the metrics; the block response, if
    it blocks."""
    config = runtime.config
    ex.stream = matched.adapter.wants_stream(body)
    ex.input_segments = len(segments)
    if config.audit.capture_text or (config.score_log.enabled and config.score_log.include_text):
        ex.texts = {"input": [s.text for s in segments]}
    if verdict is not None:
        ex.input_verdict = verdict
        ex.input_fp = fingerprint(segments, state.audit.salt)
        record_verdict(state.metrics, verdict)
        ex.note_log(verdict)
    ex.overhead["input"] = time.perf_counter() - ex.start
    state.metrics.observe_overhead(ex.route, "input", ex.overhead["input"])
    if verdict is None or not verdict.blocks:
        return None
    ex.action = Outcome.BLOCK
    response = verdict_response(
        verdict, config, request_id=ex.reply_id, param=matched.adapter.prompt_param, adapter=matched.adapter
    )
    ex.status = response.status
    return response


async def _forward_held(
    request: web.BaseRequest,
    state: ServerState,
    runtime: Runtime,
    matched: MatchedRoute,
    ex: Exchange,
    raw: bytes,
    body: Any,
    segments: list[Segment],
    prove: Callable[[], Awaitable[Verdict]],
    *,
    fail_open: bool,
) -> web.StreamResponse:
    """Send a suspected request upstream at once and hold its answer until the proof is in.

    The gated detectors' probes run beside the request, so it waits for the longer of the
    two, not their sum. A block closes the upstream call (a streamed generation stops) and
    answers the block; nothing of the held answer reaches the client. A pass relays it as
    usual, screened on the way out.
    """
    screen_out = matched if matched.policy.screens(Phase.OUTPUT) else None
    proof = asyncio.ensure_future(prove())
    extra = [("X-Firewall-Fail-Open", "true")] if fail_open else []
    sent = asyncio.ensure_future(
        relay.send(request, state, runtime, ex, raw, screen=screen_out, extra_headers=extra)
    )
    ex.held = True
    relayed = False
    try:
        verdict = await proof
        blocked = _decided(state, runtime, matched, ex, body, segments, verdict)
        if blocked is not None:
            return blocked
        try:
            resp = await sent
            relayed = True
            return await relay.relay(request, state, runtime, ex, resp, screen=screen_out)
        except FirewallError as exc:
            return _failed(ex, exc, runtime, matched)
    finally:
        proof.cancel()
        if not sent.done():
            sent.cancel()
        elif not relayed and not sent.cancelled() and sent.exception() is None:
            sent.result().close()  # blocked, or the handler was cancelled: drop the answer


async def _sanitized(
    runtime: Runtime, matched: MatchedRoute, ex: Exchange, raw: bytes, first: Verdict, path: str
) -> tuple[bytes, Any, MatchedRoute, list[Segment], Verdict]:
    """Clean the body of a sanitize verdict's characters (:func:`screen_sanitized`) and record
    on the exchange what it now is: its model, mode and what was removed."""
    cleaned = await screen_sanitized(runtime, matched, first, raw, request_id=ex.request_id, path=path)
    ex.model = cleaned.model
    ex.mode = cleaned.route.policy.mode
    ex.sanitized = {
        "removed_chars": cleaned.removed,
        "code_points": [f"U+{ord(c):04X}" for c in first.remedy],
    }
    return cleaned.raw, cleaned.body, cleaned.route, cleaned.segments, cleaned.verdict


async def _forward_unscreened(
    request: web.BaseRequest, state: ServerState, runtime: Runtime, ex: Exchange, raw: bytes
) -> web.StreamResponse:
    """Forward an already-read body untouched (a model whose override turns screening off)."""
    try:
        return await relay.forward(request, state, runtime, ex, raw, screen=None)
    except FirewallError as exc:
        return _failed(ex, exc, runtime)
