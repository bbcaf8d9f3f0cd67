"""Forwarding to the upstream and relaying its answer, screened or untouched.

Three ways back to the client:

* **untouched** (nothing screens the output, or the upstream answered an error):
  small bodies are read and returned whole; anything else, SSE included, is
  relayed chunk by chunk as it arrives, with no buffering;
* **screened body**: read within ``server.max_response_bytes``, parse, run the
  output phase, then relay the original bytes or answer the block;
* **screened stream**: SSE events go through the hold-back window; a block ends
  the stream with the protocol's terminal events and cancels the upstream read.

A body that cannot be screened (too large, not JSON, an encoding we cannot
read) is not silently waved through: every output detector gets an error
finding and its fail mode decides.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from detectors.base import Detector
from firewall.config.schema import StreamConfig
from firewall.core.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from firewall.core.types import BlockKind, Mode, Phase, Segment, Verdict
from firewall.observability.audit import fingerprint
from firewall.protocols.base import StreamState
from firewall.proxy.answers import OUTPUT_BLOCK_MESSAGE, verdict_response
from firewall.proxy.exchange import Exchange, Outcome, record_verdict
from firewall.proxy.identity import identity_fields, stream_identity
from firewall.proxy.state import ServerState
from firewall.proxy.streaming import HoldbackBuffer, NdjsonParser, SseParser, SseProtocolError, TextChannels
from firewall.proxy.upstream import bearer_token, code_class, request_headers, response_headers
from firewall.screening.runtime import MatchedRoute, Runtime
from firewall.screening.screen import screen_or_pass, unscreenable

__all__ = ["forward", "relay", "send"]

log = logging.getLogger("trigger_firewall.relay")

_SMALL_BODY = 256 * 1024
#: How much of an unscreened stream's start is searched for the model's name.
_IDENTITY_HEAD_BYTES = 16 * 1024
#: The largest unscreened answer parsed only to read the model's name: a chat answer is far
#: smaller; an embeddings answer (a float array, the model named after it) is not worth a parse.
_IDENTITY_BODY_BYTES = 64 * 1024
_STREAM_FAILED = {
    "error": {
        "message": "The upstream stream failed before it completed.",
        "type": "server_error",
        "param": None,
        "code": "upstream_error",
    }
}
#: Content types of line-delimited JSON streams (Ollama's native API).
_NDJSON_TYPES = frozenset(("application/x-ndjson", "application/jsonl", "application/ndjson"))
# Read on every screened answer, bound once (``Enum.MEMBER`` is slow on Python 3.11).
_OUTPUT = Phase.OUTPUT
SSE, NDJSON = "sse", "ndjson"


def _failed_event(framing: str) -> bytes:
    """The event that tells a client the stream broke, in the stream's own framing."""
    if framing == NDJSON:
        return orjson.dumps({"error": _STREAM_FAILED["error"]["message"]}) + b"\n"
    return b"data: " + orjson.dumps(_STREAM_FAILED) + b"\n\n"


def _client_error(exc: BaseException) -> UpstreamError:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("The upstream model endpoint timed out.")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError("The upstream model endpoint is unreachable.")
    return UpstreamError(f"The upstream model endpoint failed ({type(exc).__name__}).")


def _url(base: str, request: web.BaseRequest) -> URL:
    raw = request.raw_path
    if not raw.startswith("/"):
        raw = str(request.rel_url)  # absolute-form request target: keep only path and query
    return URL(base + raw, encoded=True)


async def forward(
    request: web.BaseRequest,
    state: ServerState,
    runtime: Runtime,
    ex: Exchange,
    body: Any,
    *,
    screen: MatchedRoute | None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> web.StreamResponse:
    """Send the request upstream and relay the answer; raises :class:`UpstreamError`
    only while nothing has been sent to the client yet."""
    resp = await send(request, state, runtime, ex, body, screen=screen, extra_headers=extra_headers)
    return await relay(request, state, runtime, ex, resp, screen=screen)


async def send(
    request: web.BaseRequest,
    state: ServerState,
    runtime: Runtime,
    ex: Exchange,
    body: Any,
    *,
    screen: MatchedRoute | None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> aiohttp.ClientResponse:
    """Send the request upstream; the response, once its headers are in (the caller relays
    it with :func:`relay` or closes it). Raises :class:`UpstreamError`."""
    session = state.session
    if session is None:
        raise UpstreamConnectError("The upstream session is not open.")
    upstream_config = runtime.config.upstream
    headers = request_headers(
        request.headers,
        request_id=ex.request_id,
        client_ip=request.remote,
        client_request_id=ex.client_request_id,
        request_id_header=upstream_config.request_id_header,
        extra=extra_headers,
        identity_encoding=screen is not None,
        authorization=bearer_token(upstream_config) or state.upstream_auth,
    )
    upstream = upstream_config.name
    t0 = time.perf_counter()
    try:
        resp = await session.request(
            request.method,
            _url(state.upstream_base, request),
            headers=headers,
            data=body,
            allow_redirects=False,
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        err = _client_error(exc)
        state.metrics.count_upstream(upstream, err.reason, None)
        raise err from exc
    ex.upstream_seconds = time.perf_counter() - t0
    state.metrics.count_upstream(upstream, code_class(resp.status), ex.upstream_seconds)
    return resp


async def relay(
    request: web.BaseRequest,
    state: ServerState,
    runtime: Runtime,
    ex: Exchange,
    resp: aiohttp.ClientResponse,
    *,
    screen: MatchedRoute | None,
) -> web.StreamResponse:
    """Relay an upstream response to the client, screening it when ``screen`` is a route."""
    ex.status = resp.status
    try:
        framing = (
            SSE
            if resp.content_type == "text/event-stream"
            else NDJSON
            if resp.content_type in _NDJSON_TYPES
            else None
        )
        if screen is None or resp.status >= 300:
            return await _relay_untouched(request, state, resp, ex, framing)
        if framing is not None:
            return await _relay_stream_screened(request, state, runtime, ex, resp, screen, framing)
        return await _relay_body_screened(request, state, runtime, ex, resp, screen)
    finally:
        resp.release()


def _sse_headers(resp: aiohttp.ClientResponse, request_id: str, keep_encoding: bool) -> CIMultiDict[str]:
    headers = response_headers(resp.headers, keep_encoding=keep_encoding)
    headers["X-Request-Id"] = request_id
    # The upstream's own directive stands (llama.cpp's servers send the stricter
    # "no-store"); only a stream that came without one is marked uncacheable here.
    headers.setdefault("Cache-Control", "no-cache")
    headers["X-Accel-Buffering"] = "no"
    return headers


def _note_identity(state: ServerState, ex: Exchange, fields: dict[str, str]) -> None:
    """Compare the model an answer names with the last one for this route and model."""
    changes = state.identity.observe(ex.route, ex.model, fields)
    if changes:
        for change in changes:
            state.metrics.count_identity_change(ex.route, change.field)
        ex.identity_changes = [change.as_audit() for change in changes]


def _body_identity(state: ServerState, ex: Exchange, resp: aiohttp.ClientResponse, data: bytes) -> None:
    """Read the identity of a whole small JSON answer (not a compressed one: not worth inflating)."""
    watched = ex.runtime.config.upstream.watch_identity
    if not watched or resp.status >= 300 or len(data) > _IDENTITY_BODY_BYTES:
        return
    if resp.content_type != "application/json":
        return
    if resp.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        return
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    _note_identity(state, ex, identity_fields(body, watched))


async def _relay_untouched(
    request: web.BaseRequest,
    state: ServerState,
    resp: aiohttp.ClientResponse,
    ex: Exchange,
    framing: str | None,
) -> web.StreamResponse:
    if framing is None and resp.content_length is not None and resp.content_length <= _SMALL_BODY:
        try:
            data = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _client_error(exc) from exc
        _body_identity(state, ex, resp, data)
        headers = response_headers(resp.headers)
        headers["X-Request-Id"] = ex.reply_id
        return web.Response(status=resp.status, body=data, headers=headers)
    headers = _sse_headers(resp, ex.reply_id, True) if framing else response_headers(resp.headers)
    headers["X-Request-Id"] = ex.reply_id
    out = web.StreamResponse(status=resp.status, headers=headers)
    await out.prepare(request)
    await _pump(state, resp, out, ex, prefix=b"", framing=framing)
    return out


async def _pump(
    state: ServerState,
    resp: aiohttp.ClientResponse,
    out: web.StreamResponse,
    ex: Exchange,
    *,
    prefix: bytes,
    framing: str | None,
) -> None:
    """Copy the rest of the upstream body as it arrives; end cleanly on upstream failure."""
    started = time.perf_counter()
    outcome = "completed"
    watched = ex.runtime.config.upstream.watch_identity
    # A stream names its model in its first events: read them until one does (bounded).
    head = b"" if watched and framing is not None and resp.status < 300 else None
    try:
        if prefix:
            await out.write(prefix)
        async for chunk in resp.content.iter_any():
            await out.write(chunk)
            if head is not None:
                head += chunk
                fields = stream_identity(head, watched)
                if fields is not None:
                    _note_identity(state, ex, fields)
                    head = None
                elif len(head) > _IDENTITY_HEAD_BYTES:
                    head = None
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, TimeoutError) as exc:
        outcome = "upstream_error"
        ex.error = f"upstream_stream_{type(exc).__name__}"
        if framing is not None:
            await out.write(_failed_event(framing))
    except (ConnectionResetError, asyncio.CancelledError):
        outcome = "client_disconnected"
        resp.close()
        raise
    finally:
        if framing is not None:
            ex.stream_info = {"outcome": outcome, "screened": False}
            state.metrics.count_stream(ex.route, outcome, time.perf_counter() - started)
    await out.write_eof()


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body; the flag says whether the body ended."""
    if resp.content_length is not None:
        if resp.content_length > limit:
            return b"", False
        return await resp.read(), True  # bounded by Content-Length: one read, no chunk loop
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        if len(buf) > limit:
            return bytes(buf), False
    return bytes(buf), True


def _decode_body(data: bytes, encoding: str, limit: int) -> bytes | None:
    """Undo gzip/deflate (bounded, so a compression bomb cannot blow memory)."""
    if encoding in ("", "identity"):
        return data
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS
    try:
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        return None
    return out if len(out) <= limit and not inflater.unconsumed_tail else None


async def _screen(
    runtime: Runtime, matched: MatchedRoute, ex: Exchange, segments: Sequence[Segment]
) -> Verdict:
    """The output verdict; with no text to screen, the policy's verdict on no findings."""
    return await screen_or_pass(runtime, matched, _OUTPUT, segments, model=ex.model, request_id=ex.request_id)


async def _relay_body_screened(
    request: web.BaseRequest,
    state: ServerState,
    runtime: Runtime,
    ex: Exchange,
    resp: aiohttp.ClientResponse,
    matched: MatchedRoute,
) -> web.StreamResponse:
    config = runtime.config
    limit = config.server.max_response_bytes
    try:
        data, complete = await _read_limited(resp, limit)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _client_error(exc) from exc
    t0 = time.perf_counter()
    body: Any = None
    if not complete:
        verdict = unscreenable(matched, Phase.OUTPUT, "response too large to screen")
    else:
        encoding = resp.headers.get("Content-Encoding", "").strip().lower()
        plain = _decode_body(data, encoding, limit)
        try:
            body = orjson.loads(plain) if plain is not None else None
        except orjson.JSONDecodeError:
            body = None
        if body is None:
            verdict = unscreenable(matched, Phase.OUTPUT, "response not readable as JSON")
        else:
            watched = config.upstream.watch_identity
            if resp.status < 300 and watched:
                _note_identity(state, ex, identity_fields(body, watched))
            segments = matched.adapter.output_segments(body)
            if ex.texts is not None:
                ex.texts["output"] = [s.text for s in segments]
            ex.output_fp = fingerprint(segments, state.audit.salt)
            verdict = await _screen(runtime, matched, ex, segments)
    ex.output_verdict = verdict
    record_verdict(state.metrics, verdict)
    ex.overhead["output"] = time.perf_counter() - t0
    state.metrics.observe_overhead(ex.route, "output", ex.overhead["output"])
    ex.note_log(verdict)
    if verdict.blocks:
        return _output_block(state, ex, verdict, matched, body)
    headers = response_headers(resp.headers)
    headers["X-Request-Id"] = ex.reply_id
    if complete:
        return web.Response(status=resp.status, body=data, headers=headers)
    out = web.StreamResponse(status=resp.status, headers=headers)
    await out.prepare(request)
    await _pump(state, resp, out, ex, prefix=data, framing=None)
    return out


def _output_block(
    state: ServerState, ex: Exchange, verdict: Verdict, matched: MatchedRoute, body: Any
) -> web.Response:
    config = ex.runtime.config
    ex.action = Outcome.BLOCK
    if config.blocking.response_style == "content_filter" and verdict.block_kind is BlockKind.POLICY:
        filtered = matched.adapter.filtered_response(body, OUTPUT_BLOCK_MESSAGE)
        try:
            # The upstream's other fields are kept; orjson refuses nesting past 254 levels
            # that its parser accepted, so such a body falls back to the error answer.
            payload = orjson.dumps(filtered) if filtered is not None else None
        except orjson.JSONEncodeError:
            payload = None
        if payload is not None:
            ex.status = 200
            return web.Response(
                status=200,
                body=payload,
                content_type="application/json",
                headers={"X-Request-Id": ex.reply_id, "X-Firewall-Action": "block"},
            )
    response = verdict_response(verdict, config, request_id=ex.reply_id, param=None, adapter=matched.adapter)
    ex.status = response.status
    return response


async def _relay_stream_screened(
    request: web.BaseRequest,
    state: ServerState,
    runtime: Runtime,
    ex: Exchange,
    resp: aiohttp.ClientResponse,
    matched: MatchedRoute,
    framing: str,
) -> web.StreamResponse:
    """Relay a stream (SSE, or NDJSON lines) through the hold-back window, scanning as
    text arrives."""
    config = runtime.config
    rules = matched.policy.rules(Phase.OUTPUT)
    adapter = matched.adapter
    # Monitor mode never blocks, so it releases every event at once and adds no delay.
    enforce = matched.policy.mode is Mode.ENFORCE
    detectors = [runtime.detectors[r.detector] for r in rules if r.detector in runtime.detectors]
    hold = HoldbackBuffer(config.stream.scan_every_chars)
    scan_interval = config.stream.scan_interval_ms / 1000
    last_scan = 0.0
    parser: SseParser | NdjsonParser = NdjsonParser() if framing == NDJSON else SseParser()
    channels = TextChannels()
    stream_state = StreamState()
    out = web.StreamResponse(status=resp.status, headers=_sse_headers(resp, ex.reply_id, False))
    await out.prepare(request)
    started = time.perf_counter()
    scan_seconds = 0.0
    verdict: Verdict | None = None
    done_event: bytes | None = None
    outcome = "completed"
    terminated_by: tuple[str, ...] = ()
    watched = config.upstream.watch_identity
    find_identity = bool(watched) and resp.status < 300

    async def scan(final: bool = False) -> Verdict:
        """Screen the text so far; ``final`` marks the scan after the upstream ended, so
        detectors can judge constructs that will now never be completed (an unclosed block)."""
        nonlocal scan_seconds
        t0 = time.perf_counter()
        suffix = "#final" if final else ""
        segs = [Segment("assistant", text, f"/channels/{ch}{suffix}") for ch, text in channels.texts()]
        result = await _screen(runtime, matched, ex, segs)
        scan_seconds += time.perf_counter() - t0
        return result

    try:
        try:
            async for chunk in resp.content.iter_any():
                for event in parser.feed(chunk):
                    if event.is_done:
                        done_event = event.raw
                        continue
                    positions: dict[str, int] = {}
                    if event.data is not None:
                        try:
                            payload = orjson.loads(event.data)
                        except orjson.JSONDecodeError:
                            payload = None
                        if find_identity:
                            fields = identity_fields(payload, watched)
                            if fields:
                                _note_identity(state, ex, fields)
                                find_identity = False
                        for channel, text in adapter.stream_deltas(payload, stream_state):
                            positions[channel] = channels.add(channel, text)
                    hold.add(event.raw, tuple(positions.items()))
                    if not enforce:
                        await out.write(hold.release_all())
                if hold.scan_due or (
                    hold.total > hold.scanned and time.perf_counter() - last_scan >= scan_interval
                ):
                    last_scan = time.perf_counter()
                    verdict = await scan()
                    if verdict.blocks:
                        break
                    released = hold.mark_scanned(_safe_prefixes(detectors, channels, config.stream))
                    if released:
                        await out.write(released)
                if done_event is not None:
                    break
            tail = parser.flush()
            if tail is not None and not tail.is_done and done_event is None:
                hold.add(tail.raw)
        except (
            aiohttp.ClientPayloadError,
            aiohttp.ServerDisconnectedError,
            TimeoutError,
            SseProtocolError,
        ) as exc:
            outcome = "upstream_error"
            ex.error = f"upstream_stream_{type(exc).__name__}"
        if verdict is None or not verdict.blocks:
            verdict = await scan(final=True)
        if verdict.blocks:
            outcome = "terminated"
            terminated_by = verdict.fired or verdict.fail_open or ("firewall",)
            resp.close()  # stop reading: the model server sees the connection go away
            style = config.stream.block_style
            await out.write(adapter.terminal_events(stream_state, OUTPUT_BLOCK_MESSAGE, style))
        else:
            released = hold.release_all()
            if released:
                await out.write(released)
            if outcome == "upstream_error":
                await out.write(_failed_event(framing))
            elif done_event is not None:
                await out.write(done_event)
            elif adapter.uses_done_sentinel:
                outcome = "incomplete"
        await out.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        outcome = "client_disconnected"
        resp.close()
        raise
    finally:
        _finish_stream(state, ex, verdict, outcome, terminated_by, hold, scan_seconds, started)
    return out


def _safe_prefixes(
    detectors: Sequence[Detector[Any]], channels: TextChannels, stream: StreamConfig
) -> dict[str, int]:
    """Per channel, how many leading characters may reach the client now.

    Detectors that understand structure say so (``stream_safe_prefix``); the
    others get the fixed window: everything but the last ``holdback_chars``.
    ``max_holdback_chars`` bounds the hold whatever a detector asks (the text
    was scanned; only the chance to block on later context is given up).
    """
    safe: dict[str, int] = {}
    for channel, text in channels.texts():
        length = len(text)
        limit = length
        for detector in detectors:
            opinion = detector.stream_safe_prefix(text)
            if opinion is None:
                opinion = length - stream.holdback_chars
            limit = min(limit, opinion)
        safe[channel] = max(limit, length - stream.max_holdback_chars, 0)
    return safe


def _finish_stream(
    state: ServerState,
    ex: Exchange,
    verdict: Verdict | None,
    outcome: str,
    terminated_by: tuple[str, ...],
    hold: HoldbackBuffer,
    scan_seconds: float,
    started: float,
) -> None:
    metrics = state.metrics
    if verdict is not None:
        ex.output_verdict = verdict
        record_verdict(metrics, verdict)
        ex.note_log(verdict)
        if outcome == "terminated":
            ex.action = Outcome.BLOCK
    for name in terminated_by:
        metrics.count_stream_termination(name)
    ex.overhead["output"] = scan_seconds
    metrics.observe_overhead(ex.route, "output", scan_seconds)
    metrics.count_stream(ex.route, outcome, time.perf_counter() - started)
    ex.stream_info = {
        "outcome": outcome,
        "screened": True,
        "terminated": outcome == "terminated",
        "released_chars": hold.released_chars,
        "heldback_chars": hold.held_chars,
        "block_style": ex.runtime.config.stream.block_style,
    }
