"""Operational logging: one JSON object per line on stderr.

Kept apart from the audit log (stdout by default) so a log pipeline can route
security events and operational noise differently. Messages never carry prompt
text; request ids travel in the ``request_id`` field when a caller passes it in
``extra``.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson
from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["JsonFormatter", "MalformedRequestFilter", "setup_logging"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class MalformedRequestFilter(logging.Filter):
    """Keep raw request bytes out of the log when aiohttp rejects a malformed request.

    aiohttp answers an unparsable request (bad header bytes, conflicting
    Content-Length and Transfer-Encoding) with 400 itself and logs the parser's
    exception at error level; that exception's text quotes the offending header
    line, which may be an ``Authorization`` value. The record keeps its place in
    the log as a warning that names only the error class.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "malformed HTTP request rejected"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.__dict__["error"] = f"{type(exc).__name__} {exc.code}"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                event[key] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(event, default=str).decode()


def setup_logging(level: str = "info", json_format: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_format else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would duplicate the audit log and carry raw paths.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
