"""STRIP's upstream-probing mode: the protected LLM itself scores the perturbed copies.

Why this exists
---------------
A generative endpoint has no local replica to run N copies through. What it does
have is the OpenAI ``logprobs`` option: asked for one token with
``top_logprobs: k``, it returns the k most likely first tokens and their
log-probabilities. A trigger that dominates the model makes that first-token
distribution confident whatever else the prompt says; perturbed copies of a
clean prompt scatter it. So STRIP's statistic carries over: the mean entropy of
the first-token distribution across N perturbed copies.

Each copy is a billed upstream call, so this mode is bounded three ways: a
per-request budget (copies beyond it are not sent, and are counted as
``over_budget``), a semaphore shared by all requests (at most
``concurrency`` probes in flight per detector), and the policy's cascade gate
(configure ``gate:`` on a cheap detector so probing runs only on suspicious
prompts). Every probe is counted in ``trigger_firewall_strip_probes_total``.

Entropy from ``top_logprobs``: the k listed probabilities ``p_i = exp(lp_i)``
and the unlisted tail mass ``t = 1 - sum(p_i)``, counted as one more outcome
(a lower bound on the true entropy: the tail could be spread over many tokens,
but how is unknown). When rounding makes the listed mass exceed 1 it is
renormalised and the tail is 0. The maximum is ``log2(k + 1)`` bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from firewall.core.detector_context import (
    DetectorContext,
    ProbeSender,
    UpstreamProbeError,
    all_or_first_error,
)

__all__ = ["ProbeSettings", "UpstreamProber", "first_token_entropy"]


class ProbeSettings(BaseModel):
    """``params.probe`` of a STRIP detector in ``mode: upstream``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field("/v1/chat/completions", description="Chat completions route on the upstream.")
    model: str | None = Field(None, description="Model named in probes; default: the request's model.")
    top_logprobs: int = Field(5, ge=1, le=20)
    concurrency: int = Field(8, ge=1, le=256, description="Probes in flight at once, all requests together.")
    budget: int = Field(32, ge=2, le=1024, description="Most probes one request may cost.")
    timeout_seconds: float = Field(5.0, gt=0)
    clean_entropy_q: float | None = Field(
        None,
        ge=0,
        description="Entropy (bits) below which 1% of clean prompts fall, measured on this upstream "
        "with these settings: maps to score 0.5. Without it the score is 1 - H / log2(k + 1).",
    )


def first_token_entropy(top_logprobs: Sequence[Any], k: int) -> float:
    """Entropy (bits) of the first-token distribution: the listed tokens plus the tail mass."""
    probs = []
    for item in top_logprobs[:k]:
        lp = item.get("logprob") if isinstance(item, dict) else None
        if isinstance(lp, int | float) and math.isfinite(lp):
            probs.append(math.exp(min(float(lp), 0.0)))
    if not probs:
        raise UpstreamProbeError("probe answer has no top_logprobs")
    total = sum(probs)
    if total > 1.0:
        probs = [p / total for p in probs]
        tail = 0.0
    else:
        tail = 1.0 - total
    return -sum(p * math.log2(p) for p in [*probs, tail] if p > 0.0)


def _top_logprobs(answer: Any) -> Sequence[Any]:
    try:
        first = answer["choices"][0]["logprobs"]["content"][0]
        items = first["top_logprobs"]
    except (KeyError, IndexError, TypeError) as exc:
        raise UpstreamProbeError("probe answer has no choices[0].logprobs.content[0]") from exc
    if not isinstance(items, list):
        raise UpstreamProbeError("top_logprobs is not a list")
    return items


class UpstreamProber:
    """Sends perturbed copies to the upstream and returns their first-token entropies."""

    def __init__(self, detector: str, settings: ProbeSettings, context: DetectorContext) -> None:
        if context.upstream is None:
            raise RuntimeError("upstream probing needs the firewall's upstream client (run it in the proxy)")
        self.settings = settings
        self.h_max = math.log2(settings.top_logprobs + 1)
        self._sender = ProbeSender(detector, context.upstream, context.metrics, settings.concurrency)

    def count(self, outcome: str, n: int = 1) -> None:
        self._sender.count(outcome, n)

    async def entropies(self, copies: Sequence[str], model: str | None) -> list[float]:
        """One probe per copy, at most ``concurrency`` in flight; the first failure cancels the rest."""
        return await all_or_first_error([self._probe(text, model) for text in copies])

    async def _probe(self, text: str, model: str | None) -> float:
        s = self.settings
        body: dict[str, Any] = {
            "model": s.model or model or "default",
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": s.top_logprobs,
        }
        return await self._sender.send(
            s.path,
            body,
            timeout_s=s.timeout_seconds,
            read=lambda answer: first_token_entropy(_top_logprobs(answer), s.top_logprobs),
        )
