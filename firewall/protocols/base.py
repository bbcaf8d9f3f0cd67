"""The protocol adapter seam: how one API's bodies turn into texts, and back.

An adapter knows one wire format (OpenAI chat, Responses, a JSON route with
configured pointers): which texts to screen in a request and a response, which
text each SSE event adds to which channel (choice), and how to render the
events that end a blocked stream in that format. ``streaming.py`` stays
protocol-agnostic by asking the adapter.

Adapters work on already-parsed JSON (orjson output) and raise
:class:`~firewall.core.errors.ProtocolError` when a screened body has the wrong shape,
so the proxy answers 400 instead of forwarding something it could not read.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from firewall.core.types import Phase, Segment

__all__ = ["ProtocolAdapter", "StreamState", "TokenIdsAdapter", "error_body", "probe_fields", "sse_event"]


@dataclass(slots=True)
class StreamState:
    """What an adapter remembers about a stream to render its terminal events."""

    response_id: str | None = None
    model: str | None = None
    created: int | None = None
    channels: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def see_channel(self, channel: str) -> None:
        if channel not in self.channels:
            self.channels.append(channel)


def error_body(message: str, *, code: str, error_type: str, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error envelope that SDK clients parse (message is always a string)."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def sse_event(data: Any, event: str | None = None) -> bytes:
    """Render one SSE event (``data`` as JSON unless it is already bytes)."""
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + payload + b"\n\n"


DONE_EVENT = b"data: [DONE]\n\n"


def probe_fields(body: Any, *, drop: Iterable[str], put: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` without the keys in ``drop`` and with those of ``put``: a probe's body.

    A shallow copy: the request's own nested values (its messages) are shared, never changed.
    """
    if not isinstance(body, dict):
        raise ValueError("a probe is made from a JSON object")
    dropped = set(drop)
    out = {k: v for k, v in body.items() if k not in dropped}
    out.update(put)
    return out


class ProtocolAdapter(abc.ABC):
    """One API's request/response/stream shapes."""

    name: str = "base"
    #: Whether a normal stream of this protocol ends with ``data: [DONE]``.
    uses_done_sentinel: bool = True
    #: The request field that carries the prompt, named as ``param`` in a block's error body.
    prompt_param: str | None = None
    #: Whether this protocol's responses carry text to screen (embeddings answer vectors).
    has_output_text: bool = True
    #: How a behavioural check asks the model again about a request of this protocol: as an
    #: OpenAI chat request, as a text completion, or not at all (``None``).
    reprompt: Literal["chat", "completions"] | None = None
    #: Whether :meth:`probe_body` knows this API, so that a request can be asked again in its
    #: own shape with everything that could have effects or cost taken out. An adapter that
    #: does not know its API's fields (a generic JSON route) leaves it ``False``: its requests
    #: are resent only on routes a behavioural detector is explicitly told to resend.
    probe_safe: bool = False

    def screens(self, phase: Phase) -> bool:
        """Whether requests (input) or responses (output) of this protocol carry text at all.

        The policy drops a phase's detectors on a route whose adapter says no, so the
        proxy never reads a body it has nothing to screen in.
        """
        return self.has_output_text if phase is Phase.OUTPUT else True

    @abc.abstractmethod
    def input_segments(self, body: Any) -> list[Segment]:
        """Texts to screen in a request body, with roles and JSON-pointer sources."""

    @abc.abstractmethod
    def output_segments(self, body: Any) -> list[Segment]:
        """Texts to screen in a non-streaming response body."""

    @abc.abstractmethod
    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        """``(channel, text)`` pairs one SSE event's JSON adds; updates ``state``."""

    def wants_stream(self, body: Any) -> bool:
        return isinstance(body, dict) and body.get("stream") is True

    def model(self, body: Any) -> str | None:
        if isinstance(body, dict):
            value = body.get("model")
            if isinstance(value, str):
                return value
        return None

    def terminal_events(self, state: StreamState, message: str, style: str) -> bytes:
        """Events that end a blocked stream cleanly. The default is the error style."""
        body = error_body(message, code="content_filter", error_type="invalid_request_error")
        return sse_event(body)

    def filtered_response(self, body: Any, message: str) -> Any | None:
        """A 200 body in the API's own shape with the content withheld, or ``None``
        when the protocol has no such shape (the proxy then answers an error)."""
        return None

    def probe_path(self, path: str) -> str:
        """Where a probe of a request that came on ``path`` goes (a streaming-only path is
        mapped to its one-answer twin)."""
        return path

    def probe_body(self, body: Any, max_tokens: int, seed: int) -> Any:
        """An edited copy of a request made into a probe: a short, deterministic answer, no
        tools, no streaming, nothing stored, one answer. The base knows no API and returns
        ``body`` as it is (see :attr:`probe_safe`). Raises ``ValueError`` for a body that
        cannot be made a probe."""
        return body

    def probe_text(self, answer: Any) -> str:
        """What the model said in a probe's answer: the texts the output phase would screen."""
        return "\n".join(s.text for s in self.output_segments(answer))

    def error_body(self, message: str, *, code: str, error_type: str, param: str | None) -> dict[str, Any]:
        """The JSON of an error the firewall answers on this API (a block, a refusal): the
        envelope this API's clients read. The OpenAI envelope unless an adapter says otherwise;
        every envelope keeps the machine-readable ``code``."""
        return error_body(message, code=code, error_type=error_type, param=param)


class TokenIdsAdapter(ProtocolAdapter):
    """An API whose prompts may be token ids: refused (``unscreenable_input``) unless the
    route says ``token_ids: forward_unscreened``."""

    def __init__(self, *, refuse_token_ids: bool = True) -> None:
        self.refuse_token_ids = refuse_token_ids
