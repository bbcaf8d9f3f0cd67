"""The firewall's exception tree.

::

    FirewallError                            reason (the bounded label it is counted under)
    ├── ConfigError            invalid or unreadable configuration           config_error
    ├── ProtocolError          a request the firewall cannot screen (4xx)    invalid_request
    │   ├── BodyTooLarge       413                                           body_too_large
    │   ├── UnsupportedEncoding 415                                          unsupported_encoding
    │   ├── InvalidUtf8        400                                           invalid_utf8
    │   ├── InvalidJson        400                                           invalid_json
    │   ├── AmbiguousJson      400 (duplicate or case-variant keys)          ambiguous_json
    │   ├── UnsafePath         400 (control characters, dot segments)        unsafe_path
    │   └── UnscreenableInput  400 (e.g. a prompt of token ids)              unscreenable_input
    ├── UpstreamError          the protected endpoint failed (answered 5xx)  error
    │   ├── UpstreamConnectError  502                                        connect_error
    │   └── UpstreamTimeout       504                                        timeout
    ├── UpstreamProbeError     a detector's own call to the upstream failed  error
    │   ├── UpstreamProbeTimeout                                             timeout
    │   └── UpstreamProbeUnavailable                                         unavailable
    └── DetectorError          a detector could not score                    exception
        ├── DetectorTimeout                                                  timeout
        └── DetectorUnavailable                                              unavailable

Each class carries its ``reason``, so code that counts a failure reads
``exc.reason`` instead of walking an ``isinstance`` ladder, and a new subclass
cannot be forgotten in one of several ladders.

Blocks are *not* exceptions: a block is a :class:`~firewall.core.types.Verdict`. An
exception here always means "something went wrong", and the proxy maps each
class to one HTTP status and one OpenAI-style error body.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousJson",
    "BodyTooLarge",
    "ConfigError",
    "DetectorError",
    "DetectorTimeout",
    "DetectorUnavailable",
    "FirewallError",
    "InvalidJson",
    "InvalidUtf8",
    "ModelNotAllowed",
    "ProtocolError",
    "UnsupportedEncoding",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProbeError",
    "UpstreamProbeTimeout",
    "UpstreamProbeUnavailable",
    "UnsafePath",
    "UnscreenableInput",
    "UpstreamTimeout",
]


class FirewallError(Exception):
    """Base class. ``status`` and ``code`` drive the HTTP answer."""

    status: int = 500
    code: str = "firewall_error"
    error_type: str = "server_error"
    #: The bounded label (metrics, audit) this failure is counted under.
    reason: str = "error"


class ConfigError(FirewallError):
    """The configuration is invalid; the message lists every problem with its path."""

    code = "config_error"
    reason = "config_error"


class ProtocolError(FirewallError):
    """The request cannot be screened (bad JSON, bad UTF-8, wrong shape)."""

    status = 400
    code = "invalid_request"
    error_type = "invalid_request_error"
    reason = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class BodyTooLarge(ProtocolError):
    status = 413
    code = "request_too_large"
    reason = "body_too_large"


class UnsupportedEncoding(ProtocolError):
    status = 415
    code = "unsupported_content_encoding"
    reason = "unsupported_encoding"


class InvalidUtf8(ProtocolError):
    """The body is not UTF-8, so it cannot be parsed (JSON is UTF-8 by RFC 8259)."""

    reason = "invalid_utf8"


class InvalidJson(ProtocolError):
    """The body is UTF-8 but not JSON."""

    reason = "invalid_json"


class AmbiguousJson(ProtocolError):
    """The body's JSON reads differently in different parsers (a key twice, or two keys
    equal but for case), so what the firewall screened may not be what the model gets."""

    code = "ambiguous_json"
    reason = "ambiguous_json"


class UnsafePath(ProtocolError):
    """The request path holds control characters or dot segments: servers and routers
    disagree on what such a path names, so it cannot be matched to a screened route."""

    code = "unsafe_path"
    reason = "unsafe_path"


class UnscreenableInput(ProtocolError):
    """A model-visible field in a form the firewall cannot read (a prompt of token ids)."""

    code = "unscreenable_input"
    reason = "unscreenable_input"


class ModelNotAllowed(ProtocolError):
    """The request names a model its route does not allow (``routes[].allowed_models``)."""

    status = 403
    code = "model_not_allowed"
    reason = "model_not_allowed"


class UpstreamError(FirewallError):
    """The protected endpoint could not be reached or answered badly."""

    status = 502
    code = "upstream_error"


class UpstreamConnectError(UpstreamError):
    status = 502
    code = "upstream_unavailable"
    reason = "connect_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    reason = "timeout"


class UpstreamProbeError(FirewallError):
    """A detector's call to the upstream failed (bad status, unreadable answer).

    Not an answer to the client: the detector that probes turns it into an error
    finding, and its fail mode decides.
    """


class UpstreamProbeTimeout(UpstreamProbeError):
    """The upstream did not answer a detector's call in time."""

    reason = "timeout"


class UpstreamProbeUnavailable(UpstreamProbeError):
    """No connection to the upstream (refused, reset, no session yet)."""

    reason = "unavailable"


class DetectorError(FirewallError):
    """A detector failed; the policy's fail mode decides what that means."""

    reason = "exception"

    def __init__(self, detector: str, message: str) -> None:
        super().__init__(f"{detector}: {message}")
        self.detector = detector


class DetectorTimeout(DetectorError):
    reason = "timeout"


class DetectorUnavailable(DetectorError):
    reason = "unavailable"
