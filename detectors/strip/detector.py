"""STRIP: a trigger is the part of an input that survives perturbation.

Why this exists
---------------
"STRIP: A Defence Against Trojan Attacks on Deep Neural Networks" (Gao et al.,
ACSAC 2019) observes that a backdoor trigger *dominates* the model: whatever
else the input says, the trigger decides the output. So perturb the input many
times (the paper superimposes other clean images): a clean input's predictions
scatter, while a triggered input keeps producing the attacker's class. Low
entropy of the predictions across perturbations means a trigger. "STRIP-ViTA"
(Gao et al., 2019, arXiv:1911.10312) carries it over to text by replacing words
of the input with words drawn from clean text, which is what this detector does.

Unlike the lexical detectors, STRIP needs the protected model's outputs. Mode
(a), implemented here, is a **local replica**: the classifier the sidecar
protects, as a folder with ``model.onnx`` + ``vectorizer.json`` (what
``trigger-firewall demo build`` writes; see :mod:`firewall.demo.model`), loaded
with onnxruntime (CUDA provider when present and asked for). Mode (b),
``mode: upstream``, probes a generative upstream instead: each copy is sent to
the firewall's own upstream with ``max_tokens: 1`` and ``logprobs``, and the
entropy is that of the first-token distribution (:mod:`detectors.strip.probe`:
budget, concurrency bound, probe metrics; put it behind a cheap detector's
``gate:`` so it only costs calls on suspicious prompts).

How it scores
-------------
For each segment: ``n_perturbations`` copies, each word replaced with
probability ``replace_rate`` by a word drawn from the clean pool, and
``superimpose_words`` pool words inserted at random positions (superimposition:
a clean context that a clean prediction follows and a trigger shrugs off). All
copies of all segments of a sample go through the model in **one batch**, in a
micro-batcher thread, never on the event loop. The segment's entropy ``H`` is the
mean Shannon entropy (bits) of the copies' class distributions.

``H`` becomes a score in [0, 1], decreasing in ``H``. With the clean
calibration the model folder carries (``metadata.json``: ``strip.clean_entropy_q``,
the entropy below which ``clean_quantile`` of held-out clean inputs fall), the
map is piecewise linear with ``H = q`` at 0.5: a policy threshold of 0.5 then
rejects about that share of clean inputs. Without calibration the score is
``1 - H / H_max``.

Evidence: reason ``strip_low_entropy`` when the score is at least 0.5, and a
span (reason ``strip_surviving_token``) on each input word whose survival in a
copy lowers that copy's entropy by more than ``attribution_margin`` bits on
average: the trigger, when one word is the trigger. Findings carry no free-form
fields, so the entropy and N are not in the finding itself; :meth:`explain`
returns them (and the demo CLI prints them).

Pinned replica: the model folder's ``manifest.json`` pins every file's sha256
(``trigger-firewall demo build`` writes it; ``trigger-firewall models pin DIR`` pins an
operator's own export). :meth:`StripDetector.start` checks it before loading and
refuses a changed, missing or added file
(:class:`~firewall.models.artefacts.ArtefactMismatch`): the detector stays not ready
and ``load_error`` names the file. The default folder, and any folder with a
manifest, must be pinned; an operator's folder without one loads with a warning.

Determinism: the perturbations are seeded from ``seed`` and the text, so the same
text always gets the same score (calibration and tests are reproducible, and a
caller cannot re-roll the dice by resending).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from detectors.base import (
    Cost,
    Detector,
    DetectorParams,
    Finding,
    FindingStatus,
    Phase,
    Sample,
    Span,
)
from detectors.strip.classifier import RemoteTextClassifier
from detectors.strip.probe import ProbeSettings, UpstreamProber
from firewall.core.detector_context import DetectorContext, UpstreamProbeError, UpstreamProbeTimeout
from firewall.core.errors import DetectorError
from firewall.models.triton import TritonEndpoint

__all__ = [
    "REASON_CODES",
    "R_LOW_ENTROPY",
    "R_SURVIVOR",
    "StripDetector",
    "StripParams",
    "StripResult",
    "entropies_sync",
    "perturb",
    "strip_entropy",
]

R_LOW_ENTROPY = "strip_low_entropy"
R_SURVIVOR = "strip_surviving_token"
R_TRUNCATED = "strip_truncated"
R_BUDGET = "strip_probe_budget"
REASON_CODES: tuple[str, ...] = (R_LOW_ENTROPY, R_SURVIVOR, R_TRUNCATED, R_BUDGET)

_WORD = re.compile(r"\S+")


class StripParams(DetectorParams):
    model_dir: str | None = Field(
        None, description="Classifier folder (model.onnx + vectorizer.json); default: the demo model cache."
    )
    pool_file: str | None = Field(
        None, description="JSON {'words': [...]} or a text file of clean words; default: the model's pool."
    )
    n_perturbations: int = Field(32, ge=2, le=256)
    replace_rate: float = Field(0.3, ge=0.0, le=1.0)
    superimpose_words: int = Field(0, ge=0, le=64)
    max_words: int = Field(256, ge=1, description="Longer segments are cut (reason strip_truncated).")
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "auto"
    threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads.")
    max_batch_samples: int = Field(8, ge=1, description="Samples per micro-batch (each N copies a segment).")
    max_wait_ms: float = Field(2.0, ge=0)
    attribution_margin: float = Field(0.1, ge=0, description="Bits of entropy a survivor must lower.")
    backend: Literal["local", "triton"] = Field(
        "local",
        description="'triton': the classifier runs on the Triton server in `triton`; model_dir still "
        "provides the vectorizer, word pool and calibration.",
    )
    triton: TritonEndpoint | None = None
    mode: Literal["replica", "upstream"] = Field(
        "replica",
        description="'replica': a local copy of the classifier scores the copies; 'upstream': the "
        "copies are sent to the firewall's upstream (max_tokens 1, logprobs; see `probe`).",
    )
    probe: ProbeSettings = Field(default_factory=ProbeSettings)

    @model_validator(mode="after")
    def _triton_endpoint(self) -> StripParams:
        if (self.backend == "triton") != (self.triton is not None):
            raise ValueError("backend 'triton' needs a `triton` endpoint, and only it takes one")
        return self


@dataclass(frozen=True, slots=True)
class StripResult:
    """STRIP's view of one text: the entropy, N, per-copy entropies and surviving words."""

    entropy: float
    n: int
    copy_entropies: tuple[float, ...]
    survivors: tuple[tuple[int, int], ...]  # character spans of words that kept the entropy low
    truncated: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    words: list[tuple[int, int]]  # character spans of the (possibly truncated) words
    copies: list[str]
    kept: npt.NDArray[np.bool_]  # [N, W]: did word w survive in copy k
    truncated: bool


def perturb(
    text: str,
    pool: Sequence[str],
    *,
    n: int,
    replace_rate: float,
    superimpose: int,
    rng: random.Random,
    max_words: int = 256,
) -> _Plan:
    """N perturbed copies of ``text`` and which of its words each copy kept."""
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    truncated = len(spans) > max_words
    spans = spans[:max_words]
    words = [text[s:e] for s, e in spans]
    kept = np.ones((n, len(words)), dtype=bool)
    copies: list[str] = []
    for k in range(n):
        out: list[str] = []
        for w, word in enumerate(words):
            if pool and rng.random() < replace_rate:
                out.append(rng.choice(pool))
                kept[k, w] = False
            else:
                out.append(word)
        for _ in range(superimpose if pool else 0):
            out.insert(rng.randint(0, len(out)), rng.choice(pool))
        copies.append(" ".join(out))
    return _Plan(spans, copies, kept, truncated)


def _entropies(probs: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    return np.asarray(-(p * np.log2(p)).sum(axis=1))


def strip_entropy(plan: _Plan, probs: npt.NDArray[np.float32], margin: float) -> StripResult:
    """Mean entropy of the copies, and the words whose survival lowers a copy's entropy."""
    return strip_from_entropies(plan, _entropies(probs), margin)


def strip_from_entropies(plan: _Plan, ent: npt.NDArray[np.float64], margin: float) -> StripResult:
    """:func:`strip_entropy` from per-copy entropies (bits) already computed (upstream probing)."""
    survivors: list[tuple[int, int]] = []
    for w, span in enumerate(plan.words):
        mask = plan.kept[:, w]
        if mask.all() or not mask.any():
            continue  # never (or always) replaced: its effect cannot be told
        if float(ent[~mask].mean() - ent[mask].mean()) > margin:
            survivors.append(span)
    return StripResult(
        float(ent.mean()), len(ent), tuple(float(e) for e in ent), tuple(survivors), plan.truncated
    )


#: Perturbed copies classified per call in :func:`entropies_sync`: a transformer replica's
#: activations grow with the batch (all 81,000 copies of a calibration run in one call needed
#: over 24 GB), a TF-IDF one does not care.
_SYNC_COPIES_PER_CALL = 2048


def entropies_sync(
    model: Any, pool: Sequence[str], texts: Sequence[str], p: StripParams
) -> list[StripResult]:
    """STRIP for many texts in one synchronous call (calibration, evaluation, benchmarks)."""
    n = p.n_perturbations
    per_call = max(1, _SYNC_COPIES_PER_CALL // max(1, n))
    results: list[StripResult] = []
    for start in range(0, len(texts), per_call):
        plans = [
            perturb(
                t,
                pool,
                n=n,
                replace_rate=p.replace_rate,
                superimpose=p.superimpose_words,
                rng=random.Random(_seed_for(p.seed, t)),  # noqa: S311
                max_words=p.max_words,
            )
            for t in texts[start : start + per_call]
        ]
        probs = model.predict_proba([c for plan in plans for c in plan.copies])
        results.extend(
            strip_entropy(plan, probs[i * n : (i + 1) * n], p.attribution_margin)
            for i, plan in enumerate(plans)
        )
    return results


def _seed_for(seed: int, text: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{text}".encode(), digest_size=8).digest(), "big")


class StripDetector(Detector[StripParams]):
    """STRIP perturbation entropy against a local replica of the protected classifier."""

    kind: ClassVar[str] = "strip"
    version: ClassVar[str] = "1"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.INPUT})
    cost: ClassVar[Cost] = Cost.EXPENSIVE
    Params: ClassVar[type[DetectorParams]] = StripParams

    def __init__(self, name: str, params: DetectorParams | None = None) -> None:
        super().__init__(name, params)
        self._model: Any = None
        self._pool: list[str] = []
        self._h_max = 1.0
        self._clean_q: float | None = None
        self._batcher: Any = None
        self._context: DetectorContext | None = None
        self._prober: UpstreamProber | None = None
        #: Why the last start failed (the message names the file at fault, never its content),
        #: and the bounded code it is counted under (e.g. ``artefact_mismatch``); None when loaded.
        self.load_error: str | None = None
        self.load_reason: str | None = None
        self._artefacts: dict[str, Any] | None = None

    def bind_context(self, context: DetectorContext) -> None:
        """The runtime's hook (:mod:`firewall.core.detector_context`): the upstream client for probing."""
        self._context = context

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        from firewall.core.batching import MicroBatcher

        if self.params.mode == "upstream":
            if self._context is None:
                raise RuntimeError("mode 'upstream' needs the firewall runtime's upstream client")
            self._pool = await asyncio.to_thread(self._load_pool)
            self._prober = UpstreamProber(self.name, self.params.probe, self._context)
            self._h_max = self._prober.h_max
            self._clean_q = self.params.probe.clean_entropy_q
            self._ready = True
            return
        self.load_error = self.load_reason = None
        try:
            await asyncio.to_thread(self._load)
        except Exception as exc:
            self.load_error = str(exc)
            self.load_reason = exc.reason if isinstance(exc, DetectorError) else "exception"
            raise
        self._batcher = MicroBatcher(
            f"{self.name}",
            self._run_batch,
            max_batch_size=self.params.max_batch_samples,
            max_wait_ms=self.params.max_wait_ms,
            metrics=self.metrics,
        )
        await self._batcher.start()
        self._ready = True

    def _load_pool(self) -> list[str]:
        """Upstream mode has no model: the pool comes from ``pool_file`` or the model folder's pool."""
        from detectors.strip.classifier import POOL_FILE, default_model_dir

        folder = Path(self.params.model_dir).expanduser() if self.params.model_dir else default_model_dir()
        path = Path(self.params.pool_file) if self.params.pool_file else folder / POOL_FILE
        pool = _read_pool(path) if path.is_file() else []
        if not pool:
            raise RuntimeError(f"no clean word pool: set pool_file (no {path})")
        return pool

    def _check_artefacts(self, folder: Path) -> dict[str, Any]:
        """Check the replica's pins before anything in ``folder`` is read (see the module docstring)."""
        from firewall.models.artefacts import read_pins, unpinned, verify_folder
        from firewall.models.cache import MANIFEST

        ours = self.params.model_dir is None or (folder / MANIFEST).is_file()
        if not ours and read_pins(folder) is None:
            return unpinned(folder, f"STRIP replica of {self.name}", detector=self.name)
        fix = (
            "rebuild it with `trigger-firewall demo build`"
            if self.params.model_dir is None
            else f"rebuild it, or re-pin it (`trigger-firewall models pin {folder}`) if the change is yours"
        )
        return verify_folder(folder, fix=fix, detector=self.name).as_dict()

    def _load(self) -> None:
        from detectors.strip.classifier import TextClassifier, default_model_dir

        folder = Path(self.params.model_dir).expanduser() if self.params.model_dir else default_model_dir()
        if not folder.is_dir():
            raise RuntimeError(
                f"no STRIP replica folder {folder}; build it with `trigger-firewall demo build`"
            )
        self._artefacts = self._check_artefacts(folder)
        model: TextClassifier | RemoteTextClassifier
        if self.params.triton is not None:
            model = RemoteTextClassifier(folder, self.params.triton, detector=self.name)
        else:
            model = TextClassifier(folder, device=self.params.device, threads=self.params.threads)
        self._pool = _read_pool(Path(self.params.pool_file)) if self.params.pool_file else model.pool_words()
        if not self._pool:
            raise RuntimeError(f"no clean word pool: {folder} has no pool.json and no pool_file is set")
        n_classes = int(model.predict_proba(["warm up"]).shape[1])
        self._h_max = math.log2(n_classes)
        cals = model.metadata.get("strip") if isinstance(model.metadata, dict) else None
        for cal in cals if isinstance(cals, list) else []:
            if isinstance(cal, dict) and _matches(cal, self.params):
                self._clean_q = float(cal["clean_entropy_q"])
        self._model = model

    @property
    def ready(self) -> bool:
        """Loaded, and (remote backend) Triton's server and model report ready right now."""
        return self._ready and (not isinstance(self._model, RemoteTextClassifier) or self._model.healthy)

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
        self._prober = None
        if isinstance(self._model, RemoteTextClassifier):
            self._model.close()
        self._model = None
        self._ready = False

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self._model is not None:
            out["providers"] = self._model.providers
            out["calibrated"] = self._clean_q is not None
        if self._artefacts is not None:
            out["artefacts"] = self._artefacts
        if self.load_error:
            out["load_error"] = self.load_error
            out["load_reason"] = self.load_reason
        return out

    # -- scoring -----------------------------------------------------------------

    def plan(self, text: str) -> _Plan:
        rng = random.Random(_seed_for(self.params.seed, text))  # noqa: S311 - perturbation, not security
        return perturb(
            text,
            self._pool,
            n=self.params.n_perturbations,
            replace_rate=self.params.replace_rate,
            superimpose=self.params.superimpose_words,
            rng=rng,
            max_words=self.params.max_words,
        )

    def _run_batch(self, items: list[list[_Plan]]) -> list[list[StripResult]]:
        """One forward pass for every copy of every segment of every sample in the batch."""
        texts = [c for plans in items for plan in plans for c in plan.copies]
        probs = self._model.predict_proba(texts) if texts else np.zeros((0, 2), np.float32)
        out: list[list[StripResult]] = []
        i = 0
        for plans in items:
            results = []
            for plan in plans:
                n = len(plan.copies)
                results.append(strip_entropy(plan, probs[i : i + n], self.params.attribution_margin))
                i += n
            out.append(results)
        return out

    def score_entropy(self, entropy: float) -> float:
        """Map a mean entropy (bits) to the [0, 1] suspicion score (see the module docstring)."""
        h = min(max(entropy, 0.0), self._h_max)
        q = self._clean_q
        if q is None or not 0.0 < q < self._h_max:
            return 1.0 - h / self._h_max
        if h <= q:
            return 1.0 - 0.5 * h / q
        return 0.5 * (self._h_max - h) / (self._h_max - q)

    async def explain(self, texts: Sequence[str]) -> list[StripResult]:
        """STRIP results for raw texts (entropy, N, survivors): for the CLI, reports and tests."""
        if self._batcher is None:
            raise RuntimeError("detector not started")
        plans = [self.plan(t) for t in texts]
        return list(await self._batcher.submit(plans))

    async def score(self, batch: Sequence[Sample]) -> list[Finding]:
        if self._prober is not None:
            return list(await asyncio.gather(*(self._probe_one(s) for s in batch)))
        if self._batcher is None:
            return [Finding.failed(self.name, FindingStatus.ERROR, "detector not started") for _ in batch]
        return list(await asyncio.gather(*(self._score_one(s) for s in batch)))

    async def _score_one(self, sample: Sample) -> Finding:
        started = time.perf_counter()
        segs = [(i, s.text) for i, s in enumerate(sample.segments) if s.text.strip()]
        if not segs:
            return Finding(self.name, 0.0, duration_seconds=time.perf_counter() - started)
        plans = [self.plan(text) for _, text in segs]
        results: list[StripResult] = await self._batcher.submit(plans)
        return self._finding(
            [(seg, res) for (seg, _), res in zip(segs, results, strict=True)], set(), started
        )

    async def _probe_one(self, sample: Sample) -> Finding:
        """Upstream mode: user segments, last first, while the request's probe budget lasts."""
        assert self._prober is not None  # noqa: S101 - checked by score()
        started = time.perf_counter()
        budget = self.params.probe.budget
        results: list[tuple[int, StripResult]] = []
        reasons: set[str] = set()
        segs = [(i, s.text) for i, s in enumerate(sample.segments) if s.role == "user" and s.text.strip()]
        for seg, text in reversed(segs):
            plan = self.plan(text)
            n = min(len(plan.copies), budget)
            if n < 2:
                reasons.add(R_BUDGET)
                self._prober.count("over_budget", len(plan.copies))
                continue
            if n < len(plan.copies):
                reasons.add(R_BUDGET)
                self._prober.count("over_budget", len(plan.copies) - n)
                plan = _Plan(plan.words, plan.copies[:n], plan.kept[:n], plan.truncated)
            budget -= n
            try:
                ent = await self._prober.entropies(plan.copies, sample.model)
            except UpstreamProbeTimeout as exc:
                return Finding.failed(self.name, FindingStatus.TIMEOUT, str(exc))
            except UpstreamProbeError as exc:
                return Finding.failed(self.name, FindingStatus.ERROR, str(exc))
            results.append((seg, strip_from_entropies(plan, np.asarray(ent), self.params.attribution_margin)))
        return self._finding(results, reasons, started)

    def _finding(self, results: list[tuple[int, StripResult]], reasons: set[str], started: float) -> Finding:
        best = 0.0
        spans: list[Span] = []
        for seg, res in results:
            s = self.score_entropy(res.entropy)
            best = max(best, s)
            if res.truncated:
                reasons.add(R_TRUNCATED)
            if s >= 0.5:
                reasons.add(R_LOW_ENTROPY)
                if res.survivors:
                    reasons.add(R_SURVIVOR)
                spans.extend(Span(seg, a, b, R_SURVIVOR) for a, b in res.survivors)
        # Words past max_words, or segments past the probe budget, were not perturbed: the
        # score is a lower bound, and below the threshold the rule's on_error decides.
        unread = R_TRUNCATED in reasons or R_BUDGET in reasons
        return Finding(
            self.name,
            round(best, 6),
            status=FindingStatus.PARTIAL if unread else FindingStatus.OK,
            reasons=tuple(sorted(reasons)),
            spans=tuple(sorted(spans, key=lambda sp: (sp.segment, sp.start))),
            duration_seconds=time.perf_counter() - started,
        )


def _matches(cal: dict[str, Any], p: StripParams) -> bool:
    """A stored calibration applies only to the perturbation settings it was measured with."""
    return (
        cal.get("n_perturbations") == p.n_perturbations
        and cal.get("replace_rate") == p.replace_rate
        and cal.get("superimpose_words") == p.superimpose_words
        and cal.get("seed") == p.seed
        and isinstance(cal.get("clean_entropy_q"), (int, float))
    )


def _read_pool(path: Path) -> list[str]:
    raw = path.read_bytes()
    if path.suffix == ".json":
        import orjson

        data = orjson.loads(raw)
        words = data.get("words", []) if isinstance(data, dict) else data
        return [w for w in words if isinstance(w, str) and w]
    return raw.decode("utf-8").split()
