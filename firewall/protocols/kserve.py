"""The KServe v2 (Open Inference Protocol) REST API, and Triton's generate extension.

**Inference** (``/v2/models/{model}/infer``, and with ``/versions/{version}``): a
request is a list of named tensors. Text travels as ``BYTES`` tensors, whose ``data``
holds strings (nested as the ``shape`` says): every one of them is screened, whatever
the tensor's name, since the model decides what a name means. Integer tensors are
what a pre-tokenised prompt looks like (``input_ids``); they carry no text a detector
can read and are refused unless the route says ``token_ids: forward_unscreened``.
Floating-point and boolean tensors (images, masks, embeddings) are forwarded: no text
detector reads them (a published blind spot: an ``inputs_embeds`` tensor is a prompt
nobody screens). The binary tensor extension (a body that is not pure JSON) is not
read and is refused as invalid JSON. Output: the strings of ``BYTES`` output tensors.

**Generate** (``/v2/models/{model}/generate`` and ``/generate_stream``): the body's
top-level keys are the model's inputs (``text_input`` by convention, but any name): every
string under them is screened, and a list of integers is refused like a token-id tensor.
``parameters`` holds settings, not inputs, and ``id`` is the caller's tag. Output: every
string of the answer except its ``model_name``, ``model_version`` and ``id``; streams
are SSE events of that shape, without ``[DONE]``. A blocked stream ends with an
``{"error": ...}`` event, the form Triton uses for a failed stream.
"""

from __future__ import annotations

from typing import Any

from firewall.core.errors import ProtocolError, UnscreenableInput
from firewall.core.types import Segment
from firewall.protocols.base import StreamState, TokenIdsAdapter, sse_event
from firewall.protocols.fields import holds_token_ids, pointer_token, require_object, string_leaves

__all__ = ["KServeInferAdapter", "TritonGenerateAdapter"]

_INTEGER_TYPES = frozenset(("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"))
_CHANNEL = "0"
#: Answer fields of the generate extension that name the model, not what it wrote.
_ANSWER_LABELS = frozenset(("model_name", "model_version", "id"))


def _refuse_ids(source: str) -> UnscreenableInput:
    return UnscreenableInput(
        f"{source.lstrip('/')} holds integers (token ids, as a pre-tokenised prompt would), which "
        "cannot be screened; send text.",
        param=source.lstrip("/"),
    )


def _tensor_strings(
    tensors: Any, key: str, role: str, out: list[Segment], *, strict: bool, refuse: bool
) -> None:
    if not isinstance(tensors, list):
        if strict:
            raise ProtocolError(f"'{key}' must be an array of tensors", param=key)
        return
    for i, tensor in enumerate(tensors):
        where = f"/{key}/{i}"
        if not isinstance(tensor, dict):
            if strict:
                raise ProtocolError(f"{key}[{i}] must be an object", param=key)
            continue
        datatype = tensor.get("datatype")
        if datatype == "BYTES":
            string_leaves(tensor.get("data"), f"{where}/data", role, out)
        elif strict and refuse and datatype in _INTEGER_TYPES:
            raise _refuse_ids(f"{where}/data")
        elif strict and not isinstance(datatype, str):
            raise ProtocolError(f"{key}[{i}].datatype must be a string", param=key)


class _OipAdapter(TokenIdsAdapter):
    """What the Open Inference Protocol's endpoints share: their error envelope."""

    def error_body(self, message: str, *, code: str, error_type: str, param: str | None) -> dict[str, Any]:
        """The protocol's error (``{"error": message}``), with the code beside it."""
        return {"error": message, "code": code}


class KServeInferAdapter(_OipAdapter):
    """``/v2/models/{model}/infer``."""

    name = "kserve_v2_infer"
    prompt_param = "inputs"

    def wants_stream(self, body: Any) -> bool:
        return False

    def input_segments(self, body: Any) -> list[Segment]:
        body = require_object(body)
        out: list[Segment] = []
        _tensor_strings(body.get("inputs"), "inputs", "user", out, strict=True, refuse=self.refuse_token_ids)
        return out

    def output_segments(self, body: Any) -> list[Segment]:
        out: list[Segment] = []
        if isinstance(body, dict):
            _tensor_strings(body.get("outputs"), "outputs", "assistant", out, strict=False, refuse=False)
        return out

    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        return []


class TritonGenerateAdapter(_OipAdapter):
    """``/v2/models/{model}/generate`` and ``/generate_stream``."""

    name = "triton_generate"
    prompt_param = "text_input"
    uses_done_sentinel = False

    def input_segments(self, body: Any) -> list[Segment]:
        out: list[Segment] = []
        for key, value in require_object(body).items():
            if key in ("parameters", "id"):
                continue
            where = f"/{pointer_token(key)}"
            if self.refuse_token_ids and holds_token_ids(value):
                raise _refuse_ids(where)
            string_leaves(value, where, "user", out)
        return out

    def _answer_segments(self, body: Any, out: list[Segment]) -> None:
        if isinstance(body, dict):
            for key, value in body.items():
                if key not in _ANSWER_LABELS:
                    string_leaves(value, f"/{pointer_token(key)}", "assistant", out)

    def output_segments(self, body: Any) -> list[Segment]:
        out: list[Segment] = []
        self._answer_segments(body, out)
        return out

    def stream_deltas(self, data: Any, state: StreamState) -> list[tuple[str, str]]:
        if not isinstance(data, dict) or "error" in data:
            return []
        state.see_channel(_CHANNEL)
        if state.model is None and isinstance(data.get("model_name"), str):
            state.model = data["model_name"]
        parts: list[Segment] = []
        self._answer_segments(data, parts)
        return [(_CHANNEL, s.text) for s in parts if s.text]

    def terminal_events(self, state: StreamState, message: str, style: str) -> bytes:
        return sse_event({"error": message})
