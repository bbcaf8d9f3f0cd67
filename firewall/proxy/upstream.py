"""The connection to the protected endpoint: one shared keep-alive client session.

The upstream address comes from config only, never from the request (no Host
header routing, no absolute-URI requests), so the sidecar cannot be turned into
an open proxy. Hop-by-hop headers are stripped both ways (RFC 9110 section 7.6.1), and
response bodies are relayed as the upstream encoded them (``auto_decompress``
off) except on screened output, where the firewall asks for identity encoding so
it can read what it screens.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from firewall.config.schema import UpstreamConfig

__all__ = [
    "HOP_BY_HOP",
    "code_class",
    "create_session",
    "request_headers",
    "response_headers",
    "upstream_base",
    "upstream_target",
]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Headers the proxy recomputes or must not pass on.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "expect"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "server", "date"}


# Representation headers say how to read the body: a client listing them in Connection
# would make the upstream read the body as something other than what was screened
# (application/octet-stream instead of JSON), so they are never dropped that way.
_REPRESENTATION = frozenset({"content-type", "content-encoding"})


def _connection_listed(headers: CIMultiDictProxy[str]) -> set[str]:
    """Header names listed in ``Connection`` are hop-by-hop for this message too
    (except the representation headers, see ``_REPRESENTATION``)."""
    listed: set[str] = set()
    for value in headers.getall("connection", ()):
        listed.update(token.strip().lower() for token in value.split(",") if token.strip())
    return listed - _REPRESENTATION


def request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    request_id: str,
    client_ip: str | None,
    client_request_id: str | None = None,
    request_id_header: str | None = "X-Request-Id",
    extra: Iterable[tuple[str, str]] = (),
    identity_encoding: bool = False,
    authorization: str | None = None,
) -> CIMultiDict[str]:
    """Headers to send upstream: the client's, cleaned, plus tracing and firewall marks.

    The upstream sees what the client sent, less hop-by-hop headers, forged
    ``X-Firewall-*`` marks and an ``X-Request-Id`` that is not a plain token (the
    handler passes the client's validated one as ``client_request_id``), plus, as documented: the
    firewall's request id under ``request_id_header`` when the client sent no such
    header, ``X-Forwarded-For``, ``Accept-Encoding: identity`` on screened routes, the
    configured credentials and the fail-open mark.
    """
    drop = _REQUEST_DROP | _connection_listed(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        # X-Firewall-* headers are the firewall's own marks to the upstream: a client must
        # not be able to forge them (e.g. pretend a request was screened or failed open).
        if lower in drop or lower.startswith("x-firewall-"):
            continue
        if lower == "x-request-id":
            continue  # forwarded below, only as the handler validated it
        out.add(name, value)
    if client_request_id is not None:
        out["X-Request-Id"] = client_request_id
    if request_id_header and request_id_header not in out:
        out[request_id_header] = request_id
    if client_ip:
        prior = incoming.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
    if identity_encoding:
        out["Accept-Encoding"] = "identity"
    if authorization:
        out["Authorization"] = authorization
    for name, value in extra:
        out[name] = value
    return out


def response_headers(upstream: CIMultiDictProxy[str], *, keep_encoding: bool = True) -> CIMultiDict[str]:
    """Headers to relay to the client from the upstream response."""
    drop = _RESPONSE_DROP | _connection_listed(upstream)
    if not keep_encoding:
        drop = drop | {"content-encoding"}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in drop:
            out.add(name, value)
    return out


def code_class(status: int) -> str:
    return f"{status // 100}xx" if 200 <= status < 600 else "error"


def upstream_base(config: UpstreamConfig) -> str:
    return str(config.url).rstrip("/")


def upstream_target(config: UpstreamConfig) -> tuple[str, str | None]:
    """The base URL to send to, and the ``Authorization`` that the URL's credentials make.

    Credentials in the configured URL become the upstream's Authorization header, sent in
    place of the client's (as with ``api_key_env``): aiohttp refuses a URL with credentials
    next to an Authorization header, and they must not reach logs.
    """
    url = URL(str(config.url))
    auth: str | None = None
    if url.user is not None or url.password is not None:
        pair = f"{url.user or ''}:{url.password or ''}".encode()
        auth = "Basic " + base64.b64encode(pair).decode("ascii")
        url = url.with_user(None)
    return str(url).rstrip("/"), auth


def bearer_token(config: UpstreamConfig) -> str | None:
    """``Bearer <key>`` from the configured environment variable, if any."""
    if not config.api_key_env:
        return None
    key = os.environ.get(config.api_key_env)
    return f"Bearer {key}" if key else None


def create_session(config: UpstreamConfig) -> aiohttp.ClientSession:
    """The one shared session: keep-alive pool, connect/read timeouts, raw bodies, no cookie jar."""
    connector = aiohttp.TCPConnector(
        limit=config.max_connections,
        # One upstream host: ``limit`` already bounds it, and a per-host limit makes aiohttp
        # hash the connection key into a per-host set on every acquire and release.
        limit_per_host=0,
        keepalive_timeout=30,
        enable_cleanup_closed=False,
    )
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=config.connect_timeout_seconds,
        sock_connect=config.connect_timeout_seconds,
        sock_read=config.read_timeout_seconds,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        # Every client's request shares this session: a cookie jar would keep one client's
        # Set-Cookie and send it upstream on everyone's later requests. Cookies pass through
        # as the headers they are, both ways, and are never stored here.
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
        raise_for_status=False,
        trust_env=False,
    )
