"""The per-token surprisal head, shared by the ONNX export and the torch runtime.

Detectors need, for each token, how surprised the reference model was to see it,
not the full next-token distribution. Returning full logits would move a
``batch x length x 49,152`` float tensor out of the runtime (400 MB at 32 x 64)
only for Python to reduce it to two numbers a token. This wrapper does the
reduction inside the graph, so both the exported ONNX model and the torch
backend return just ``[B, T-1]`` surprisal and entropy, in bits.

One module, used for export and for serving, means the two backends compute the
same thing by construction; the preparation step checks they also agree in numbers.

Importing this module imports torch: only the ``prepare`` step and the torch
backend do so.
"""

from __future__ import annotations

import math
from typing import Final

import torch

__all__ = ["INV_LN2", "SurprisalHead"]

INV_LN2: Final = 1.0 / math.log(2.0)


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
    """

    def __init__(self, lm: torch.nn.Module, *, causal_only: bool = False) -> None:
        super().__init__()
        self.lm = lm
        self.causal_only = causal_only

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.causal_only:
            out = self.lm(input_ids=input_ids, use_cache=False)
        else:
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        # float32 for the reduction even when the model runs in bf16: a log-softmax over
        # 49k entries in bf16 loses about two significant digits.
        logits = out.logits[:, :-1, :].float()
        logp = torch.log_softmax(logits, dim=-1)
        target = input_ids[:, 1:].unsqueeze(-1)
        surprisal = -torch.gather(logp, -1, target).squeeze(-1) * INV_LN2
        entropy = -(torch.exp(logp) * logp).sum(dim=-1) * INV_LN2
        keep = attention_mask[:, 1:].to(surprisal.dtype)
        return surprisal * keep, entropy * keep
