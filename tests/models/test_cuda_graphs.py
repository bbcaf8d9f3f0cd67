"""The CUDA-graph path's bucketing and causal-only padding, checked on CPU with real weights.

CI has no GPU, so the graphs themselves are replayed only by the GPU benchmark
(``tests/bench/gpu_bench.py``). What a graph replays is the eager head at the
bucket's padded shape without an attention mask; these tests show that those
numbers equal the masked head on unpadded rows, on the real model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from firewall.models.cuda_graphs import (  # noqa: E402 - after the importorskip guards
    GraphedSurprisal,
    batch_buckets,
    length_buckets,
    pick_bucket,
)
from firewall.models.surprisal_torch import SurprisalHead  # noqa: E402

if TYPE_CHECKING:
    from detectors.reference_lm import ReferenceLM

pytestmark = pytest.mark.model

TOL_BITS = 2e-3


def test_length_buckets_are_powers_of_two_up_to_the_window() -> None:
    assert length_buckets(128) == (16, 32, 64, 128)
    assert length_buckets(100) == (16, 32, 64, 100)
    assert length_buckets(16) == (16,)
    assert length_buckets(8) == (8,)


def test_batch_buckets() -> None:
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert batch_buckets(24) == (1, 2, 4, 8, 16, 24)
    assert batch_buckets(1) == (1,)


def test_pick_bucket_takes_the_smallest_that_fits() -> None:
    assert pick_bucket(1, (1, 2, 4)) == 1
    assert pick_bucket(3, (1, 2, 4)) == 4
    assert pick_bucket(5, (1, 2, 4)) is None


def test_graphs_need_cuda() -> None:
    head = SurprisalHead(torch.nn.Identity(), causal_only=True)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        GraphedSurprisal(head, "cpu", max_rows=4, max_tokens=32, mode="graphs")


@pytest.fixture(scope="module")
def lm_model(torch_lm: ReferenceLM) -> object:
    """The causal LM inside the session's torch-backend ReferenceLM (loaded once per session)."""
    return torch_lm._backend.head.lm  # type: ignore[attr-defined]


def _right_padded(rows: list[list[int]]) -> tuple[Any, Any]:
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def test_bucketed_causal_only_head_equals_masked_rows(lm_model: object) -> None:
    rows = [
        [504, 2365, 5785, 5788, 260, 2821, 30],
        [1062, 3421, 314, 253, 1355, 4125, 28, 2365, 17, 1789, 30, 378],
        [29],  # one token: nothing to score
    ]
    ids, mask = _right_padded(rows)
    masked = SurprisalHead(lm_model).eval()  # type: ignore[arg-type]
    runner = GraphedSurprisal(
        SurprisalHead(lm_model, causal_only=True).eval(),  # type: ignore[arg-type]
        "cpu",
        max_rows=4,
        max_tokens=32,
        mode="eager",
    )
    with torch.inference_mode():
        want_s, want_e = masked(ids, mask)
        got_s, got_e = runner(ids, mask)
        # Each row alone, unpadded, as the reference.
        alone = [masked(*_right_padded([r])) for r in rows]
    assert got_s.shape == want_s.shape == (3, ids.shape[1] - 1)
    np.testing.assert_allclose(got_s.numpy(), want_s.numpy(), atol=TOL_BITS)
    np.testing.assert_allclose(got_e.numpy(), want_e.numpy(), atol=TOL_BITS)
    for i, (s_alone, _) in enumerate(alone):
        n = len(rows[i]) - 1
        np.testing.assert_allclose(got_s[i, :n].numpy(), s_alone[0, :n].numpy(), atol=TOL_BITS)
        assert float(got_s[i, n:].abs().sum()) == 0.0  # padding scores nothing
    assert float(got_s[0, :6].min()) > 0.0  # real tokens carry surprisal


def test_rows_beyond_the_largest_bucket_still_run(lm_model: object) -> None:
    rows = [[504, 2365, 5785, 5788, 260, 2821, 30]] * 3
    ids, mask = _right_padded(rows)
    runner = GraphedSurprisal(
        SurprisalHead(lm_model, causal_only=True).eval(),  # type: ignore[arg-type]
        "cpu",
        max_rows=2,
        max_tokens=16,
        mode="eager",
    )
    with torch.inference_mode():
        got_s, _ = runner(ids, mask)
    assert got_s.shape == (3, 6)
    np.testing.assert_allclose(got_s[0].numpy(), got_s[2].numpy(), atol=1e-5)
