"""Request ids: the firewall's own (a UUID every upstream accepts) and the client's.

The firewall names every request with a random UUID (version 4, RFC 9562). The audit
log's ``request_id`` is always that id, so a client cannot choose or collide with the
firewall's correlation key. Model servers that validate the header (llama-cpp-python's
server answers 400 to an ``X-Request-Id`` that is not a UUID) accept it.

The id a client sends in ``X-Request-Id`` is kept apart: forwarded upstream and echoed in
the response as it is when it is a plain token (letters, digits, ``._:-``, at most 128
characters), and recorded as the audit field ``client_request_id``. Anything else is
dropped, never forwarded or echoed.

Random bytes are read from the OS 4 KiB at a time (256 ids a read), so an id costs a
slice and a format, not a system call.
"""

from __future__ import annotations

import os
import re

__all__ = ["client_request_id", "new_request_id"]

_CLIENT_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_VARIANT = "89ab89ab89ab89ab"  # a hex digit's two low bits under the RFC 9562 variant bits (10xx)


class _RandomIds:
    __slots__ = ("_buf", "_pid", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        self._pid = 0

    def next(self) -> str:
        pid = os.getpid()
        if self._pos >= len(self._buf) or pid != self._pid:  # a forked child must not reuse bytes
            self._buf = os.urandom(4096)
            self._pos = 0
            self._pid = pid
        h = self._buf[self._pos : self._pos + 16].hex()
        self._pos += 16
        # 122 random bits; the version digit is 4 and the variant digit one of 8, 9, a, b.
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16)]}{h[17:20]}-{h[20:]}"


_IDS = _RandomIds()


def new_request_id() -> str:
    """A fresh random UUID (version 4) in its canonical 36-character form."""
    return _IDS.next()


def client_request_id(value: str | None) -> str | None:
    """The client's ``X-Request-Id`` when it is a plain token, else ``None`` (dropped)."""
    if value and _CLIENT_ID.fullmatch(value):
        return value
    return None
