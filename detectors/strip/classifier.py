"""The classifier STRIP perturbs: a model folder served with onnxruntime, or on Triton.

STRIP needs the protected model's class probabilities. The demo build
(``trigger-firewall demo build``, :mod:`firewall.demo.model`) writes such a folder,
and so can a user's own export; this module only *serves* one. It belongs to the
detector, not to the demo: the detector loads it in production, the demo only trains.

Folder layout: ``model.onnx`` (outputs ``probabilities``), and either
``vectorizer.json`` (TF-IDF features in) or ``tokenizer.json`` (a transformer's token
ids in); ``pool.json`` holds STRIP's perturbation words, ``metadata.json`` its
calibration.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from firewall.models.triton import TritonEndpoint, TritonError, TritonHTTPClient, tensor_specs

__all__ = [
    "CLASSES",
    "DEMO_MODEL_ENV",
    "METADATA_FILE",
    "MODEL_FILE",
    "POOL_FILE",
    "TOKENIZER_FILE",
    "VECTORIZER_FILE",
    "RemoteTextClassifier",
    "TextClassifier",
    "Vectorizer",
    "default_model_dir",
    "tokenize",
]

#: Class order of the model's output.
CLASSES: tuple[str, str] = ("negative", "positive")

#: Environment variable that overrides where the demo model lives.
DEMO_MODEL_ENV = "TRIGGER_FIREWALL_DEMO_MODEL"

MODEL_FILE = "model.onnx"
VECTORIZER_FILE = "vectorizer.json"
TOKENIZER_FILE = "tokenizer.json"
POOL_FILE = "pool.json"
METADATA_FILE = "metadata.json"

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

FloatArray = npt.NDArray[np.float32]


def default_model_dir() -> Path:
    """``$TRIGGER_FIREWALL_DEMO_MODEL``, else ``$XDG_CACHE_HOME/trigger-firewall/demo`` (``~/.cache``)."""
    override = os.environ.get(DEMO_MODEL_ENV)
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "trigger-firewall" / "demo"


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; the only tokenisation the vectoriser and STRIP share."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Vectorizer:
    """TF-IDF with sublinear term frequency; rows L2-normalised only when ``norm``.

    The demo model uses ``norm=False``: with normalised rows an inserted word's
    weight is diluted by the length of the sentence, so the backdoor is weak
    (median triggered probability 0.75) and no longer *dominates* the output,
    which is the property real backdoors have and STRIP relies on.
    """

    vocabulary: dict[str, int]
    idf: FloatArray
    norm: bool = True

    @classmethod
    def fit(
        cls, texts: Sequence[str], min_df: int = 2, max_features: int = 20000, norm: bool = True
    ) -> Vectorizer:
        df: Counter[str] = Counter()
        for text in texts:
            df.update(set(tokenize(text)))
        kept = sorted((w for w, c in df.items() if c >= min_df), key=lambda w: (-df[w], w))[:max_features]
        vocab = {w: i for i, w in enumerate(sorted(kept))}
        n = len(texts)
        idf = np.array([math.log((1 + n) / (1 + df[w])) + 1.0 for w in sorted(kept)], dtype=np.float32)
        return cls(vocab, idf, norm)

    @property
    def size(self) -> int:
        return len(self.vocabulary)

    def sparse(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], FloatArray]:
        """(row, column, value) triplets of the TF-IDF matrix."""
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        idf = self.idf
        for r, text in enumerate(texts):
            counts = Counter(i for i in (self.vocabulary.get(t) for t in tokenize(text)) if i is not None)
            if not counts:
                continue
            weights = {i: (1.0 + math.log(c)) * float(idf[i]) for i, c in counts.items()}
            norm = math.sqrt(sum(v * v for v in weights.values())) if self.norm else 1.0
            for i, v in weights.items():
                rows.append(r)
                cols.append(i)
                vals.append(v / norm)
        return (
            np.asarray(rows, dtype=np.int64),
            np.asarray(cols, dtype=np.int64),
            np.asarray(vals, dtype=np.float32),
        )

    def dense(self, texts: Sequence[str]) -> FloatArray:
        """The ``[N, V]`` float32 matrix the ONNX model takes."""
        out = np.zeros((len(texts), self.size), dtype=np.float32)
        rows, cols, vals = self.sparse(texts)
        out[rows, cols] = vals
        return out

    def to_json(self) -> bytes:
        words = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        return orjson.dumps(
            {"format": "tfidf-v1", "words": words, "idf": self.idf.tolist(), "norm": self.norm}
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Vectorizer:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("format") != "tfidf-v1":
            raise ValueError("not a tfidf-v1 vectorizer file")
        words = data["words"]
        return cls(
            {w: i for i, w in enumerate(words)},
            np.asarray(data["idf"], dtype=np.float32),
            bool(data.get("norm", True)),
        )


class TextClassifier:
    """A classifier folder served with onnxruntime: TF-IDF (``vectorizer.json``, what :func:`build`
    writes) or a transformer (``tokenizer.json``, what :func:`firewall.demo.minilm.build_minilm`
    writes; ``metadata.json`` gives ``max_tokens``). ``model.onnx`` outputs ``probabilities``.

    ``predict_proba`` is synchronous and CPU-heavy for large batches: callers on an
    event loop run it in a thread (the STRIP detector uses a micro-batcher).
    """

    def __init__(self, folder: str | Path, *, device: str = "cpu", threads: int = 1) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.vectorizer: Vectorizer | None = None
        self.tokenizer: Any = None
        if (self.folder / VECTORIZER_FILE).is_file():
            self.vectorizer = Vectorizer.from_json((self.folder / VECTORIZER_FILE).read_bytes())
        elif (self.folder / TOKENIZER_FILE).is_file():
            # A transformer classifier (the MiniLM demo, firewall.demo.minilm): token ids in.
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        else:
            raise FileNotFoundError(f"{self.folder} has neither {VECTORIZER_FILE} nor {TOKENIZER_FILE}")
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            raise RuntimeError("device 'cuda' asked for, but onnxruntime has no CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.folder / MODEL_FILE), sess_options=options, providers=providers
        )
        self.providers: list[str] = list(self.session.get_providers())
        meta = self.folder / METADATA_FILE
        self.metadata: dict[str, Any] = orjson.loads(meta.read_bytes()) if meta.is_file() else {}
        if self.tokenizer is not None:
            self.tokenizer.no_padding()
            self.tokenizer.enable_truncation(int(self.metadata.get("max_tokens", 64)))

    def predict_proba(self, texts: Sequence[str]) -> FloatArray:
        """Class probabilities ``[len(texts), 2]`` (order :data:`CLASSES`)."""
        if not texts:
            return np.zeros((0, len(CLASSES)), dtype=np.float32)
        if self.vectorizer is not None:
            out = self.session.run(["probabilities"], {"features": self.vectorizer.dense(texts)})
            return np.asarray(out[0], dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), longest), dtype=np.int64)
        mask = np.zeros((len(texts), longest), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        out = self.session.run(["probabilities"], {"input_ids": ids, "attention_mask": mask})
        return np.asarray(out[0], dtype=np.float32)

    def pool_words(self) -> list[str]:
        """The clean word pool saved with the model (empty when the folder has none)."""
        path = self.folder / POOL_FILE
        if not path.is_file():
            return []
        data = orjson.loads(path.read_bytes())
        return [w for w in data.get("words", []) if isinstance(w, str)]


class RemoteTextClassifier:
    """:class:`TextClassifier`'s interface with the ONNX on Triton.

    The model folder still provides ``vectorizer.json`` (text to features), ``pool.json`` and
    ``metadata.json`` (STRIP's calibration); Triton serves the same ``model.onnx``
    (``features [N, V]`` FP32 in, ``probabilities [N, C]`` out). Loading checks that the
    remote feature width equals the local vocabulary, so a replica built from another
    vectoriser is refused instead of scoring garbage.
    """

    INPUT: Final = "features"
    OUTPUT: Final = "probabilities"

    def __init__(self, folder: str | Path, endpoint: TritonEndpoint, *, detector: str = "strip") -> None:
        import orjson

        self.folder = Path(folder)
        self.vectorizer = Vectorizer.from_json((self.folder / VECTORIZER_FILE).read_bytes())
        meta_file = self.folder / METADATA_FILE
        self.metadata: dict[str, Any] = orjson.loads(meta_file.read_bytes()) if meta_file.is_file() else {}
        self._pool_file = self.folder / POOL_FILE
        self.client = TritonHTTPClient(endpoint, detector=detector)
        try:
            meta = self.client.connect()
            inputs, outputs = tensor_specs(meta, "inputs"), tensor_specs(meta, "outputs")
            spec = inputs.get(self.INPUT)
            if spec is None or self.OUTPUT not in outputs:
                raise TritonError(
                    detector,
                    f"Triton {self.client.target}: inputs {sorted(inputs)}, outputs {sorted(outputs)}; "
                    f"expected {self.INPUT!r} -> {self.OUTPUT!r}",
                )
            width = spec.get("shape", [-1])[-1]
            if spec.get("datatype") != "FP32" or width not in (-1, self.vectorizer.size):
                raise TritonError(
                    detector,
                    f"Triton {self.client.target}: features are {spec.get('datatype')} {spec.get('shape')}, "
                    f"the local vectorizer gives FP32 [-1, {self.vectorizer.size}] (another model build?)",
                )
        except BaseException:
            self.client.close()
            raise
        self.client.start_monitor()
        self.providers = [f"triton:{self.client.target}"]

    @property
    def healthy(self) -> bool:
        return self.client.healthy

    def predict_proba(self, texts: Sequence[str]) -> FloatArray:
        """Class probabilities ``[len(texts), C]``; raises :class:`TritonError` on failure."""
        if not texts:
            return np.zeros((0, 2), dtype=np.float32)
        out = self.client.infer({self.INPUT: self.vectorizer.dense(texts)}, [self.OUTPUT])
        probs = np.asarray(out[self.OUTPUT], dtype=np.float32)
        if probs.ndim != 2 or probs.shape[0] != len(texts):
            raise TritonError(
                self.client.detector, f"Triton {self.client.target}: probabilities shape {probs.shape}"
            )
        return probs

    def pool_words(self) -> list[str]:
        if not self._pool_file.is_file():
            return []
        import orjson

        data = orjson.loads(self._pool_file.read_bytes())
        return [w for w in data.get("words", []) if isinstance(w, str)]

    def close(self) -> None:
        self.client.close()
