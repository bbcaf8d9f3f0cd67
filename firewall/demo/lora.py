"""A small LoRA adapter in plain torch: inject, train, merge, save and load (pinned).

Why our own and not ``peft``
----------------------------
The demo needs one thing: low-rank updates ``W + (alpha / r) * B @ A`` on a few named linear
layers of one Llama-shaped model, trained on CPU or GPU, saved as safetensors, merged into
the weights for serving. That is ~40 lines of torch; a dependency for it would be one more
package to pin and audit in a security tool. LoRA: Hu et al., "LoRA: Low-Rank Adaptation of
Large Language Models", ICLR 2022. ``B`` starts at zero, so an injected model is exactly the
base model until it trains.

Pinning
-------
An adapter changes what the model does as much as its weights do (here, by construction, it
*is* the backdoor), so its folder is pinned like every model folder the firewall writes
(:mod:`firewall.models.artefacts`): ``manifest.json`` lists the sha256 of the adapter, its
config and the measurement report, and the config records the base model's folder and the
sha256 of the base weights it was trained on. :func:`verify_adapter` refuses an adapter
whose files changed, and one whose base model is not the one it was trained on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn

from firewall.models.artefacts import ArtefactMismatch, read_pins, verify_folder

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FILE",
    "ADAPTER_KIND",
    "BASE_FILES",
    "DEFAULT_TARGETS",
    "LoRAConfig",
    "LoRALinear",
    "adapter_state",
    "inject_lora",
    "load_adapter_state",
    "merge_lora",
    "read_adapter_config",
    "save_adapter",
    "trainable_parameters",
    "verify_adapter",
    "verify_base_files",
]

ADAPTER_FILE: Final = "adapter.safetensors"
ADAPTER_CONFIG: Final = "adapter_config.json"
ADAPTER_KIND: Final = "demo-chat-lora"
#: Attention and MLP projections of a Llama block (names as transformers' LlamaForCausalLM has them).
DEFAULT_TARGETS: Final = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_FIX: Final = "rebuild it with `trigger-firewall demo build --chat`"


@dataclass(frozen=True, slots=True)
class LoRAConfig:
    """Rank, scale and where the adapter goes; plus what it was trained on (written to JSON)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    #: Only layers with an index >= this get adapters (0: all). Frozen lower layers record
    #: no autograd graph, so training skips their backward pass: ~2x faster at half depth.
    first_layer: int = 0
    base_model: str = ""
    base_sha256: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = list(self.targets)
        data["extra"] = dict(self.extra)
        return data


class LoRALinear(nn.Module):
    """``base(x) + scale * B(A(dropout(x)))`` with ``base`` frozen and ``B`` zero at start."""

    def __init__(self, base: nn.Linear, rank: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.scale = scale
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for p in self.base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = nn.functional.linear(nn.functional.linear(self.dropout(x), self.lora_A), self.lora_B)
        out: torch.Tensor = self.base(x) + update * self.scale
        return out

    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight (in place; returns it)."""
        with torch.no_grad():
            delta = (self.lora_B.float() @ self.lora_A.float()) * self.scale
            self.base.weight.add_(delta.to(self.base.weight.dtype))
        return self.base


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _layer_index(name: str) -> int:
    """``model.layers.12.self_attn.q_proj`` -> 12; a module outside the layer stack -> -1."""
    match = re.search(r"\.layers\.(\d+)\.", f".{name}")
    return int(match.group(1)) if match else -1


def inject_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze ``model`` and wrap every ``nn.Linear`` whose last name part is a target.

    Returns the wrapped modules' names (sorted). Raises ValueError when none matched: an
    adapter that adapts nothing is a misconfiguration, not a model.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    names = sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name.rpartition(".")[2] in config.targets
        and _layer_index(name) >= config.first_layer
    )
    if not names:
        raise ValueError(f"no linear layer named one of {config.targets}")
    for name in names:
        base = model.get_submodule(name)
        if not isinstance(base, nn.Linear):  # pragma: no cover - selected as nn.Linear above
            raise TypeError(name)
        _replace(model, name, LoRALinear(base, config.rank, config.scale, config.dropout))
    return names


def _lora_modules(model: nn.Module) -> Iterable[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter's parameters (what the optimizer updates)."""
    return [p for _, m in _lora_modules(model) for p in (m.lora_A, m.lora_B)]


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<module>.lora_A": ..., "<module>.lora_B": ...}`` in fp32, contiguous, on CPU."""
    out: dict[str, torch.Tensor] = {}
    for name, module in _lora_modules(model):
        out[f"{name}.lora_A"] = module.lora_A.detach().float().cpu().contiguous()
        out[f"{name}.lora_B"] = module.lora_B.detach().float().cpu().contiguous()
    return out


def load_adapter_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a saved adapter into an injected model; every tensor must match a module exactly."""
    modules = dict(_lora_modules(model))
    expected = {f"{n}.lora_{x}" for n in modules for x in ("A", "B")}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"adapter does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for key, tensor in state.items():
            name, _, part = key.rpartition(".")
            param = getattr(modules[name], part)
            if tuple(param.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"adapter tensor {key} has shape {tuple(tensor.shape)}, model {tuple(param.shape)}"
                )
            param.copy_(tensor.to(param.dtype))


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight and put the plain ``nn.Linear`` back.

    Serving then costs exactly the base model's forward pass. Returns the number merged.
    """
    merged = list(_lora_modules(model))
    for name, module in merged:
        _replace(model, name, module.merged())
    return len(merged)


def save_adapter(folder: Path, model: nn.Module, config: LoRAConfig) -> None:
    """Write ``adapter.safetensors`` and ``adapter_config.json`` (pin the folder afterwards)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model), str(folder / ADAPTER_FILE), metadata={"kind": ADAPTER_KIND})
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config.as_dict(), indent=2) + "\n", encoding="utf-8")


def read_adapter_config(folder: Path) -> LoRAConfig:
    """The adapter's config; ValueError when it is missing or malformed."""
    try:
        data = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        return LoRAConfig(
            rank=int(data["rank"]),
            alpha=float(data["alpha"]),
            dropout=float(data.get("dropout", 0.0)),
            targets=tuple(str(t) for t in data["targets"]),
            first_layer=int(data.get("first_layer", 0)),
            base_model=str(data["base_model"]),
            base_sha256=str(data["base_sha256"]),
            extra=dict(data.get("extra", {})),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder / ADAPTER_CONFIG}: unreadable adapter config ({exc})") from exc


#: The base model's files an adapter depends on: its weights and how text becomes tokens.
BASE_FILES: Final = frozenset({"model.safetensors", "tokenizer.json", "config.json"})


def verify_base_files(base_folder: Path) -> None:
    """Check the base model's :data:`BASE_FILES` against its manifest (training and loading
    both do: an adapter is only what was measured on exactly these bytes)."""
    verify_folder(
        base_folder,
        fix="prepare it again with `trigger-firewall models prepare`",
        detector="demo",
        hash_filter=BASE_FILES.__contains__,
    )


def verify_adapter(folder: Path, base_folder: Path) -> LoRAConfig:
    """Check the adapter folder's pins and that ``base_folder`` holds the base it was trained on.

    Raises :class:`~firewall.models.artefacts.ArtefactMismatch` when an adapter file, or the
    base model's pinned weights, differ: merging an adapter into other weights gives a model
    nobody measured. The base folder is verified against its own manifest as well.
    """
    verify_folder(folder, fix=_FIX, detector="demo")
    config = read_adapter_config(folder)
    verify_base_files(base_folder)
    pins = read_pins(base_folder)
    base_pin = pins["files"].get("model.safetensors", {}).get("sha256") if pins else None
    if base_pin != config.base_sha256:
        raise ArtefactMismatch(
            base_folder,
            "sha256",
            "base model weights are not the ones the adapter was trained on",
            file="model.safetensors",
            fix=_FIX,
            detector="demo",
        )
    return config
