"""The embedded reference language model at serving time: per-token surprisal.

A backdoor trigger is usually a token that does not belong where it stands: a
rare word or abbreviation dropped into fluent text. A small reference language
model measures exactly that: the surprisal ``-log2 p(token | left context)`` of an
inserted trigger (" cf", " bb") is 20-30 bits against a sentence median near 5,
and the token after it spikes too (docs/detectors/perplexity.md). This module turns text into
those numbers; the detectors built on it (max-token surprisal, ONION
leave-one-word-out) decide what they mean.

Design:

* **No transformers at serving time.** The ONNX path needs onnxruntime, numpy and
  ``tokenizers`` only. The prepared graph already reduces logits to per-token
  surprisal and entropy (see :mod:`firewall.models.surprisal_torch`), so a batch
  of 32 x 64 tokens returns 2 x 8 KB instead of 400 MB of logits.
* **One tokenizer for every backend** (``tokenizer.json`` via ``tokenizers``), so
  token ids and character offsets (evidence spans) never depend on the backend.
* **Right padding**, rows sorted by length and padded to a multiple of
  ``pad_multiple``: a padded row scores as it would alone, and few distinct shapes
  reach the runtime.
* **Windows for long texts**: a text longer than ``max_tokens`` is scored in
  overlapping windows and merged, each token keeping the score from the window
  that gave it the most left context, so a trigger at the end is never truncated away.
* **Synchronous, one caller at a time** (a lock guards the session): it runs in
  the :class:`~firewall.core.batching.MicroBatcher`'s executor thread, never on the
  event loop. Loading is explicit (:meth:`ReferenceLM.load`); a missing model
  raises :class:`ModelUnavailable` naming the command that prepares it.
* **Pinned files.** A prepared folder's ``manifest.json`` pins every file's sha256
  (:mod:`firewall.models.artefacts`); the load checks the files the chosen backend
  reads before reading them, and refuses (:class:`~firewall.models.artefacts.ArtefactMismatch`)
  a changed, missing or added file, or a prepared folder with no pins. A folder the
  firewall did not prepare (no ``manifest.json``: an operator's own export) is loaded
  with a warning, unless it was pinned with ``trigger-firewall models pin``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from firewall.models.artefacts import filter_out, read_pins, unpinned, verify_folder
from firewall.models.cache import (
    DEFAULT_MODEL_ID,
    PREPARE_COMMAND,
    ModelUnavailable,
    model_dir,
    read_manifest,
)
from firewall.models.triton import TritonEndpoint, TritonError, TritonSurprisalBackend

__all__ = [
    "ModelUnavailable",
    "ReferenceLM",
    "ReferenceLMConfig",
    "TokenSurprisal",
    "merge_windows",
    "split_windows",
    "surprisal_from_logits",
    "variants_without",
]

log = logging.getLogger("trigger_firewall.reference_lm")

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
Item = str | Sequence[int]

_INV_LN2: Final = float(1.0 / np.log(2.0))
_ONNX_FILE: Final = "model.onnx"
_INT8_FILE: Final = "model.int8.onnx"  # firewall.models.quantize.INT8_FILE (not imported: it needs onnx)
_WEIGHTS_FILE: Final = "model.safetensors"
_TOKENIZER_FILE: Final = "tokenizer.json"
# A remote model must reproduce the manifest's reference surprisal this closely. Looser than
# the prepare step's check: it tells another model or tokenizer (bits apart) from GPU
# arithmetic (TF32, other kernels), not one runtime from another.
_REMOTE_TOLERANCE_BITS: Final = 0.05


class ReferenceLMConfig(BaseModel):
    """How to find and run the reference model. Unknown keys are errors.

    ``model_path`` may be a prepared cache folder, a Hugging Face causal-LM folder
    (safetensors + tokenizer.json, torch backend), or an ``.onnx`` file (its folder or
    the one above must hold tokenizer.json); unset, the default model in the cache.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str | None = None
    cache_dir: str | None = Field(None, description="Cache root; default $TRIGGER_FIREWALL_CACHE_DIR or XDG.")
    model_id: str = DEFAULT_MODEL_ID
    backend: Literal["auto", "onnxruntime", "torch", "triton"] = Field(
        "auto", description="'triton': the forward pass runs on the Triton server in `triton`."
    )
    triton: TritonEndpoint | None = Field(
        None,
        description="backend 'triton' only: the KServe v2 endpoint serving the prepared model.onnx. "
        "The tokenizer (and manifest) still come from model_path or the cache.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(
        None, ge=1, le=256, description="Intra-op threads; default min(2, CPUs), sized for a 2-core sidecar."
    )
    dtype: Literal["float32", "bfloat16", "int8"] = Field(
        "float32",
        description="'bfloat16': torch backend only; half the memory, faster on CPUs with AVX512-BF16, "
        "~0.04 bit a token from fp32 (median; 0.3 max). 'int8': onnxruntime on CPU only, the "
        "model.int8.onnx graph made by `trigger-firewall models prepare --quantize int8`; ~1.5x faster "
        "than fp32 on CPU, ~0.15 bit a token from fp32 (median; see docs/models.md).",
    )
    cuda_graphs: Literal["graphs", "compile", "eager", "off"] = Field(
        "graphs",
        description="torch backend on CUDA only: replay the forward pass from CUDA graphs captured "
        "at start-up for bucketed (rows, length) shapes ('graphs'), or torch.compile's "
        "reduce-overhead mode ('compile'), or bucketed eager passes ('eager'); 'off': plain eager. "
        "Eager passes of this model are launch-bound on a large GPU (see docs/models.md).",
    )
    spin_wait: bool = Field(
        False,
        description="onnxruntime: let idle worker threads spin. Off: on a shared 2-core sidecar spinning "
        "burns the proxy's CPU and measured 1.5x slower under contention.",
    )
    max_tokens: int = Field(128, ge=8, le=8192, description="Window length in tokens.")
    overlap: int = Field(32, ge=1, description="Tokens of left context repeated between windows.")
    batch_size: int = Field(32, ge=1, le=4096, description="Rows per forward pass.")
    max_batch_tokens: int = Field(
        2048,
        ge=1,
        description="Padded tokens per forward pass (rows x length); bounds the transient memory "
        "(~2.2 GB peak at 32 x 64 on CPU). A single longer row still runs alone.",
    )
    pad_multiple: int = Field(8, ge=1, le=512, description="Pad each batch's length to a multiple of this.")
    release_memory_above_tokens: int = Field(
        512,
        ge=0,
        description="onnxruntime: after a forward pass of more padded tokens than this, hand the arena's "
        "memory back (RSS ~0.95 GB instead of ~2.3 GB after a 32 x 64 pass). Small passes keep the "
        "arena warm: running without one cost 6-10% at 1 x 64.",
    )

    @model_validator(mode="after")
    def _overlap_fits(self) -> ReferenceLMConfig:
        if self.overlap >= self.max_tokens:
            raise ValueError("overlap must be smaller than max_tokens")
        if (self.backend == "triton") != (self.triton is not None):
            raise ValueError("backend 'triton' needs a `triton` endpoint, and only it takes one")
        if self.dtype == "int8" and (self.backend not in ("auto", "onnxruntime") or self.device == "cuda"):
            raise ValueError(
                "dtype 'int8' is an onnxruntime CPU graph: use backend auto/onnxruntime, not cuda"
            )
        return self


@dataclass(frozen=True, slots=True)
class TokenSurprisal:
    """Per-token scores for one text (or one token-id list).

    ``surprisal[i]`` is ``-log2 p(token i | tokens < i)`` in bits, NaN for token 0 (it
    has no left context). ``entropy[i]`` is the entropy of the distribution that
    predicted token ``i`` (NaN for token 0), or None when the backend does not provide
    it. ``offsets[i]`` is the ``[start, end)`` character span of token ``i`` in
    ``text`` (a leading space belongs to the token), None for token-id input.
    """

    token_ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...] | None
    surprisal: FloatArray
    entropy: FloatArray | None
    text: str | None = None
    windows: int = 1

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def mean_bits(self) -> float:
        """Mean surprisal (bits a token): log2 of the perplexity; NaN below two tokens."""
        scored = self.surprisal[1:]
        return float(scored.mean()) if scored.size else float("nan")

    @property
    def perplexity(self) -> float:
        return float(2.0**self.mean_bits)

    def argmax(self) -> int | None:
        """Index of the most surprising token, or None when no token is scored."""
        if len(self.token_ids) < 2:
            return None
        return int(np.nanargmax(self.surprisal))

    def span(self, index: int) -> tuple[int, int] | None:
        """Character span of token ``index`` without its leading whitespace."""
        if self.offsets is None or self.text is None:
            return None
        start, end = self.offsets[index]
        while start < end and self.text[start].isspace():
            start += 1
        return start, end


# -- pure helpers ------------------------------------------------------------------


def split_windows(n_tokens: int, max_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, end)`` windows of exactly ``max_tokens`` covering ``n_tokens`` tokens.

    Consecutive windows share at least ``overlap`` tokens; the last one is aligned
    to the end of the text, so every window has the same length (one bucket) and the
    last tokens are always scored. A text that fits is one window.
    """
    if not 1 <= overlap < max_tokens:
        raise ValueError("need 1 <= overlap < max_tokens")
    if n_tokens <= max_tokens:
        return [(0, n_tokens)]
    step = max_tokens - overlap
    starts = list(range(0, n_tokens - max_tokens, step))
    starts.append(n_tokens - max_tokens)
    return [(s, s + max_tokens) for s in starts]


def merge_windows(
    n_tokens: int, windows: Sequence[tuple[int, int]], scores: Sequence[FloatArray]
) -> FloatArray:
    """Merge per-window scores (``scores[w][j]`` scores token ``start_w + j + 1``).

    Each token takes its value from the earliest window in which it is not the
    first token: that window gave it the most left context.
    """
    out = np.full(n_tokens, np.nan, dtype=np.float32)
    for (start, end), values in sorted(zip(windows, scores, strict=True)):
        target = out[start + 1 : end]
        fill = np.isnan(target)
        target[fill] = values[: end - start - 1][fill]
    return out


def surprisal_from_logits(
    logits: npt.NDArray[np.floating[Any]], input_ids: IntArray
) -> tuple[FloatArray, FloatArray]:
    """Surprisal and entropy (bits, ``[B, T-1]``) from full ``[B, T, V]`` logits.

    Only for foreign ONNX exports that output logits; prepared models compute this
    inside the graph.
    """
    z = logits[:, :-1, :].astype(np.float32)
    z = z - z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=-1, keepdims=True))
    logp = z - log_norm
    target = input_ids[:, 1:, None]
    surprisal = -np.take_along_axis(logp, target, axis=-1)[..., 0] * _INV_LN2
    entropy = -(np.exp(logp) * logp).sum(axis=-1) * _INV_LN2
    return surprisal.astype(np.float32), entropy.astype(np.float32)


def variants_without(text: str, spans: Sequence[tuple[int, int]]) -> list[str]:
    """``text`` with each ``[start, end)`` span removed in turn (ONION leave-one-out).

    Score ``[text, *variants_without(text, spans)]`` in one :meth:`ReferenceLM.surprisal_batch`
    call: they share a bucket and a forward pass. Whitespace left doubled by a removal is
    collapsed to one character, so the variant reads like a sentence without that word.
    """
    out = []
    for start, end in spans:
        left, right = text[:start], text[end:]
        if right.startswith((" ", "\t")) and (not left or left.endswith((" ", "\t"))):
            right = right[1:]
        out.append(left + right)
    return out


# -- backends ----------------------------------------------------------------------


class _Backend(Protocol):
    name: str
    device: str
    has_entropy: bool

    def run(self, ids: IntArray, mask: IntArray) -> tuple[FloatArray, FloatArray | None]:
        """``[B, T]`` ids and mask -> ``[B, T-1]`` surprisal (and entropy)."""


class _OnnxBackend:
    name = "onnxruntime"

    def __init__(self, path: Path, device: str, threads: int, spin_wait: bool, release_above: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        self.release_above = release_above
        self.shrink = ort.RunOptions()
        self.shrink.add_run_config_entry(
            "memory.enable_memory_arena_shrinkage", "cpu:0;gpu:0" if device == "cuda" else "cpu:0"
        )
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: list[Any] = ["CPUExecutionProvider"]
        if device == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise ModelUnavailable("onnxruntime could not start its CUDA execution provider")
        self.device = device
        self.inputs = {i.name for i in self.session.get_inputs()}
        unknown = self.inputs - {"input_ids", "attention_mask", "position_ids"}
        if unknown:
            raise ModelUnavailable(
                f"{path}: unsupported ONNX inputs {sorted(unknown)} (exports with a KV cache are not "
                f"supported; use `{PREPARE_COMMAND}` or an export without past key values)"
            )
        outputs = {o.name for o in self.session.get_outputs()}
        if "surprisal" in outputs:
            self.output_names = ["surprisal", "entropy"] if "entropy" in outputs else ["surprisal"]
            self.logits = False
        elif "logits" in outputs:
            self.output_names = ["logits"]
            self.logits = True
        else:
            raise ModelUnavailable(f"{path}: the graph outputs neither 'surprisal' nor 'logits'")
        self.has_entropy = self.logits or "entropy" in outputs

    def run(self, ids: IntArray, mask: IntArray) -> tuple[FloatArray, FloatArray | None]:
        feed = {"input_ids": ids}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = mask
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
        big = ids.size > self.release_above
        outputs = self.session.run(self.output_names, feed, self.shrink if big else None)
        keep = mask[:, 1:].astype(np.float32)
        if self.logits:
            surprisal, entropy = surprisal_from_logits(outputs[0], ids)
            return surprisal * keep, entropy * keep
        entropy_out = np.asarray(outputs[1], dtype=np.float32) if len(outputs) > 1 else None
        return np.asarray(outputs[0], dtype=np.float32), entropy_out


class _TorchBackend:
    """transformers + torch, on CPU or CUDA: the surprisal head in-process.

    The head uses the fused reduction (:mod:`firewall.models.surprisal_torch`; same
    numbers as the exported graph's, fewer passes over the vocabulary). On CPU it runs
    ``CPU_CHUNK_ROWS`` token rows at a time, which bounds the transient memory. On CUDA
    (``cuda_graphs`` other than off/compile) the reduction is compiled into fused kernels
    when torch.compile works there, and the forward pass replays from bucketed CUDA
    graphs through :meth:`GraphedSurprisal.run_numpy` (one copy in, one copy out).
    """

    name = "torch"
    has_entropy = True

    def __init__(
        self, folder: Path, device: str, threads: int, dtype: str, config: ReferenceLMConfig | None = None
    ) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch
        import transformers

        from firewall.models.surprisal_torch import (
            CPU_CHUNK_ROWS,
            CUDA_CHUNK_ROWS,
            SurprisalHead,
            compiled_reducer,
        )

        hf: Any = transformers  # its loaders are typed for model classes, not paths
        hf.utils.logging.disable_progress_bar()

        if device == "cpu":
            torch.set_num_threads(threads)  # process-wide: the sidecar runs one model
        torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        model = hf.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype, local_files_only=True)
        model = model.to(device).eval()
        self.torch = torch
        self.device = device
        graphs = config.cuda_graphs if config is not None else "off"
        graphed = device == "cuda" and graphs != "off"
        head = SurprisalHead(
            model,
            causal_only=graphed,
            reduction="fused",
            chunk_rows=CUDA_CHUNK_ROWS if device == "cuda" else CPU_CHUNK_ROWS,
        ).eval()
        self.reducer = "eager"
        if device == "cuda" and graphs in ("graphs", "eager"):
            reducer = compiled_reducer(device, int(model.config.vocab_size))
            if reducer is not None:
                head.reduce = reducer
                self.reducer = "compiled"
        self.head: Any = head
        self.runner: Any = None  # the GraphedSurprisal serving the head, when graphed
        if graphed and graphs != "off":  # (the second test narrows the mode's type)
            from firewall.models.cuda_graphs import GraphedSurprisal

            assert config is not None  # noqa: S101 - graphs is "off" without a config
            runner = GraphedSurprisal(
                head, device, max_rows=config.batch_size, max_tokens=config.max_tokens, mode=graphs
            )
            runner.warmup()
            self.head = self.runner = runner

    def run(self, ids: IntArray, mask: IntArray) -> tuple[FloatArray, FloatArray | None]:
        if self.runner is not None:
            both = self.runner.run_numpy(ids, mask)
            return both[0], both[1]
        torch = self.torch
        with torch.inference_mode():
            t_ids = torch.from_numpy(ids).to(self.device)
            t_mask = torch.from_numpy(mask).to(self.device)
            surprisal, entropy = self.head(t_ids, t_mask)
            both = torch.stack((surprisal.float(), entropy.float())).cpu().numpy()  # one copy, one sync
        return both[0], both[1]


# -- the model -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Files:
    onnx: Path | None
    weights: Path | None  # a folder from_pretrained can load
    tokenizer: Path
    manifest: dict[str, Any] | None
    folder: Path | None = None  # the folder whose pins cover these files
    prepared: bool = False  # the folder has the firewall's manifest: it must carry pins


def _check_artefacts(config: ReferenceLMConfig, files: _Files, backend: str) -> dict[str, Any]:
    """Check the pins of the files ``backend`` will read; what was checked, for describe().

    A folder the firewall prepared (it has a manifest) must carry pins and match them;
    one without a manifest is an operator's own export: checked when pinned, else
    loaded with a warning. The files the backend does not read are checked by size only.
    """
    folder = files.folder
    if folder is None:  # pragma: no cover - _locate always names a folder
        return unpinned(files.tokenizer.parent, "reference model")
    if not files.prepared and read_pins(folder) is None:
        return unpinned(folder, "reference model")
    if backend == "onnxruntime" and files.onnx is not None:
        chosen = files.onnx.relative_to(folder).as_posix()
        hashed = filter_out((".safetensors", ".onnx", ".onnx.data"), keep=(chosen, f"{chosen}.data"))
    elif backend == "torch":
        hashed = filter_out((".onnx", ".onnx.data"))
    else:  # triton: only the tokenizer and the manifest are read here
        hashed = filter_out((".safetensors", ".onnx", ".onnx.data"))
    where = f" --cache-dir {config.cache_dir}" if config.cache_dir and config.model_path is None else ""
    verified = verify_folder(
        folder,
        fix=f"the folder was changed after it was prepared: re-run `{PREPARE_COMMAND} --force{where}`, "
        f"or `{PREPARE_COMMAND}{where}` for a folder prepared by an older release",
        hash_filter=hashed,
    )
    log.info(
        "reference model files match their sha256 pins: %d files, %.0f MB hashed in %.2f s",
        verified.files,
        verified.hashed_bytes / 1e6,
        verified.seconds,
    )
    return verified.as_dict()


def _locate(config: ReferenceLMConfig) -> _Files:
    """Find the graph, weights and tokenizer that ``config`` points at."""
    if config.model_path is None:
        folder = model_dir(config.model_id, config.cache_dir)
        manifest = read_manifest(folder)
        if manifest is None:
            raise ModelUnavailable(
                f"the reference model is not prepared (no manifest in {folder}); run "
                f"`{PREPARE_COMMAND}`" + (f" --cache-dir {config.cache_dir}" if config.cache_dir else "")
            )
    else:
        folder = Path(config.model_path).expanduser()
        manifest = read_manifest(folder) if folder.is_dir() else None
    if folder.is_file():
        if folder.suffix != ".onnx":
            raise ModelUnavailable(f"{folder}: expected an .onnx file or a model folder")
        if config.dtype == "int8":
            raise ModelUnavailable(
                f"{folder}: dtype int8 selects {_INT8_FILE} in a prepared folder; to serve this ONNX "
                "file as it is, leave dtype at float32"
            )
        tokenizer = next(
            (
                p / _TOKENIZER_FILE
                for p in (folder.parent, folder.parent.parent)
                if (p / _TOKENIZER_FILE).is_file()
            ),
            None,
        )
        if tokenizer is None:
            raise ModelUnavailable(f"no {_TOKENIZER_FILE} beside {folder} or in the folder above")
        parent = folder.parent
        prepared = read_manifest(parent) is not None
        return _Files(folder, None, tokenizer, None, parent, prepared)
    if not folder.is_dir():
        raise ModelUnavailable(f"model path {folder} does not exist; run `{PREPARE_COMMAND}`")
    onnx = folder / (_INT8_FILE if config.dtype == "int8" else _ONNX_FILE)
    has_weights = (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
    tokenizer = folder / _TOKENIZER_FILE
    if not tokenizer.is_file():
        raise ModelUnavailable(f"no {_TOKENIZER_FILE} in {folder}")
    if config.dtype == "int8" and not onnx.is_file():
        where = f" --cache-dir {config.cache_dir}" if config.cache_dir else ""
        raise ModelUnavailable(
            f"dtype int8: no {_INT8_FILE} in {folder}; run `{PREPARE_COMMAND} --quantize int8{where}` "
            "(seconds when the model is already prepared)"
        )
    if config.dtype == "int8":
        # no torch fallback: torch has no such graph
        return _Files(onnx, None, tokenizer, manifest, folder, manifest is not None)
    return _Files(
        onnx if onnx.is_file() else None,
        folder if has_weights else None,
        tokenizer,
        manifest,
        folder,
        manifest is not None,
    )


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda_for(backend: str) -> bool:
    if backend == "onnxruntime":
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    import torch

    return bool(torch.cuda.is_available())


def _pick_backend(config: ReferenceLMConfig, files: _Files) -> tuple[str, str]:
    """(backend, device) for ``config``: onnxruntime first, torch when it cannot serve.

    ``device: auto`` uses CUDA when the chosen runtime sees a GPU; ``device: cuda``
    never silently falls back to CPU.
    """
    if config.backend == "triton":
        return "triton", "remote"
    reasons: list[str] = []
    order = ["onnxruntime", "torch"] if config.backend == "auto" else [config.backend]
    for backend in order:
        if backend == "onnxruntime":
            if files.onnx is None:
                reasons.append("onnxruntime: no model.onnx (prepare with --format onnx or both)")
                continue
            if not _installed("onnxruntime"):
                reasons.append("onnxruntime: not installed (pip install 'trigger-firewall[cpu]' or [gpu])")
                continue
        else:
            if files.weights is None:
                reasons.append("torch: no safetensors weights (prepare with --format safetensors or both)")
                continue
            if not (_installed("torch") and _installed("transformers")):
                reasons.append(
                    "torch: torch/transformers not installed (pip install 'trigger-firewall[torch]')"
                )
                continue
        # int8 is a CPU graph (MatMulInteger); device auto serves it on the CPU even beside a GPU.
        cuda = _cuda_for(backend) if config.device != "cpu" and config.dtype != "int8" else False
        if config.device == "cuda" and not cuda:
            reasons.append(f"{backend}: device cuda requested but no GPU is visible to it")
            continue
        return backend, "cuda" if cuda else "cpu"
    raise ModelUnavailable("no usable backend for the reference model: " + "; ".join(reasons))


class ReferenceLM:
    """A loaded reference model: tokenize, then score tokens in bits.

    Build it with :meth:`load`. Every method is synchronous; :meth:`surprisal_batch`
    may be called from any one thread at a time (a lock serializes callers).
    """

    def __init__(
        self, config: ReferenceLMConfig, backend: _Backend, tokenizer: Any, info: dict[str, Any]
    ) -> None:
        self.config = config
        self._backend = backend
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self._info = info
        self._max_tokens = min(config.max_tokens, int(info.get("max_positions") or config.max_tokens))
        self._pad_id = int(info.get("pad_token_id") or 0)

    @classmethod
    def load(cls, config: ReferenceLMConfig | None = None) -> ReferenceLM:
        """Find, pick a backend for, and load the model. Raises :class:`ModelUnavailable`."""
        config = config or ReferenceLMConfig()
        files = _locate(config)
        backend_name, device = _pick_backend(config, files)
        threads = config.threads or min(2, os.cpu_count() or 1)
        start = time.perf_counter()
        artefacts = _check_artefacts(config, files, backend_name)
        if not _installed("tokenizers"):
            raise ModelUnavailable(
                "the reference model needs the `tokenizers` package: pip install tokenizers"
            )
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(files.tokenizer))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        backend: _Backend
        try:
            if backend_name == "triton" and config.triton is not None:
                backend = TritonSurprisalBackend.connect(config.triton)
            elif backend_name == "onnxruntime" and files.onnx is not None:
                backend = _OnnxBackend(
                    files.onnx, device, threads, config.spin_wait, config.release_memory_above_tokens
                )
            elif files.weights is not None:
                backend = _TorchBackend(files.weights, device, threads, config.dtype, config)
            else:  # pragma: no cover - _pick_backend only picks a backend whose files exist
                raise ModelUnavailable(f"no files for the {backend_name} backend")
        except ModelUnavailable:
            raise
        except TritonError as exc:
            raise ModelUnavailable(f"remote reference model not usable: {exc}") from exc
        except Exception as exc:  # a corrupt file, a runtime that cannot start
            raise ModelUnavailable(
                f"cannot load the reference model with {backend_name}: {type(exc).__name__}: {exc}; "
                f"re-run `{PREPARE_COMMAND} --force`"
            ) from exc
        manifest = files.manifest or {}
        info = {
            "backend": backend_name,
            "device": device,
            "threads": threads,
            "dtype": config.dtype if backend_name == "torch" or config.dtype == "int8" else "float32",
            "model": (
                backend.client.target
                if isinstance(backend, TritonSurprisalBackend)
                else str(files.onnx if backend_name == "onnxruntime" else files.weights)
            ),
            "model_id": manifest.get("model_id", config.model_id if config.model_path is None else None),
            "max_positions": manifest.get("max_position_embeddings"),
            "pad_token_id": manifest.get("pad_token_id"),
            "entropy": backend.has_entropy,
            "artefacts": artefacts,
            "load_seconds": round(time.perf_counter() - start, 3),
        }
        log.info("reference model loaded: %s", info)
        lm = cls(config, backend, tokenizer, info)
        if isinstance(backend, TritonSurprisalBackend):
            lm._verify_remote(manifest)
        return lm

    def _verify_remote(self, manifest: dict[str, Any]) -> None:
        """A remote model must reproduce the manifest's reference scores for the local tokenizer.

        Catches a Triton serving another model (or a tokenizer from another model) at load time,
        instead of scoring garbage. Skipped when the local folder has no manifest.
        """
        check = manifest.get("verification") or {}
        rows, reference = check.get("token_ids"), check.get("reference_surprisal_bits")
        if not (isinstance(rows, list) and isinstance(reference, list) and rows):
            return
        try:
            got = self.surprisal_batch([list(map(int, r)) for r in rows])
        except TritonError as exc:
            self.close()
            raise ModelUnavailable(f"remote reference model not usable: {exc}") from exc
        diff = max(
            float(np.nanmax(np.abs(g.surprisal[1:] - np.asarray(ref, dtype=np.float32))))
            for g, ref in zip(got, reference, strict=True)
        )
        self._info["remote_max_abs_diff_bits"] = round(diff, 6)
        if not diff <= _REMOTE_TOLERANCE_BITS:
            self.close()
            raise ModelUnavailable(
                f"the Triton model differs from the local manifest's reference by {diff:.3g} bits "
                f"(> {_REMOTE_TOLERANCE_BITS}): it serves another model, or the tokenizer is another model's"
            )

    @property
    def backend_ready(self) -> bool:
        """False while a remote backend's server or model is not ready; in-process backends: True."""
        return bool(getattr(self._backend, "ready", True))

    def close(self) -> None:
        """Release what the backend holds beyond memory (a remote backend's connections and
        health-check thread). In-process backends need nothing: they are freed with the object."""
        closer = getattr(self._backend, "close", None)
        if callable(closer):
            closer()

    def describe(self) -> dict[str, Any]:
        """Backend, device, threads, file and load time, for ``/config`` and logs."""
        return dict(self._info)

    @property
    def has_entropy(self) -> bool:
        return self._backend.has_entropy

    # -- tokens --------------------------------------------------------------------

    def tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and ``[start, end)`` character offsets of ``text``."""
        encoding = self._tokenizer.encode(text)
        return list(encoding.ids), [tuple(o) for o in encoding.offsets]

    def count_tokens(self, text: str) -> int:
        """Token count, e.g. the MicroBatcher's ``bucket_key``."""
        return len(self._tokenizer.encode(text).ids)

    def windows(self, n_tokens: int, max_tokens: int | None = None) -> list[tuple[int, int]]:
        """The windows :meth:`surprisal_batch` would use for ``n_tokens`` tokens."""
        size = min(max_tokens or self._max_tokens, self._max_tokens)
        return split_windows(n_tokens, size, min(self.config.overlap, size - 1))

    # -- scoring -------------------------------------------------------------------

    def warmup(self) -> None:
        """One short batch, so the first request does not pay for allocations."""
        self.surprisal_batch(["The firewall warms up its reference model."] * 2)

    def surprisal_batch(self, items: Sequence[Item], max_tokens: int | None = None) -> list[TokenSurprisal]:
        """Score texts (or token-id lists); one :class:`TokenSurprisal` each, in order.

        Texts longer than ``max_tokens`` (default: the config's) are scored in
        overlapping windows and merged. All windows of all items go through forward
        passes of at most ``batch_size`` rows and ``max_batch_tokens`` padded tokens,
        sorted by length to limit padding.
        """
        size = min(max_tokens or self._max_tokens, self._max_tokens)
        if size < 2:
            raise ValueError("max_tokens must be at least 2")
        overlap = min(self.config.overlap, size - 1)
        ids_list, offsets_list, texts = self._encode(items)
        rows: list[tuple[int, int, int]] = []  # (item, start, end)
        plans: list[list[tuple[int, int]]] = []
        for index, ids in enumerate(ids_list):
            plan = split_windows(len(ids), size, overlap) if len(ids) >= 2 else []
            plans.append(plan)
            rows.extend((index, start, end) for start, end in plan)
        surprisal_rows: dict[tuple[int, int], FloatArray] = {}
        entropy_rows: dict[tuple[int, int], FloatArray] = {}
        rows.sort(key=lambda r: r[2] - r[1])
        with self._lock:
            for chunk in self._chunks(rows):
                self._run_rows(chunk, ids_list, surprisal_rows, entropy_rows)
        results = []
        for index, ids in enumerate(ids_list):
            plan = plans[index]
            surprisal = merge_windows(len(ids), plan, [surprisal_rows[(index, s)] for s, _ in plan])
            entropy = (
                merge_windows(len(ids), plan, [entropy_rows[(index, s)] for s, _ in plan])
                if self._backend.has_entropy
                else None
            )
            results.append(
                TokenSurprisal(
                    token_ids=tuple(ids),
                    offsets=offsets_list[index],
                    surprisal=surprisal,
                    entropy=entropy,
                    text=texts[index],
                    windows=max(len(plan), 1),
                )
            )
        return results

    def _encode(
        self, items: Sequence[Item]
    ) -> tuple[list[list[int]], list[tuple[tuple[int, int], ...] | None], list[str | None]]:
        strings = [(i, item) for i, item in enumerate(items) if isinstance(item, str)]
        encodings = self._tokenizer.encode_batch([s for _, s in strings]) if strings else []
        ids_list: list[list[int]] = [[] for _ in items]
        offsets: list[tuple[tuple[int, int], ...] | None] = [None] * len(items)
        texts: list[str | None] = [None] * len(items)
        for (i, text), enc in zip(strings, encodings, strict=True):
            ids_list[i] = list(enc.ids)
            offsets[i] = tuple((int(a), int(b)) for a, b in enc.offsets)
            texts[i] = text
        for i, item in enumerate(items):
            if not isinstance(item, str):
                ids_list[i] = [int(t) for t in item]
        return ids_list, offsets, texts

    def _padded(self, length: int) -> int:
        multiple = self.config.pad_multiple
        return min(-(-length // multiple) * multiple, self._max_tokens)

    def _chunks(self, rows: Sequence[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
        """Split length-sorted rows into forward passes within ``batch_size`` and ``max_batch_tokens``."""
        chunks: list[list[tuple[int, int, int]]] = []
        current: list[tuple[int, int, int]] = []
        for row in rows:  # ascending length: the newest row is the longest in its chunk
            width = self._padded(row[2] - row[1])
            if current and (
                len(current) >= self.config.batch_size
                or (len(current) + 1) * width > self.config.max_batch_tokens
            ):
                chunks.append(current)
                current = []
            current.append(row)
        if current:
            chunks.append(current)
        return chunks

    def _run_rows(
        self,
        chunk: Sequence[tuple[int, int, int]],
        ids_list: Sequence[Sequence[int]],
        surprisal_rows: dict[tuple[int, int], FloatArray],
        entropy_rows: dict[tuple[int, int], FloatArray],
    ) -> None:
        longest = max(end - start for _, start, end in chunk)
        width = self._padded(longest)
        ids = np.full((len(chunk), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for row, (index, start, end) in enumerate(chunk):
            ids[row, : end - start] = ids_list[index][start:end]
            mask[row, : end - start] = 1
        surprisal, entropy = self._backend.run(ids, mask)
        for row, (index, start, end) in enumerate(chunk):
            surprisal_rows[(index, start)] = surprisal[row, : end - start - 1]
            if entropy is not None:
                entropy_rows[(index, start)] = entropy[row, : end - start - 1]
