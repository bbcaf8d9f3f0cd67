"""Shape-bucketed CUDA graphs for the reference model's surprisal head.

Why this exists: on a large GPU the eager forward pass of a 30-layer, 135M-parameter
model is bound by kernel launches, not arithmetic. Measured on an H200 with the
SmolLM2 architecture, eager bf16 took ~20 ms whatever the batch (p99 ~50 ms at
32 x 128 under the serving path), while the same head replayed from a CUDA graph
took ~5 ms. A CUDA graph records the kernels of one forward pass for fixed
tensor shapes and replays them with one launch, so the serving path pads every
batch up to one of a few (rows, length) buckets and keeps one graph per bucket.

Two details make the graphs safe to capture and exact:

* The head is called **causal-only** (no attention mask to the model). Rows are
  right-padded, and under a causal mask a real token never attends to a later
  position, so it scores exactly as without padding; the padded positions'
  outputs are zeroed by the caller's mask. Leaving the mask out also removes the
  data-dependent checks (``mask.all()``) that a mask-building path runs on the host,
  which are illegal while a stream is being captured.
* All graphs share one memory pool and are captured largest first, so the pool is
  sized once by the largest bucket; graphs never run concurrently (the backend
  serialises forward passes), which is what sharing a pool requires.

On CPU (tests, CI) the same bucketing and padding run eagerly: the numbers a graph
replays are the numbers the eager head computes for the padded bucket, which the
tests compare with unpadded rows on the real model.

Importing this module imports torch: only the torch backend does so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

__all__ = ["GraphMode", "GraphedSurprisal", "batch_buckets", "length_buckets", "pick_bucket"]

log = logging.getLogger("trigger_firewall.models")

GraphMode = Literal["graphs", "compile", "eager"]
Head = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_WARMUP_RUNS = 3  # eager runs on a side stream before capture (cuBLAS handles, allocator)
_MIN_LENGTH_BUCKET = 16


def length_buckets(max_tokens: int, smallest: int = _MIN_LENGTH_BUCKET) -> tuple[int, ...]:
    """Powers of two from ``smallest`` up to ``max_tokens``, and ``max_tokens`` itself."""
    out: list[int] = []
    n = smallest
    while n < max_tokens:
        out.append(n)
        n *= 2
    out.append(max_tokens)
    return tuple(out)


def batch_buckets(max_rows: int) -> tuple[int, ...]:
    """Powers of two up to ``max_rows``, and ``max_rows`` itself."""
    out: list[int] = []
    n = 1
    while n < max_rows:
        out.append(n)
        n *= 2
    out.append(max_rows)
    return tuple(out)


def pick_bucket(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket that holds ``n``; ``None`` when none does."""
    for b in buckets:
        if b >= n:
            return b
    return None


class _Graph:
    """One captured forward pass: static inputs in, static outputs out."""

    __slots__ = ("entropy", "graph", "ids", "mask", "surprisal")

    def __init__(
        self,
        graph: Any,
        ids: torch.Tensor,
        mask: torch.Tensor,
        surprisal: torch.Tensor,
        entropy: torch.Tensor,
    ) -> None:
        self.graph = graph
        self.ids = ids
        self.mask = mask
        self.surprisal = surprisal
        self.entropy = entropy


class GraphedSurprisal:
    """Runs a causal-only surprisal head at bucketed shapes, from CUDA graphs on a GPU.

    ``head(ids, mask)`` must ignore padding by causality (see the module docstring):
    :class:`~firewall.models.surprisal_torch.SurprisalHead` with ``causal_only=True``.
    Call :meth:`warmup` once at start-up (it captures every bucket: seconds, not
    minutes); :meth:`__call__` then pads to the bucket, replays and slices.
    ``mode`` picks the engine: ``graphs`` (manual CUDA graph capture, CUDA only),
    ``compile`` (``torch.compile`` with CUDA graphs, ``mode="reduce-overhead"``) or
    ``eager`` (bucketing only). A capture that fails falls back to eager for that
    bucket, logged once.
    """

    def __init__(
        self,
        head: Head,
        device: str,
        *,
        max_rows: int,
        max_tokens: int,
        mode: GraphMode = "graphs",
        pad_id: int = 0,
    ) -> None:
        if mode != "eager" and device != "cuda":
            raise ValueError(f"mode {mode!r} needs a CUDA device, not {device!r}")
        self.device = device
        self.mode = mode
        self.pad_id = pad_id
        self.rows = batch_buckets(max_rows)
        self.lengths = length_buckets(max_tokens)
        self._head = head
        self._run: Head = head
        if mode == "compile":
            self._run = torch.compile(head, mode="reduce-overhead", dynamic=False)
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._failed: set[tuple[int, int]] = set()
        self._pool: Any = None

    # -- start-up ------------------------------------------------------------------

    def warmup(self) -> dict[str, Any]:
        """Capture (or compile, or just run) every bucket once; returns timings for the log."""
        t0 = time.perf_counter()
        shapes = sorted(((b, n) for b in self.rows for n in self.lengths), key=lambda s: -s[0] * s[1])
        with torch.inference_mode():
            for rows, length in shapes:
                if self.mode == "graphs":
                    self._capture(rows, length)
                else:
                    ids = torch.full((rows, length), self.pad_id, dtype=torch.long, device=self.device)
                    self._run(ids, torch.ones_like(ids))
        if self.device == "cuda":
            torch.cuda.synchronize()
        info = {
            "mode": self.mode,
            "buckets": len(shapes),
            "captured": len(self._graphs),
            "failed": len(self._failed),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        log.info("reference model CUDA graphs ready", extra=info)
        return info

    def _capture(self, rows: int, length: int) -> None:
        key = (rows, length)
        ids = torch.full((rows, length), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.ones_like(ids)
        cuda: Any = torch.cuda  # its stream and graph classes are untyped
        try:
            side = cuda.Stream()
            side.wait_stream(cuda.current_stream())
            with cuda.stream(side):
                for _ in range(_WARMUP_RUNS):
                    self._head(ids, mask)
            cuda.current_stream().wait_stream(side)
            if self._pool is None:
                self._pool = cuda.graph_pool_handle()
            graph = cuda.CUDAGraph()
            with cuda.graph(graph, pool=self._pool):
                surprisal, entropy = self._head(ids, mask)
        except Exception as exc:  # a model whose forward pass cannot be captured: run it eagerly
            if not self._failed:
                log.warning(
                    "CUDA graph capture failed; running eagerly",
                    extra={"rows": rows, "length": length, "error": f"{type(exc).__name__}: {exc}"},
                )
            self._failed.add(key)
            return
        self._graphs[key] = _Graph(graph, ids, mask, surprisal, entropy)

    # -- serving -------------------------------------------------------------------

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Surprisal and entropy ``[B, T-1]`` for right-padded ``ids``/``mask`` ``[B, T]``."""
        rows, length = int(ids.shape[0]), int(ids.shape[1])
        b = pick_bucket(rows, self.rows)
        n = pick_bucket(length, self.lengths)
        if b is None or n is None:  # larger than any bucket: the caller's limits were raised
            surprisal, entropy = self._head(ids, mask)
            return surprisal, entropy
        graph = self._graphs.get((b, n))
        if graph is not None:
            graph.ids.fill_(self.pad_id)
            graph.mask.zero_()
            graph.ids[:rows, :length].copy_(ids)
            graph.mask[:rows, :length].copy_(mask)
            graph.graph.replay()
            keep = mask[:, 1:].to(graph.surprisal.dtype)
            return (
                graph.surprisal[:rows, : length - 1] * keep,
                graph.entropy[:rows, : length - 1] * keep,
            )
        padded_ids = torch.full((b, n), self.pad_id, dtype=ids.dtype, device=ids.device)
        padded_mask = torch.zeros((b, n), dtype=mask.dtype, device=mask.device)
        padded_ids[:rows, :length] = ids
        padded_mask[:rows, :length] = mask
        surprisal, entropy = self._run(padded_ids, padded_mask)
        keep = mask[:, 1:].to(surprisal.dtype)
        return surprisal[:rows, : length - 1] * keep, entropy[:rows, : length - 1] * keep
