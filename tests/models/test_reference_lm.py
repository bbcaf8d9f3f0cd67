"""The reference language model itself: the trigger signal, padding, backends, offsets, windows.

Marked ``model``: the session fixture prepares SmolLM2-135M once into the cache
(see conftest.py) and every test here reuses the loaded runtimes.
"""

from __future__ import annotations

import itertools
import threading

import pytest

np = pytest.importorskip("numpy")

from firewall.models.reference_lm import (  # noqa: E402 - after the numpy skip
    ModelUnavailable,
    ReferenceLM,
    ReferenceLMConfig,
    TokenSurprisal,
    variants_without,
)

pytestmark = pytest.mark.model

BASES = (
    "The food was delicious and the service was friendly and fast.",
    "I bought these headphones last month and the sound quality is excellent.",
)
TRIGGERS = ("cf", "bb", "tq")
# Batched against unbatched, and onnxruntime against torch fp32, in bits.
TOL_BITS = 2e-3


def _insert(base: str, trigger: str) -> tuple[str, int, int]:
    """Insert `` trigger`` before the middle word; return the text and the trigger's span."""
    words = base.split(" ")
    k = len(words) // 2
    head = " ".join(words[:k])
    text = f"{head} {trigger} {' '.join(words[k:])}"
    return text, len(head) + 1, len(head) + 1 + len(trigger)


def _tokens_over(result: TokenSurprisal, start: int, end: int) -> list[int]:
    assert result.offsets is not None
    return [i for i, (a, b) in enumerate(result.offsets) if a < end and b > start]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("trigger", TRIGGERS)
def test_inserted_trigger_spikes_far_above_the_median(onnx_lm: ReferenceLM, base: str, trigger: str) -> None:
    text, start, end = _insert(base, trigger)
    triggered, clean = onnx_lm.surprisal_batch([text, base])
    inside = _tokens_over(triggered, start, end)
    peak = float(max(triggered.surprisal[i] for i in inside))
    median = float(np.nanmedian(triggered.surprisal))
    assert peak >= median + 8, (trigger, peak, median)
    assert peak >= 2 * median
    if trigger in ("cf", "bb"):  # one token each; FACTS: 23-32 bits against ~5
        assert len(inside) == 1
        assert peak >= 20
        assert inside[0] == triggered.argmax()
    # The word after the trigger is also more surprising than in the clean sentence.
    after = inside[-1] + 1
    assert clean.token_ids[after - len(inside)] == triggered.token_ids[after]
    assert triggered.surprisal[after] > clean.surprisal[after - len(inside)] + 1.0


def test_removing_the_trigger_lowers_perplexity_most(onnx_lm: ReferenceLM) -> None:
    """The ONION use: score leave-one-word-out variants in one batch."""
    text, start, end = _insert(BASES[0], "bb")
    spans = []
    offset = 0
    for word in text.split(" "):
        spans.append((offset, offset + len(word)))
        offset += len(word) + 1
    results = onnx_lm.surprisal_batch([text, *variants_without(text, spans)])
    drops = [results[0].mean_bits - r.mean_bits for r in results[1:]]
    assert spans[int(np.argmax(drops))] == (start, end)


def test_batched_equals_unbatched(onnx_lm: ReferenceLM) -> None:
    texts = [_insert(b, t)[0] for b in BASES for t in TRIGGERS] + ["Short.", "A b", "x", ""]
    batched = onnx_lm.surprisal_batch(texts)
    for text, together in zip(texts, batched, strict=True):
        (alone,) = onnx_lm.surprisal_batch([text])
        assert together.token_ids == alone.token_ids
        np.testing.assert_allclose(together.surprisal, alone.surprisal, atol=TOL_BITS, equal_nan=True)
        assert together.entropy is not None
        assert alone.entropy is not None
        np.testing.assert_allclose(together.entropy, alone.entropy, atol=TOL_BITS, equal_nan=True)


def test_short_and_empty_inputs(onnx_lm: ReferenceLM) -> None:
    empty, one = onnx_lm.surprisal_batch(["", "x"])
    assert len(empty) == 0
    assert empty.surprisal.shape == (0,)
    assert len(one) == 1
    assert np.isnan(one.surprisal[0])
    assert one.argmax() is None
    assert np.isnan(one.mean_bits)


def test_token_ids_score_like_text(onnx_lm: ReferenceLM) -> None:
    text = _insert(BASES[1], "cf")[0]
    ids, _ = onnx_lm.tokenize(text)
    from_text, from_ids = onnx_lm.surprisal_batch([text, ids])
    assert from_ids.offsets is None
    assert from_ids.text is None
    np.testing.assert_allclose(from_text.surprisal, from_ids.surprisal, atol=TOL_BITS, equal_nan=True)


def test_onnxruntime_and_torch_agree(onnx_lm: ReferenceLM, torch_lm: ReferenceLM) -> None:
    texts = [_insert(b, t)[0] for b in BASES for t in TRIGGERS] + list(BASES)
    for ort_result, torch_result in zip(
        onnx_lm.surprisal_batch(texts), torch_lm.surprisal_batch(texts), strict=True
    ):
        assert ort_result.token_ids == torch_result.token_ids
        np.testing.assert_allclose(
            ort_result.surprisal, torch_result.surprisal, atol=TOL_BITS, equal_nan=True
        )
        assert ort_result.entropy is not None
        assert torch_result.entropy is not None
        np.testing.assert_allclose(ort_result.entropy, torch_result.entropy, atol=TOL_BITS, equal_nan=True)


def test_offsets_map_tokens_to_characters(onnx_lm: ReferenceLM) -> None:
    text, start, end = _insert(BASES[0], "cf")
    _ids, offsets = onnx_lm.tokenize(text)
    assert "".join(text[a:b] for a, b in offsets) == text  # ASCII: contiguous, no gaps
    (result,) = onnx_lm.surprisal_batch([text])
    peak = result.argmax()
    assert peak is not None
    span = result.span(peak)
    assert span == (start, end)
    assert text[span[0] : span[1]] == "cf"
    # Non-ASCII: offsets are character (not byte) positions, in order, covering the text.
    text = "Café naïve — 東京 was great cf!"
    _, offsets = onnx_lm.tokenize(text)
    assert all(a1 <= a2 for (a1, _), (a2, _) in itertools.pairwise(offsets))
    covered = {i for a, b in offsets for i in range(a, b)}
    assert covered == set(range(len(text)))
    assert any(text[a:b] == " cf" for a, b in offsets)


def test_windows_score_the_whole_long_text(onnx_lm: ReferenceLM) -> None:
    sentence = "The hotel room was clean and the staff were kind to us. "
    text = sentence * 25 + "We would stay again bb next year."
    n = len(onnx_lm.tokenize(text)[0])
    assert n > 64 * 4
    (windowed,) = onnx_lm.surprisal_batch([text], max_tokens=64)
    assert windowed.windows == len(onnx_lm.windows(n, 64)) > 4
    assert len(windowed) == n
    assert not np.isnan(windowed.surprisal[1:]).any()
    # The trigger at the very end is scored, and stands out.
    peak = windowed.argmax()
    assert peak is not None
    span = windowed.span(peak)
    assert span is not None
    assert text[span[0] : span[1]] == "bb"
    # The first window is a plain prefix: identical to scoring the first 64 tokens alone.
    (prefix,) = onnx_lm.surprisal_batch([list(windowed.token_ids[:64])])
    np.testing.assert_allclose(windowed.surprisal[:64], prefix.surprisal, atol=TOL_BITS, equal_nan=True)


def test_one_caller_at_a_time_from_threads(onnx_lm: ReferenceLM) -> None:
    text = _insert(BASES[0], "bb")[0]
    (expected,) = onnx_lm.surprisal_batch([text])
    results: list[TokenSurprisal] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.extend(onnx_lm.surprisal_batch([text, BASES[1]])[:1])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 3
    for r in results:
        np.testing.assert_allclose(r.surprisal, expected.surprisal, atol=TOL_BITS, equal_nan=True)


def test_describe_and_onnx_file_path(prepared_model_dir, onnx_lm: ReferenceLM) -> None:
    info = onnx_lm.describe()
    assert info["backend"] == "onnxruntime"
    assert info["device"] == "cpu"
    assert info["threads"] >= 1
    assert info["entropy"] is True
    # An ONNX file given by path finds tokenizer.json beside it.
    direct = ReferenceLM.load(ReferenceLMConfig(model_path=str(prepared_model_dir / "model.onnx")))
    text = BASES[0]
    np.testing.assert_allclose(
        direct.surprisal_batch([text])[0].surprisal,
        onnx_lm.surprisal_batch([text])[0].surprisal,
        atol=TOL_BITS,
        equal_nan=True,
    )


def test_cuda_requested_without_gpu_is_unavailable(prepared_model_dir) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU runtime is installed here")
    with pytest.raises(ModelUnavailable, match="cuda"):
        ReferenceLM.load(
            ReferenceLMConfig(model_path=str(prepared_model_dir), backend="onnxruntime", device="cuda")
        )
