"""Which model the upstream says answered, and when that changes.

Why this exists
---------------
A backdoored model rarely arrives through the front door. It arrives as a silent swap:
a new checkpoint behind the same endpoint, an adapter hot-loaded into the serving engine,
a provider's "minor update". Every OpenAI-compatible server says in each answer which model
answered (``model``), and OpenAI's API also says which backend configuration did
(``system_fingerprint``). The firewall reads both from the answers it relays anyway, keeps
the last value per route and requested model, and counts a change
(``trigger_firewall_upstream_identity_changes_total{route,field}``), logs it and writes it
on that request's audit line. The alert ``TriggerFirewallUpstreamModelChanged`` turns the
count into a page for a human to confirm the change was planned.

What it reads
-------------
Top-level ``model`` and ``system_fingerprint`` of a JSON answer or of a stream's events,
or the same fields one level down under ``response`` or ``message`` (how the Responses and
Anthropic streams open). Only 2xx answers are read. A non-streamed answer is read when it
is held whole anyway and small: an unscreened one of up to 64 KiB (the relay holds up to
256 KiB with a Content-Length whole; a larger one, an embeddings answer say, is not parsed
for this alone), or any answer the output phase screens. A stream is read until its first
event that names the model (within its first 16 KiB), so a stream costs one parse.

Keys and bounds
---------------
The key is ``(route, requested model)``: one endpoint may serve several models, and a
server that answers ``gpt-4o-2024-08-06`` for ``gpt-4o`` is consistent as long as it keeps
doing so. Requested model names come from clients, so they never become metric labels, and
the table keeps at most ``max_keys`` of them (least recently seen dropped first). A value is
cut at :data:`MAX_VALUE_CHARS` characters. The first answer seen for a key is a baseline,
not a change: after a restart the first answers set the baseline again, which is why the
alert also belongs next to a deploy check of the model itself (``trigger-firewall models
verify`` for what the firewall loads).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

__all__ = ["MAX_VALUE_CHARS", "IdentityChange", "UpstreamIdentity", "identity_fields", "stream_identity"]

log = logging.getLogger("trigger_firewall.identity")

#: Longer values are cut: a model name is short, and a log line must stay bounded.
MAX_VALUE_CHARS: Final = 200
#: Objects one level down that carry the identity in some protocols' stream events.
_NESTED: Final = ("response", "message")


@dataclass(frozen=True, slots=True)
class IdentityChange:
    """One watched field that differs from what the same route and model answered before."""

    field: str
    before: str
    after: str

    def as_audit(self) -> dict[str, str]:
        return {"field": self.field, "before": self.before, "after": self.after}


def identity_fields(body: Any, watched: Iterable[str]) -> dict[str, str]:
    """The watched fields a JSON answer (or one stream event) names, as strings."""
    if not isinstance(body, dict):
        return {}
    found: dict[str, str] = {}
    for name in watched:
        value = body.get(name)
        if not isinstance(value, str):
            for key in _NESTED:
                inner = body.get(key)
                if isinstance(inner, dict) and isinstance(inner.get(name), str):
                    value = inner[name]
                    break
        if isinstance(value, str) and value:
            found[name] = value[:MAX_VALUE_CHARS]
    return found


def stream_identity(chunk: bytes, watched: Iterable[str]) -> dict[str, str] | None:
    """The identity named by the first complete JSON line of a stream chunk (SSE ``data:`` or
    an NDJSON line); ``None`` when the chunk holds no such line yet (read the next one)."""
    for line in chunk.split(b"\n")[:-1]:  # the last piece may be an unfinished line
        line = line.strip()
        if line.startswith(b"data:"):
            line = line[5:].strip()
        if not line.startswith(b"{"):
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        fields = identity_fields(event, watched)
        if fields:
            return fields
    return None


class UpstreamIdentity:
    """The last identity answered per ``(route, requested model)``; only the event loop uses it."""

    def __init__(self, max_keys: int = 1024) -> None:
        self.max_keys = max_keys
        self._seen: OrderedDict[tuple[str, str], dict[str, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def observe(self, route: str, requested: str | None, answered: Mapping[str, str]) -> list[IdentityChange]:
        """Record ``answered``; return each field that differs from the last answer for this key."""
        if not answered:
            return []
        key = (route, requested or "")
        last = self._seen.get(key)
        if last == answered:  # the usual case: the same model as last time
            self._seen.move_to_end(key)
            return []
        if last is None:
            self._seen[key] = dict(answered)
            if len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            log.info(
                "upstream identity first seen",
                extra={"route": route, "requested_model": key[1][:MAX_VALUE_CHARS], **answered},
            )
            return []
        self._seen.move_to_end(key)
        changes = [
            IdentityChange(name, last[name], value)
            for name, value in answered.items()
            if name in last and last[name] != value
        ]
        last.update(answered)
        for change in changes:
            log.warning(
                "upstream identity changed",
                extra={
                    "route": route,
                    "requested_model": key[1][:MAX_VALUE_CHARS],
                    "field": change.field,
                    "before": change.before,
                    "after": change.after,
                },
            )
        return changes
