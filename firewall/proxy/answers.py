"""Responses the firewall writes itself: blocks and errors, as JSON in the envelope of the
route's API (OpenAI's unless the adapter has its own: Anthropic, Ollama, TGI, KServe).

Statuses are chosen for what OpenAI SDK clients do with them (openai-python's
``_base_client._should_retry``): a policy block is 400 with ``code: "content_filter"`` and
``x-should-retry: false`` (the SDK must not resend a malicious prompt); a
detector failing closed, overload and draining are 503 with ``Retry-After``
(transient, safe to retry); upstream failures are 502/504. The client is not
told which detector fired unless ``blocking.expose_reasons`` is on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from firewall.config.schema import FirewallConfig
from firewall.core.errors import FirewallError, ProtocolError
from firewall.core.types import BlockKind, Phase, Verdict
from firewall.protocols.base import ProtocolAdapter, error_body

__all__ = [
    "BLOCK_MESSAGE",
    "OUTPUT_BLOCK_MESSAGE",
    "block_response",
    "error_response",
    "firewall_error_response",
    "verdict_response",
]

BLOCK_MESSAGE = "The request was blocked by the trigger firewall's content policy."
OUTPUT_BLOCK_MESSAGE = "The model's response was withheld by the trigger firewall's content policy."


def error_response(
    status: int,
    message: str,
    *,
    code: str,
    error_type: str,
    request_id: str,
    param: str | None = None,
    retry: bool | None = None,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
    adapter: ProtocolAdapter | None = None,
) -> web.Response:
    """A JSON error in the route's envelope (OpenAI's by default), with request id and retry hints."""
    hdrs = {"X-Request-Id": request_id}
    if retry is not None:
        hdrs["X-Should-Retry"] = "true" if retry else "false"
    if retry_after is not None:
        hdrs["Retry-After"] = str(retry_after)
    if headers:
        hdrs.update(headers)
    envelope: Callable[..., dict[str, Any]] = adapter.error_body if adapter is not None else error_body
    body = orjson.dumps(envelope(message, code=code, error_type=error_type, param=param))
    return web.Response(status=status, body=body, content_type="application/json", headers=hdrs)


def block_response(
    *,
    request_id: str,
    message: str,
    param: str | None,
    reason: str | None,
    adapter: ProtocolAdapter | None = None,
) -> web.Response:
    """The 400 ``content_filter`` answer to a blocked request or response."""
    text = f"{message} (reason: {reason})" if reason else message
    return error_response(
        400,
        text,
        code="content_filter",
        error_type="invalid_request_error",
        request_id=request_id,
        param=param,
        retry=False,
        headers={"X-Firewall-Action": "block"},
        adapter=adapter,
    )


def firewall_error_response(
    exc: FirewallError, request_id: str, retry_after: int = 1, adapter: ProtocolAdapter | None = None
) -> web.Response:
    """Map an exception from the tree in ``errors.py`` to its HTTP answer."""
    param = exc.param if isinstance(exc, ProtocolError) else None
    transient = exc.status >= 500
    return error_response(
        exc.status,
        str(exc) or exc.code,
        code=exc.code,
        error_type=exc.error_type,
        request_id=request_id,
        param=param,
        retry=transient,
        retry_after=retry_after if exc.status == 503 else None,
        adapter=adapter,
    )


def verdict_response(
    verdict: Verdict,
    config: FirewallConfig,
    *,
    request_id: str,
    param: str | None,
    adapter: ProtocolAdapter | None = None,
) -> web.Response:
    """The answer to a blocking verdict: 400 ``content_filter``, 503 when a detector
    failed closed (a transient fault the client may retry), or 413 (a request) / 502 (an
    answer) when a detector that fails closed could read only part of the text: retrying
    the same text cannot help."""
    if verdict.block_kind is BlockKind.UNSCREENABLE:
        request = verdict.phase is Phase.INPUT
        return error_response(
            413 if request else 502,
            "The request is too long to screen; send a shorter one."
            if request
            else "The upstream answer is too long to screen; it was withheld.",
            code="too_long_to_screen",
            error_type="invalid_request_error" if request else "server_error",
            request_id=request_id,
            retry=False,
            headers={"X-Firewall-Action": "block"},
            adapter=adapter,
        )
    if verdict.block_kind is BlockKind.FAIL_CLOSED:
        return error_response(
            503,
            "A required content check is unavailable; the request was not completed.",
            code="firewall_unavailable",
            error_type="server_error",
            request_id=request_id,
            retry=True,
            retry_after=config.server.retry_after_seconds,
            headers={"X-Firewall-Action": "block"},
            adapter=adapter,
        )
    return block_response(
        request_id=request_id,
        message=BLOCK_MESSAGE if verdict.phase is Phase.INPUT else OUTPUT_BLOCK_MESSAGE,
        param=param,
        reason=verdict.reason if config.blocking.expose_reasons else None,
        adapter=adapter,
    )
