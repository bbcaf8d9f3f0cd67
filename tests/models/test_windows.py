"""Pure helpers of the reference-model runtime: windows, merging, logits, variants, errors.

No model needed: these run in every test session where numpy is installed.
"""

from __future__ import annotations

import itertools
import math

import pytest

np = pytest.importorskip("numpy")

from firewall.models.reference_lm import (  # noqa: E402 - after the numpy skip
    ModelUnavailable,
    ReferenceLM,
    ReferenceLMConfig,
    merge_windows,
    split_windows,
    surprisal_from_logits,
    variants_without,
)


@pytest.mark.parametrize(
    ("max_tokens", "overlap"), [(2, 1), (3, 1), (3, 2), (8, 1), (8, 4), (64, 16), (64, 63)]
)
def test_windows_cover_every_token_with_context(max_tokens: int, overlap: int) -> None:
    for n in range(0, 300, 7):
        windows = split_windows(n, max_tokens, overlap)
        assert windows[0][0] == 0
        assert windows[-1][1] == n
        if n > max_tokens:
            assert all(end - start == max_tokens for start, end in windows)
        for (s1, e1), (s2, _) in itertools.pairwise(windows):
            assert s1 < s2
            assert e1 - s2 >= overlap
        # Every token but the first is scored by some window in which it is not first.
        scored: set[int] = set()
        for start, end in windows:
            scored.update(range(start + 1, end))
        assert scored == set(range(1, n))


def test_split_windows_rejects_bad_overlap() -> None:
    with pytest.raises(ValueError, match="overlap"):
        split_windows(100, 8, 8)


def test_merge_takes_each_token_from_the_window_with_most_context() -> None:
    windows = split_windows(10, 6, 2)  # [(0, 6), (4, 10)]
    assert windows == [(0, 6), (4, 10)]
    first = np.arange(1, 6, dtype=np.float32)  # tokens 1..5
    second = np.arange(101, 106, dtype=np.float32)  # tokens 5..9
    merged = merge_windows(10, windows, [first, second])
    assert math.isnan(merged[0])
    assert merged[1:6].tolist() == [1, 2, 3, 4, 5]  # token 5 keeps the first window's value
    assert merged[6:].tolist() == [102, 103, 104, 105]


def test_surprisal_from_logits_matches_a_direct_float64_computation() -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 4, size=(2, 5, 11)).astype(np.float32)
    ids = rng.integers(0, 11, size=(2, 5)).astype(np.int64)
    surprisal, entropy = surprisal_from_logits(logits, ids)
    assert surprisal.shape == entropy.shape == (2, 4)
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(-1, keepdims=True)
    for b in range(2):
        for t in range(4):
            assert surprisal[b, t] == pytest.approx(-math.log2(p[b, t, ids[b, t + 1]]), abs=1e-4)
            assert entropy[b, t] == pytest.approx(-(p[b, t] * np.log2(p[b, t])).sum(), abs=1e-4)


def test_variants_without_remove_one_span_each() -> None:
    text = "great food cf and service"
    assert variants_without(text, [(11, 13), (0, 5), (22, 25)]) == [
        "great food and service",
        "food cf and service",
        "great food cf and serv",
    ]


def test_missing_model_names_the_command(tmp_path) -> None:
    with pytest.raises(ModelUnavailable) as info:
        ReferenceLM.load(ReferenceLMConfig(cache_dir=str(tmp_path)))
    message = str(info.value)
    assert "trigger-firewall models prepare" in message
    assert str(tmp_path) in message
    assert info.value.detector == "reference_lm"


def test_missing_explicit_path_is_unavailable(tmp_path) -> None:
    with pytest.raises(ModelUnavailable, match="does not exist"):
        ReferenceLM.load(ReferenceLMConfig(model_path=str(tmp_path / "nope")))


def test_config_rejects_unknown_keys_and_bad_overlap() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ReferenceLMConfig.model_validate({"max_token": 64})
    with pytest.raises(ValidationError, match="overlap"):
        ReferenceLMConfig(max_tokens=16, overlap=16)


def test_torn_manifest_reads_as_not_prepared(tmp_path) -> None:
    from firewall.models.cache import read_manifest

    assert read_manifest(tmp_path) is None
    (tmp_path / "manifest.json").write_text('{"schema": 1, "files": {', encoding="utf-8")
    assert read_manifest(tmp_path) is None


def test_cache_root_precedence(monkeypatch, tmp_path) -> None:
    from firewall.models.cache import CACHE_ENV, cache_root, model_dir

    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "trigger-firewall"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"
    assert model_dir("m", tmp_path) == tmp_path / "models" / "m"


class _EchoBackend:
    """Stands in for a runtime: the 'surprisal' of token t+1 is its own id, so merges are checkable."""

    name = "echo"
    device = "cpu"
    has_entropy = True

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []

    def run(self, ids, mask):
        self.shapes.append(ids.shape)
        keep = mask[:, 1:].astype(np.float32)
        return ids[:, 1:].astype(np.float32) * keep, -keep


def test_batching_windows_and_chunks_route_every_score_back() -> None:
    config = ReferenceLMConfig(max_tokens=16, overlap=4, batch_size=4, max_batch_tokens=48, pad_multiple=8)
    backend = _EchoBackend()
    lm = ReferenceLM(config, backend, tokenizer=None, info={})
    items = [list(range(1000 * k, 1000 * k + n)) for k, n in enumerate((1, 2, 5, 16, 17, 40, 9, 3), 1)]
    results = lm.surprisal_batch(items)
    for ids, result in zip(items, results, strict=True):
        assert result.token_ids == tuple(ids)
        assert result.offsets is None
        assert np.isnan(result.surprisal[0])
        assert result.surprisal[1:].tolist() == ids[1:]
        assert result.entropy is not None
        assert (result.entropy[1:] == -1).all()
        assert result.windows == max(len(split_windows(len(ids), 16, 4)), 1)
    for rows, width in backend.shapes:
        assert width % 8 == 0
        assert width <= 16
        assert rows <= 4
        assert rows == 1 or rows * width <= 48
