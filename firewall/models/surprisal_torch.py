"""The per-token surprisal head, shared by the ONNX export and the torch runtime.

Detectors need, for each token, how surprised the reference model was to see it,
not the full next-token distribution. Returning full logits would move a
``batch x length x 49,152`` float tensor out of the runtime (400 MB at 32 x 64)
only for Python to reduce it to two numbers a token. This wrapper does the
reduction inside the graph, so both the exported ONNX model and the torch
backend return just ``[B, T-1]`` surprisal and entropy, in bits.

Two reductions compute the same numbers:

* ``reference`` (the default, and what the ONNX export uses, so exported graphs do
  not change): full logits, cast to float32, ``log_softmax``, ``exp``, product, sum.
  On a GPU at 32 x 128 that is ~8 GB of memory traffic over five full-vocabulary
  float32 temporaries.
* ``fused`` (the torch serving path): ``log_softmax`` reads the bf16 logits and writes
  float32 in one kernel, the entropy's product is taken in place, and the logits of
  the last position (which predicts nothing we score) are never computed. Where the
  model's logits are exactly ``lm_head(final hidden state)`` (Llama-family models,
  SmolLM2 included: no soft-capping or scaling) the head takes the decoder's hidden
  state and applies the output embedding itself, optionally ``chunk_rows`` token rows
  at a time, so the float32 temporaries of one chunk stay small (they fit a GPU's L2
  cache at 64-128 rows, and bound the CPU's transient memory). Other architectures
  reduce the model's own logits. The reducer can be swapped for a compiled one
  (:func:`compiled_reducer`): fused GPU kernels that write no float32 temporaries.

Importing this module imports torch: only the ``prepare`` step and the torch
backend do so.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any, Final, Literal

import torch

__all__ = [
    "CPU_CHUNK_ROWS",
    "CUDA_CHUNK_ROWS",
    "INV_LN2",
    "Reducer",
    "Reduction",
    "SurprisalHead",
    "compiled_reducer",
    "reduce_logits",
    "supports_hidden_path",
]

log = logging.getLogger("trigger_firewall.models")

INV_LN2: Final = 1.0 / math.log(2.0)

Reduction = Literal["reference", "fused"]
Reducer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# Model types whose transformers forward pass is exactly ``lm_head(last_hidden_state)``:
# no logit soft-capping (Gemma 2), no logit scale (Cohere, Granite). Anything else
# takes the model's own logits.
_HIDDEN_PATH_MODEL_TYPES: Final = frozenset({"llama", "mistral", "qwen2", "qwen3"})

#: Token rows per chunk of the fused reduction on CPU: bounds its float32 temporaries
#: (256 x 49,152 x 4 B = 50 MB each, instead of 400 MB at 32 x 64 unchunked).
CPU_CHUNK_ROWS: Final = 256
#: On CUDA: unchunked. Each chunk re-reads the whole output embedding (57 MB in bf16 for
#: SmolLM2, more than an H100's 50 MB L2), so chunks small enough to keep their
#: temporaries in L2 pay that read many times; loadtests/bench/gpu_reference_lm.py measures both.
CUDA_CHUNK_ROWS: Final[int | None] = None


def reduce_logits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, V]`` logits (any float dtype) and ``[N]`` target ids -> surprisal, entropy ``[N]`` in bits.

    float32 for the reduction even when the model runs in bf16: a log-softmax over
    49k entries in bf16 loses about two significant digits. ``log_softmax(dtype=)``
    casts inside its own kernel instead of materialising a float32 copy first.
    """
    logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
    surprisal = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * -INV_LN2
    entropy = logp.exp().mul_(logp).sum(dim=-1) * -INV_LN2
    return surprisal, entropy


def supports_hidden_path(lm: torch.nn.Module) -> bool:
    """True when ``lm``'s logits are ``lm_head(final hidden state)`` and both parts are reachable."""
    config = getattr(lm, "config", None)
    if getattr(config, "model_type", None) not in _HIDDEN_PATH_MODEL_TYPES:
        return False
    if any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale")):
        return False
    head = _output_embedding(lm)
    return (
        isinstance(head, torch.nn.Linear) and getattr(head, "bias", None) is None and _decoder(lm) is not None
    )


def _output_embedding(lm: torch.nn.Module) -> torch.nn.Module | None:
    get = getattr(lm, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, torch.nn.Module) else None


def _decoder(lm: torch.nn.Module) -> torch.nn.Module | None:
    get = getattr(lm, "get_decoder", None)
    decoder = get() if callable(get) else getattr(lm, "model", None)
    return decoder if isinstance(decoder, torch.nn.Module) and decoder is not lm else None


class SurprisalHead(torch.nn.Module):
    """Wraps a causal LM: ``(input_ids, attention_mask) -> (surprisal, entropy)``.

    * ``surprisal[b, t]`` = ``-log2 p(input_ids[b, t+1] | input_ids[b, :t+1])``: the
      surprisal of token ``t+1``; token 0 has none.
    * ``entropy[b, t]`` = the entropy (bits) of the distribution that predicted
      token ``t+1``: how uncertain the model was before it saw the token. A high
      surprisal where entropy is low is the signature of an out-of-place token.

    Batches are right-padded; both outputs are zero where the predicted token is
    padding. With right padding and a causal mask no real token ever attends to a
    pad, so a padded row scores exactly as it would alone. That is also why
    ``causal_only=True`` may leave the attention mask out of the model call (it still
    zeroes the padded outputs): the CUDA-graph path needs a forward pass without the
    host-side checks a mask-building path runs (see ``firewall.models.cuda_graphs``).

    ``reduction`` and ``chunk_rows`` pick how logits become bits (module docstring);
    every choice gives the same numbers within float32 rounding.
    """

    def __init__(
        self,
        lm: torch.nn.Module,
        *,
        causal_only: bool = False,
        reduction: Reduction = "reference",
        chunk_rows: int | None = None,
    ) -> None:
        super().__init__()
        if chunk_rows is not None and chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, not {chunk_rows}")
        self.lm = lm
        self.causal_only = causal_only
        self.reduction = reduction
        self.chunk_rows = chunk_rows
        #: Whether the fused reduction applies the output embedding itself (see module docstring).
        self.uses_hidden_states = reduction == "fused" and supports_hidden_path(lm)
        # (decoder, output embedding) in a tuple: submodules of ``lm``, not registered twice.
        self._parts: tuple[Any, Any] = (
            (_decoder(lm), _output_embedding(lm)) if self.uses_hidden_states else (None, None)
        )
        #: The fused reduction's kernel; :func:`compiled_reducer` may replace it.
        self.reduce: Reducer = reduce_logits

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": False}
        if not self.causal_only:
            kwargs["attention_mask"] = attention_mask
        if self.reduction == "reference":
            surprisal, entropy = self._reference(self.lm(**kwargs).logits, input_ids)
        else:
            surprisal, entropy = self._fused(kwargs, input_ids)
        keep = attention_mask[:, 1:].to(surprisal.dtype)
        return surprisal * keep, entropy * keep

    @staticmethod
    def _reference(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits[:, :-1, :].float()
        logp = torch.log_softmax(logits, dim=-1)
        target = input_ids[:, 1:].unsqueeze(-1)
        surprisal = -torch.gather(logp, -1, target).squeeze(-1) * INV_LN2
        entropy = -(torch.exp(logp) * logp).sum(dim=-1) * INV_LN2
        return surprisal, entropy

    def _fused(self, kwargs: dict[str, Any], input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, length = int(input_ids.shape[0]), int(input_ids.shape[1])
        targets = input_ids[:, 1:].reshape(-1)
        if not self.uses_hidden_states:
            logits = self.lm(**kwargs).logits[:, :-1, :]
            s, e = self.reduce(logits.reshape(-1, logits.shape[-1]), targets)
            return s.view(rows, length - 1), e.view(rows, length - 1)
        decoder, lm_head = self._parts
        hidden = decoder(**kwargs)[0][:, :-1, :]  # last_hidden_state, positions that predict a token
        hidden = hidden.reshape(-1, hidden.shape[-1])
        n = int(hidden.shape[0])
        step = self.chunk_rows or max(n, 1)
        parts = [
            self.reduce(lm_head(hidden[i : i + step]), targets[i : i + step])
            for i in range(0, max(n, 1), step)
        ]
        if len(parts) == 1:
            s, e = parts[0]
        else:
            s = torch.cat([p[0] for p in parts])
            e = torch.cat([p[1] for p in parts])
        return s.view(rows, length - 1), e.view(rows, length - 1)


def compiled_reducer(device: str, vocab: int, *, tolerance_bits: float = 1e-3) -> Reducer | None:
    """:func:`reduce_logits` compiled by ``torch.compile`` into fused kernels, or None.

    The eager reducer still writes and re-reads float32 ``[N, V]`` temporaries; the
    compiled one reads the bf16 logits (a few times) and writes no ``[N, V]`` tensor at
    all. Compiling happens
    here, before any CUDA graph capture (a compile inside a capture is illegal), for
    two row counts so that the dynamic-shape kernel every later bucket reuses exists.
    The compiled kernel must reproduce the eager numbers on bf16 logits within
    ``tolerance_bits``; any failure (no Triton, no C compiler, a numeric mismatch) is
    logged and returns None, and the caller keeps the eager reducer. The outcome is kept
    per (device, vocabulary): later callers share one compiled function, so its
    compiled variants never pile up against dynamo's recompile limit.
    """
    key = (device, vocab)
    if key not in _COMPILED:
        _COMPILED[key] = _compile_reducer(device, vocab, tolerance_bits)
    return _COMPILED[key]


_COMPILED: dict[tuple[str, int], Reducer | None] = {}


def _compile_reducer(device: str, vocab: int, tolerance_bits: float) -> Reducer | None:
    try:
        fn: Reducer = torch.compile(reduce_logits, fullgraph=True)
        generator = torch.Generator(device=device).manual_seed(0)
        worst = 0.0
        with torch.inference_mode(), warnings.catch_warnings():
            # Inductor says it split the vocabulary reduction instead of using online softmax
            # (measured on an H100: still 3 ms faster than eager at 32 x 128); not actionable.
            warnings.filterwarnings("ignore", message=".*[Oo]nline softmax is disabled", category=UserWarning)
            for rows in (7, 33):  # the second shape makes dynamo compile the dynamic kernel
                logits = (torch.randn(rows, vocab, device=device, generator=generator) * 4).to(torch.bfloat16)
                targets = torch.randint(0, vocab, (rows,), device=device, generator=generator)
                got = fn(logits, targets)
                want = reduce_logits(logits, targets)
                worst = max(worst, *(float((g - w).abs().max()) for g, w in zip(got, want, strict=True)))
        if not worst <= tolerance_bits:
            raise ValueError(f"compiled reduction differs from eager by {worst:.3g} bits")
    except Exception as exc:  # the eager reducer is always there: compiling is an optimisation
        log.warning(
            "compiled surprisal reduction unavailable; using the eager one",
            extra={"error": f"{type(exc).__name__}: {exc}"[:500]},
        )
        return None
    return fn
