"""Fill a Triton model repository with the firewall's prepared ONNX models.

The models are not committed (540 MB for the reference model; the STRIP replica is built
from data). This copies the committed ``config.pbtxt`` files from
``deploy/triton/model_repository/`` and the prepared ``model.onnx`` files into ``--dest``,
in Triton's layout::

    DEST/reference_lm/config.pbtxt        DEST/reference_lm/1/model.onnx
    DEST/strip_classifier/config.pbtxt    DEST/strip_classifier/1/model.onnx

Sources (prepare them first):

* ``reference_lm``: ``trigger-firewall models prepare`` (``--reference-model``, default the
  cache's prepared folder). Its manifest must list the ONNX form with the inputs and
  outputs the config names.
* ``strip_classifier``: ``trigger-firewall demo build`` or your own replica folder with the
  same files (``--strip-model``, default the demo cache). The config's feature width is
  rewritten to the folder's vocabulary size, so the sidecar's vectorizer and the served
  graph always agree.

Then point Triton at DEST (``tritonserver --model-repository DEST``, or upload it to the
bucket/volume the Deployment in ``deploy/kubernetes/triton-deployment.yaml`` mounts), or try
it on a CPU with ``deploy/triton/pytriton_server.py --model-repository DEST``.

Usage: ``python deploy/triton/populate.py --dest DIR [--models reference_lm strip_classifier] [--link]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MODELS", "REPOSITORY", "populate"]

REPOSITORY = Path(__file__).resolve().parent / "model_repository"
MODELS = ("reference_lm", "strip_classifier")
_FEATURES_DIMS = re.compile(r'(name: "features"\s+data_type: TYPE_FP32\s+dims: \[ )(-?\d+)( \])')


class PopulateError(Exception):
    """A source model is missing or does not match its committed config."""


def _place(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    if link:
        try:
            os.link(src, tmp)
        except OSError:  # another filesystem: copy instead
            shutil.copyfile(src, tmp)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)  # Triton never sees a half-written model.onnx


def _reference(dest: Path, folder: Path, link: bool) -> str:
    manifest_file = folder / "manifest.json"
    if not manifest_file.is_file():
        raise PopulateError(f"{folder}: not a prepared model folder (run `trigger-firewall models prepare`)")
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    onnx = manifest.get("onnx") or {}
    if "onnx" not in manifest.get("formats", ()) or not (folder / "model.onnx").is_file():
        raise PopulateError(f"{folder}: no ONNX form (prepare with `--format onnx` or `both`)")
    if onnx.get("inputs") != ["input_ids", "attention_mask"] or "surprisal" not in onnx.get("outputs", ()):
        raise PopulateError(f"{folder}: graph {onnx} is not the surprisal head the config serves")
    shutil.copyfile(REPOSITORY / "reference_lm" / "config.pbtxt", dest / "reference_lm" / "config.pbtxt")
    _place(folder / "model.onnx", dest / "reference_lm" / "1" / "model.onnx", link)
    return f"reference_lm <- {folder / 'model.onnx'} ({manifest.get('model_id')})"


def _strip(dest: Path, folder: Path, link: bool) -> str:
    vectorizer = folder / "vectorizer.json"
    if not (folder / "model.onnx").is_file() or not vectorizer.is_file():
        raise PopulateError(f"{folder}: no model.onnx + vectorizer.json (run `trigger-firewall demo build`)")
    width = len(json.loads(vectorizer.read_bytes())["words"])
    text = (REPOSITORY / "strip_classifier" / "config.pbtxt").read_text(encoding="utf-8")
    text, count = _FEATURES_DIMS.subn(lambda m: f"{m.group(1)}{width}{m.group(3)}", text)
    if count != 1:
        raise PopulateError("strip_classifier/config.pbtxt: cannot find the features dims to set")
    (dest / "strip_classifier").mkdir(parents=True, exist_ok=True)
    (dest / "strip_classifier" / "config.pbtxt").write_text(text, encoding="utf-8")
    _place(folder / "model.onnx", dest / "strip_classifier" / "1" / "model.onnx", link)
    return f"strip_classifier <- {folder / 'model.onnx'} ({width} features)"


def populate(
    dest: Path,
    *,
    models: Sequence[str] = MODELS,
    reference_model: Path | None = None,
    strip_model: Path | None = None,
    link: bool = False,
) -> list[str]:
    """Write the chosen models into ``dest``; one line per model saying what went where."""
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    for name in models:
        (dest / name).mkdir(parents=True, exist_ok=True)
        if name == "reference_lm":
            from firewall.models.cache import model_dir

            done.append(_reference(dest, reference_model or model_dir(), link))
        elif name == "strip_classifier":
            from detectors.strip.classifier import default_model_dir

            done.append(_strip(dest, strip_model or default_model_dir(), link))
        else:
            raise PopulateError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fill a Triton model repository with the prepared ONNX models."
    )
    parser.add_argument("--dest", required=True, type=Path, help="the model repository to fill")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--reference-model", type=Path, help="prepared model folder (default: the cache's)")
    parser.add_argument("--strip-model", type=Path, help="classifier folder (default: the demo build)")
    parser.add_argument("--link", action="store_true", help="hard-link model.onnx instead of copying")
    args = parser.parse_args(argv)
    try:
        lines = populate(
            args.dest,
            models=args.models,
            reference_model=args.reference_model,
            strip_model=args.strip_model,
            link=args.link,
        )
    except (PopulateError, OSError) as exc:
        print(f"populate: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    print(f"model repository ready: {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
