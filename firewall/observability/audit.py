"""The JSON audit log: one line per screened request, evidence without the prompt.

Each event carries the request id, route, verdict, mode, per-detector scores and
evidence spans, latencies and a SHA-256 fingerprint of the screened text (an
HMAC when a salt is configured, so a hash cannot be used to confirm a guessed
prompt). Raw text appears only with ``audit.capture_text: true``.

Writing must never slow or fail a request: events are serialised with orjson into
an in-memory buffer, and a background task hands full buffers to a thread that
writes them. If the sink falls behind and the buffer reaches its bound, events
are dropped and counted (``trigger_firewall_audit_dropped_total``) instead of
growing memory or blocking the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

import orjson

from firewall.config.schema import AuditConfig
from firewall.core.types import Segment, Verdict
from firewall.observability.metrics import Metrics

__all__ = ["AuditLog", "fingerprint", "microseconds", "verdict_record"]

SCHEMA_VERSION = 1
log = logging.getLogger("trigger_firewall.audit")


def fingerprint(segments: Iterable[Segment], salt: bytes | None = None) -> tuple[str, int]:
    """A hex digest of the screened texts (role-tagged) and their total length.

    The digest covers ``role \x1f text`` per segment, joined by ``\x1e``; it is fed
    piece by piece (one pass, no joined copy of the prompt).
    """
    digest = hmac.new(salt, digestmod=hashlib.sha256) if salt else hashlib.sha256()
    update = digest.update
    chars = 0
    sep = b""
    for seg in segments:
        text = seg.text
        chars += len(text)
        update(sep + seg.role.encode("utf-8", "surrogatepass") + b"\x1f")
        update(text.encode("utf-8", "surrogatepass"))
        sep = b"\x1e"
    return digest.hexdigest(), chars


def microseconds(seconds: float) -> float:
    """``seconds`` rounded to the microsecond, as ``round(seconds, 6)`` gives for a duration.

    Half the cost of ``round()``, which converts through decimal digits; the audit line
    writes several durations for every request.
    """
    return int(seconds * 1e6 + 0.5) / 1e6


def verdict_record(verdict: Verdict) -> dict[str, Any]:
    """The decision and detector evidence of one phase, as audit fields.

    Built for every screened request, so it leans on orjson: tuples are written as
    arrays as they are, with no list copies.
    """
    fired, thresholds = verdict.fired, verdict.thresholds
    detectors: list[dict[str, Any]] = []
    for f in verdict.findings:
        name = f.detector
        score = f.score
        entry = {
            "name": name,
            "status": f.status,  # StrEnum members: orjson writes their values
            # round() goes through a decimal conversion; most scores are a plain 0.0
            "score": (round(score, 4) if score else score) if f.scored else None,
            "threshold": thresholds.get(name),
            "fired": name in fired,
            "reasons": f.reasons,
            "spans": [s.as_dict() for s in f.spans[:32]] if f.spans else (),
            "duration_seconds": microseconds(f.duration_seconds),
        }
        if f.error:
            entry["error"] = f.error
        detectors.append(entry)
    return {
        "mode": verdict.mode,
        "action": verdict.action,
        "effective_action": verdict.effective_action,
        "would_block": verdict.would_block,
        "reason_code": verdict.reason,
        "fail_open": verdict.fail_open,
        "detectors": detectors,
    }


class AuditLog:
    """Buffered, bounded, non-blocking writer of audit events."""

    FLUSH_INTERVAL = 0.2
    #: Wake the writer early only for this much pending data. Each write is a hand-off to a
    #: worker thread that must take the GIL from the busy event loop; at 64 KiB a saturated
    #: sidecar (~1 KB lines, thousands a second) handed off ~40 times a second, at 1 MiB the
    #: 0.2 s timer flushes first. What a crash can lose is still bounded by FLUSH_INTERVAL.
    EARLY_FLUSH_BYTES = 1024 * 1024

    def __init__(self, config: AuditConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        # Read for every request: plain attributes (a pydantic field read goes through
        # BaseModel's __getattr__ hook). A log's config never changes while it runs: the
        # audit section is one a reload cannot change (it needs a restart).
        self.enabled = config.enabled
        self.log_allowed = config.log_allowed
        self._max_buffer = config.max_buffer_bytes
        salt = os.environ.get(config.hash_salt_env) if config.hash_salt_env else None
        self.salt = salt.encode() if salt else None
        self._buf = bytearray()
        self._stream: IO[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # Held while buffered bytes are taken and written, so flush() and the writer task
        # never interleave two halves of the buffer and flush() returns only once its bytes
        # (and any write already under way) are on the stream.
        self._writing = asyncio.Lock()
        self._closing = False
        # Half the buffer bound when that is smaller: a small configured buffer must be handed
        # to the writer before it fills, or events between two timer flushes would be dropped.
        self._early_flush = min(self.EARLY_FLUSH_BYTES, config.max_buffer_bytes // 2)
        self._ts_second = -1
        self._ts_prefix = ""

    def _open(self) -> IO[bytes]:
        dest = self.config.destination
        if dest == "stdout":
            return sys.stdout.buffer
        if dest == "stderr":
            return sys.stderr.buffer
        return open(dest, "ab", buffering=0)

    async def start(self) -> None:
        if not self.enabled:
            return
        self._stream = self._open()
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._buf:
            await asyncio.to_thread(self._write, bytes(self._buf))
            self._buf.clear()
        if self._stream is not None and self.config.destination not in ("stdout", "stderr"):
            self._stream.close()
        self._stream = None

    def _timestamp(self) -> str:
        """RFC 3339 UTC with milliseconds; the date part is formatted once a second."""
        now = time.time()
        second = int(now)
        if second != self._ts_second:
            self._ts_second = second
            self._ts_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._ts_prefix}.{int((now - second) * 1000):03d}Z"

    def emit(self, event: dict[str, Any]) -> None:
        """Queue one event. Never raises, never blocks."""
        if not self.enabled:
            return
        event.setdefault("ts", self._timestamp())
        event.setdefault("event", "firewall.verdict")
        event.setdefault("schema_version", SCHEMA_VERSION)
        try:
            line = orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
        except (TypeError, orjson.JSONEncodeError) as exc:
            log.error("audit event not serialisable: %s", exc)
            self._dropped()
            return
        if len(self._buf) + len(line) > self._max_buffer:
            self._dropped()
            return
        self._buf += line
        if self.metrics is not None:
            self.metrics.count_audit()
        if len(self._buf) >= self._early_flush:
            self._wake.set()

    def _dropped(self, lines: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.count_audit(written=0, dropped=lines)

    def _write(self, data: bytes) -> None:
        stream = self._stream
        if stream is None:
            return
        stream.write(data)
        stream.flush()

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.FLUSH_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            await self._write_pending()

    async def _write_pending(self) -> None:
        async with self._writing:
            if not self._buf:
                return
            data = bytes(self._buf)
            self._buf.clear()
            try:
                await asyncio.to_thread(self._write, data)
            except OSError as exc:
                log.error("audit log write failed (%s); %d bytes lost", exc, len(data))
                self._dropped(data.count(b"\n"))

    async def flush(self) -> None:
        """Write every event queued so far; returns once they are on the stream.

        For tests and tools that read the log back; the server itself never waits on it.
        """
        if self._stream is not None:
            await self._write_pending()
