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

Around the replay the host does as little as it can, because at small batches host
time is most of the latency: it pads the batch into a (pinned) staging buffer of the
bucket's shape, one copy moves ids and mask to the device, one copy moves surprisal
and entropy back (the graph stacks them), and the stream is synchronised once
(:meth:`GraphedSurprisal.run_numpy`).

On CPU (tests, CI) the same bucketing, staging and padding run eagerly (``mode="eager"``):
the numbers a graph replays are the numbers the eager head computes for the padded
bucket, which the tests compare with unpadded rows on the real model.

Importing this module imports torch: only the torch backend does so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
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


class _Bucket:
    """One (rows, length) shape's static buffers and the way to refill its outputs.

    ``inputs[0]`` holds the ids and ``inputs[1]`` the mask, so one host-to-device copy
    refills both; ``outputs[0]``/``outputs[1]`` hold surprisal/entropy ``[rows, length-1]``,
    so one copy brings both back. ``graph`` is the captured CUDA graph, or None in eager
    mode (the head then runs on the static buffers: the same host path, on any device).
    """

    __slots__ = ("graph", "head", "inputs", "outputs")

    def __init__(self, graph: Any, head: Head | None, inputs: torch.Tensor, outputs: torch.Tensor) -> None:
        self.graph = graph
        self.head = head
        self.inputs = inputs
        self.outputs = outputs

    def replay(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        elif self.head is not None:
            surprisal, entropy = self.head(self.inputs[0], self.inputs[1])
            self.outputs[0].copy_(surprisal)
            self.outputs[1].copy_(entropy)


class GraphedSurprisal:
    """Runs a causal-only surprisal head at bucketed shapes, from CUDA graphs on a GPU.

    ``head(ids, mask)`` must ignore padding by causality (see the module docstring):
    :class:`~firewall.models.surprisal_torch.SurprisalHead` with ``causal_only=True``.
    Call :meth:`warmup` once at start-up (it captures every bucket: seconds, not
    minutes); :meth:`run_numpy` (the serving path) or :meth:`__call__` then pads to the
    bucket, replays and slices. ``mode`` picks the engine: ``graphs`` (manual CUDA graph
    capture, CUDA only), ``compile`` (``torch.compile`` with CUDA graphs,
    ``mode="reduce-overhead"``) or ``eager`` (bucketing only). A capture that fails falls
    back to eager for that bucket, logged once.
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
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self._failed: set[tuple[int, int]] = set()
        self._pool: Any = None
        # Host staging for run_numpy, sized for the largest bucket; pinned on CUDA so the
        # copies are true DMA transfers that need no extra staging copy by the driver.
        pin = device == "cuda"
        most = max(self.rows) * max(self.lengths)
        self._stage_in = torch.empty(2 * most, dtype=torch.long, pin_memory=pin)
        self._stage_out = torch.empty(2 * most, dtype=torch.float32, pin_memory=pin)

    # -- start-up ------------------------------------------------------------------

    def warmup(self, shapes: Sequence[tuple[int, int]] | None = None) -> dict[str, Any]:
        """Capture (or compile, or just run) every bucket once; returns timings for the log.

        ``shapes`` limits this to some buckets (benchmarks); the rest then run eagerly.
        """
        t0 = time.perf_counter()
        wanted = shapes if shapes is not None else [(b, n) for b in self.rows for n in self.lengths]
        ordered = sorted(wanted, key=lambda s: -s[0] * s[1])
        with torch.inference_mode():
            for rows, length in ordered:
                if self.mode == "graphs":
                    self._capture(rows, length)
                elif self.mode == "eager":
                    self._eager_bucket(rows, length).replay()
                else:
                    ids = torch.full((rows, length), self.pad_id, dtype=torch.long, device=self.device)
                    self._run(ids, torch.ones_like(ids))
        if self.device == "cuda":
            torch.cuda.synchronize()
        info = {
            "mode": self.mode,
            "buckets": len(ordered),
            "captured": sum(b.graph is not None for b in self._buckets.values()),
            "failed": len(self._failed),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        log.info("reference model CUDA graphs ready", extra=info)
        return info

    def _static_inputs(self, rows: int, length: int) -> torch.Tensor:
        inputs = torch.zeros((2, rows, length), dtype=torch.long, device=self.device)
        inputs[0].fill_(self.pad_id)
        inputs[1].fill_(1)  # warm-up and capture run on an all-real batch
        return inputs

    def _eager_bucket(self, rows: int, length: int) -> _Bucket:
        bucket = self._buckets.get((rows, length))
        if bucket is None:
            inputs = self._static_inputs(rows, length)
            outputs = torch.zeros((2, rows, length - 1), dtype=torch.float32, device=self.device)
            bucket = self._buckets[(rows, length)] = _Bucket(None, self._head, inputs, outputs)
        return bucket

    def _capture(self, rows: int, length: int) -> None:
        key = (rows, length)
        inputs = self._static_inputs(rows, length)
        ids, mask = inputs[0], inputs[1]
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
                outputs = torch.stack((surprisal.float(), entropy.float()))
        except Exception as exc:  # a model whose forward pass cannot be captured: run it eagerly
            if not self._failed:
                log.warning(
                    "CUDA graph capture failed; running eagerly",
                    extra={"rows": rows, "length": length, "error": f"{type(exc).__name__}: {exc}"},
                )
            self._failed.add(key)
            return
        self._buckets[key] = _Bucket(graph, None, inputs, outputs)

    def bucket_graph(self, rows: int, length: int) -> Any | None:
        """The captured ``torch.cuda.CUDAGraph`` of bucket ``(rows, length)``, or None (benchmarks)."""
        bucket = self._buckets.get((rows, length))
        return bucket.graph if bucket is not None else None

    # -- serving -------------------------------------------------------------------

    def run_numpy(self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """``[2, B, T-1]`` surprisal and entropy (host float32) for right-padded ``[B, T]`` arrays.

        The serving path. The host pads into a staging buffer of the bucket's shape
        (so the device needs no fill kernels), one copy moves ids and mask in, the
        graph replays, one copy moves both outputs out, and the stream is synchronised
        once. Shapes without a bucket run :meth:`__call__`. One caller at a time (the
        staging buffers are shared; ``ReferenceLM`` holds its lock around every pass).
        """
        rows, length = int(ids.shape[0]), int(ids.shape[1])
        b = pick_bucket(rows, self.rows)
        n = pick_bucket(length, self.lengths)
        bucket = self._buckets.get((b, n)) if b is not None and n is not None else None
        if bucket is None and self.mode == "eager" and b is not None and n is not None:
            bucket = self._eager_bucket(b, n)
        if bucket is None or b is None or n is None:
            with torch.inference_mode():
                t_ids = torch.from_numpy(ids).to(self.device)
                t_mask = torch.from_numpy(mask).to(self.device)
                surprisal, entropy = self(t_ids, t_mask)
                both = torch.stack((surprisal.float(), entropy.float())).cpu().numpy()
            return both.astype(np.float32, copy=False)
        stage_in = self._stage_in[: 2 * b * n].view(2, b, n)
        host = stage_in.numpy()
        host[0].fill(self.pad_id)
        host[1].fill(0)
        host[0, :rows, :length] = ids
        host[1, :rows, :length] = mask
        stage_out = self._stage_out[: 2 * b * (n - 1)].view(2, b, n - 1)
        with torch.inference_mode():
            bucket.inputs.copy_(stage_in, non_blocking=True)
            bucket.replay()
            stage_out.copy_(bucket.outputs, non_blocking=True)
            if self.device == "cuda":
                torch.cuda.current_stream().synchronize()
        # A copy: the staging buffer is reused by the next call, the result outlives it.
        return stage_out.numpy()[:, :rows, : length - 1].copy()

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Surprisal and entropy ``[B, T-1]`` for right-padded device tensors ``ids``/``mask`` ``[B, T]``."""
        rows, length = int(ids.shape[0]), int(ids.shape[1])
        b = pick_bucket(rows, self.rows)
        n = pick_bucket(length, self.lengths)
        if b is None or n is None:  # larger than any bucket: the caller's limits were raised
            surprisal, entropy = self._head(ids, mask)
            return surprisal, entropy
        bucket = self._buckets.get((b, n))
        if bucket is not None and bucket.graph is not None:
            bucket.inputs[0].fill_(self.pad_id)
            bucket.inputs[1].zero_()
            bucket.inputs[0, :rows, :length].copy_(ids)
            bucket.inputs[1, :rows, :length].copy_(mask)
            bucket.replay()
            # The head already zeroed padded positions (the static mask is part of the graph);
            # clones, because the next replay overwrites the static outputs.
            out = bucket.outputs[:, :rows, : length - 1].clone()
            return out[0], out[1]
        padded_ids = torch.full((b, n), self.pad_id, dtype=ids.dtype, device=ids.device)
        padded_mask = torch.zeros((b, n), dtype=mask.dtype, device=mask.device)
        padded_ids[:rows, :length] = ids
        padded_mask[:rows, :length] = mask
        surprisal, entropy = self._run(padded_ids, padded_mask)
        keep = mask[:, 1:].to(surprisal.dtype)
        return surprisal[:rows, : length - 1] * keep, entropy[:rows, : length - 1] * keep
