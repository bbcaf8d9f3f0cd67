"""The CUDA-graph path's bucketing and causal-only padding, checked on CPU with real weights.

CI has no GPU, so the graphs themselves are replayed only by the GPU benchmark
(``loadtests/bench/gpu_bench.py``). What a graph replays is the eager head at the
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
    from firewall.models.reference_lm import ReferenceLM

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


# -- the fused reduction (the serving path) against the reference head -----------------

# Rows of different lengths, right-padded into one batch: real token ids of a sentence,
# a longer one, and two short ones (two tokens: one scored; one token: none scored).
_ROWS = [
    [504, 2365, 5785, 5788, 260, 2821, 30],
    [1062, 3421, 314, 253, 1355, 4125, 28, 2365, 17, 1789, 30, 378, 12, 4980, 284, 260, 2821],
    [29, 504],
    [29],
]


@pytest.mark.parametrize("chunk_rows", [None, 5, 256])
@pytest.mark.parametrize("causal_only", [False, True])
def test_fused_head_equals_reference_head(
    lm_model: object, causal_only: bool, chunk_rows: int | None
) -> None:
    """Same bits as the reference (export) reduction, padded rows included, chunked or not.

    5-row chunks split the 4 x 16 predicting positions into 13 chunks with a short last
    one; 256 rows is one chunk, the CPU default.
    """
    ids, mask = _right_padded(_ROWS)
    reference = SurprisalHead(lm_model).eval()  # type: ignore[arg-type]
    fused = SurprisalHead(
        lm_model,  # type: ignore[arg-type]
        causal_only=causal_only,
        reduction="fused",
        chunk_rows=chunk_rows,
    ).eval()
    assert fused.uses_hidden_states  # SmolLM2 is a Llama: logits are lm_head(final hidden)
    with torch.inference_mode():
        want_s, want_e = reference(ids, mask)
        got_s, got_e = fused(ids, mask)
    assert got_s.shape == got_e.shape == want_s.shape == (4, ids.shape[1] - 1)
    assert float((got_s - want_s).abs().max()) < 1e-3
    assert float((got_e - want_e).abs().max()) < 1e-3
    assert float(got_s[1, :16].min()) > 0.0
    assert float(got_e[1, :16].min()) > 0.0
    assert float(got_s[2:, 1:].abs().sum() + got_e[3].abs().sum()) == 0.0  # padding scores nothing


def test_graphed_eager_runner_equals_reference_through_both_entry_points(lm_model: object) -> None:
    """GraphedSurprisal(mode="eager") with the fused head: the staging host path the CUDA
    graphs use (run_numpy) and the tensor path (__call__) give the reference numbers."""
    ids, mask = _right_padded(_ROWS)
    reference = SurprisalHead(lm_model).eval()  # type: ignore[arg-type]
    runner = GraphedSurprisal(
        SurprisalHead(lm_model, causal_only=True, reduction="fused").eval(),  # type: ignore[arg-type]
        "cpu",
        max_rows=8,
        max_tokens=32,
        mode="eager",
        pad_id=2,
    )
    with torch.inference_mode():
        want_s, want_e = reference(ids, mask)
        got_s, got_e = runner(ids, mask)
    both = runner.run_numpy(ids.numpy(), mask.numpy())  # bucket (4, 32): staged and replayed
    assert both.shape == (2, 4, ids.shape[1] - 1)
    assert both.dtype == np.float32
    for got in (np.stack([got_s.numpy(), got_e.numpy()]), both):
        np.testing.assert_allclose(got[0], want_s.numpy(), atol=1e-3)
        np.testing.assert_allclose(got[1], want_e.numpy(), atol=1e-3)
    # The staging buffer is reused: an earlier result must not change under a later call.
    first = both.copy()
    runner.run_numpy(ids[:1].numpy(), mask[:1].numpy())
    np.testing.assert_array_equal(both, first)
    # Wider than the largest length bucket: the unbucketed fallback, same numbers.
    wide_ids = torch.cat([ids, torch.full((4, 20), 2)], dim=1)
    wide_mask = torch.cat([mask, torch.zeros((4, 20), dtype=mask.dtype)], dim=1)
    wide = runner.run_numpy(wide_ids.numpy(), wide_mask.numpy())
    np.testing.assert_allclose(wide[:, :, : ids.shape[1] - 1], both, atol=1e-3)
    assert float(np.abs(wide[:, :, ids.shape[1] - 1 :]).sum()) == 0.0


def test_fused_head_falls_back_to_model_logits_where_they_are_not_lm_head_of_hidden() -> None:
    """Gemma 2 soft-caps its logits: lm_head(final hidden) is not what it predicts with, so the
    fused head must reduce the model's own logits (and still equal the reference head)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Gemma2Config(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        final_logit_softcapping=5.0,
        tie_word_embeddings=False,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # logits of a trained model's size, where the cap bites
        model.get_output_embeddings().weight.mul_(300.0)
    ids = torch.randint(1, 97, (3, 9))
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    fused = SurprisalHead(model, reduction="fused", chunk_rows=4).eval()
    assert not fused.uses_hidden_states
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
        uncapped = model.get_output_embeddings()(model.get_decoder()(input_ids=ids)[0])
        want = SurprisalHead(model).eval()(ids, mask)
        got = fused(ids, mask)
    assert float((uncapped - logits).abs().max()) > 1.0  # the shortcut would be wrong here
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-4)


def test_compiled_reducer_failure_keeps_the_eager_one() -> None:
    from firewall.models.surprisal_torch import compiled_reducer

    assert compiled_reducer("no-such-device", 97) is None
