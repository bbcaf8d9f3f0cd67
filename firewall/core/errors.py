"""The firewall's exception tree.

::

    FirewallError
    ├── ConfigError            invalid or unreadable configuration
    ├── ProtocolError          a request the firewall cannot screen (answered 4xx)
    │   ├── BodyTooLarge       413
    │   └── UnsupportedEncoding 415
    ├── UpstreamError          the protected endpoint failed (answered 5xx)
    │   ├── UpstreamConnectError  502
    │   └── UpstreamTimeout       504
    └── DetectorError          a detector could not score
        ├── DetectorTimeout
        └── DetectorUnavailable

Blocks are *not* exceptions: a block is a :class:`~firewall.core.types.Verdict`. An
exception here always means "something went wrong", and the proxy maps each
class to one HTTP status and one OpenAI-style error body.
"""

from __future__ import annotations

__all__ = [
    "BodyTooLarge",
    "ConfigError",
    "DetectorError",
    "DetectorTimeout",
    "DetectorUnavailable",
    "FirewallError",
    "ProtocolError",
    "UnsupportedEncoding",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamTimeout",
]


class FirewallError(Exception):
    """Base class. ``status`` and ``code`` drive the HTTP answer."""

    status: int = 500
    code: str = "firewall_error"
    error_type: str = "server_error"


class ConfigError(FirewallError):
    """The configuration is invalid; the message lists every problem with its path."""

    code = "config_error"


class ProtocolError(FirewallError):
    """The request cannot be screened (bad JSON, bad UTF-8, wrong shape)."""

    status = 400
    code = "invalid_request"
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class BodyTooLarge(ProtocolError):
    status = 413
    code = "request_too_large"


class UnsupportedEncoding(ProtocolError):
    status = 415
    code = "unsupported_content_encoding"


class UpstreamError(FirewallError):
    """The protected endpoint could not be reached or answered badly."""

    status = 502
    code = "upstream_error"


class UpstreamConnectError(UpstreamError):
    status = 502
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class DetectorError(FirewallError):
    """A detector failed; the policy's fail mode decides what that means."""

    def __init__(self, detector: str, message: str) -> None:
        super().__init__(f"{detector}: {message}")
        self.detector = detector


class DetectorTimeout(DetectorError):
    pass


class DetectorUnavailable(DetectorError):
    pass
