"""Side-by-side comparison with Meta's CodeShield on the insecure-code benchmark
(a script, not a test).

CodeShield (PyPI ``codeshield==1.0.1``) is installed into a *separate* virtual
environment so that neither it nor semgrep ever enters the firewall's environment or
CI. Its semgrep tier only works with semgrep 1.100.x (1.185 silently scans nothing); pin it:

    python3 -m venv /tmp/cs-venv
    /tmp/cs-venv/bin/pip install "codeshield==1.0.1" "semgrep==1.100.*"
    .venv/bin/python -m loadtests.bench.compare_codeshield --venv /tmp/cs-venv

(``--install`` runs the two set-up commands for you.) Both tools see the same answers
from ``firewall/evaluation/data/code_answers.jsonl``: our detector gets the whole
markdown answer (it finds the code itself); CodeShield gets the code of the answer's
blocks, joined, and the benchmark's language label mapped to its own enum when it has
one (TypeScript/TSX -> javascript; Go, shell and SQL, which it does not support, are
scanned with all its languages). That favours CodeShield slightly: it is handed the code
and the right language. An answer counts as flagged by CodeShield when ``is_insecure`` is
true (any issue); ``block`` only counts issues it recommends blocking.

Printed: precision, recall, F1, safe look-alike flag rate, and per-answer latency
(p50/p95) for both, overall, per split and per language.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from detectors.insecure_code.detector import InsecureCodeDetector
from detectors.insecure_code.extract import extract_blocks
from firewall.core.types import Phase, Sample, Segment
from firewall.evaluation.code_eval import CodeAnswer, Counts, load_code_answers

_CS_LANG = {
    "python": "python",
    "javascript": "javascript",
    "typescript": "javascript",
    "tsx": "javascript",
    "java": "java",
    "c": "c",
    "cpp": "cpp",
    "csharp": "csharp",
    "php": "php",
    "ruby": "ruby",
}

# Runs inside the CodeShield venv: JSON lines in (id, code, language), JSON lines out.
_WORKER = r"""
import asyncio, json, sys, time
from codeshield.cs import CodeShield
from codeshield.insecure_code_detector.languages import Language

async def main():
    for line in sys.stdin:
        item = json.loads(line)
        lang = Language(item["language"]) if item["language"] else None
        t0 = time.perf_counter()
        try:
            result = await CodeShield.scan_code(item["code"], lang)
            out = {
                "id": item["id"],
                "insecure": bool(result.is_insecure),
                "treatment": str(result.recommended_treatment.value),
                "issues": [getattr(i, "cwe_id", "") or "" for i in (result.issues_found or [])],
            }
        except Exception as exc:
            out = {"id": item["id"], "insecure": False, "treatment": "error", "error": repr(exc)}
        out["ms"] = (time.perf_counter() - t0) * 1000
        print(json.dumps(out), flush=True)

asyncio.run(main())
"""


@dataclass
class Row:
    flagged: bool
    ms: float


def _code_of(text: str) -> str:
    blocks = [b for b in extract_blocks(text, inline=False) if b.kind != "inline"]
    return "\n\n".join(text[b.start : b.end] for b in blocks) or text


def run_ours(answers: list[CodeAnswer]) -> dict[str, Row]:
    det = InsecureCodeDetector()
    det.score_sample(
        Sample("warm", Phase.OUTPUT, "bench", (Segment("assistant", "```py\nx=1\n```", "/t"),))
    )
    out = {}
    for a in answers:
        sample = Sample(a.id, Phase.OUTPUT, "bench", (Segment("assistant", a.text, "/text"),))
        t0 = time.perf_counter()
        finding = det.score_sample(sample)
        out[a.id] = Row(finding.score >= 0.5, (time.perf_counter() - t0) * 1000)
    return out


def run_codeshield(
    answers: list[CodeAnswer], venv: Path
) -> tuple[dict[str, Row], dict[str, Row], int]:
    """(flagged on any issue, flagged on block issues, errors); one CodeShield scan per answer."""
    python = venv / "bin" / "python"
    payload = "".join(
        json.dumps({"id": a.id, "code": _code_of(a.text), "language": _CS_LANG.get(a.language)})
        + "\n"
        for a in answers
    )
    proc = subprocess.run(
        [str(python), "-c", _WORKER], input=payload, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"CodeShield worker failed:\n{proc.stderr[-2000:]}")
    any_issue: dict[str, Row] = {}
    block: dict[str, Row] = {}
    errors = 0
    for line in proc.stdout.splitlines():
        item = json.loads(line)
        errors += item["treatment"] == "error"
        any_issue[item["id"]] = Row(item["insecure"], item["ms"])
        block[item["id"]] = Row(item["treatment"] == "block", item["ms"])
    return any_issue, block, errors


def _fmt(x: float) -> str:
    return "  -  " if x != x else f"{x:5.3f}"


def report(name: str, answers: list[CodeAnswer], rows: dict[str, Row]) -> None:
    def counts(items: list[CodeAnswer]) -> Counts:
        c = Counts()
        for a in items:
            c.add(a.vulnerable, rows[a.id].flagged)
        return c

    total = counts(answers)
    ms = [rows[a.id].ms for a in answers]
    p95 = sorted(ms)[max(0, round(0.95 * (len(ms) - 1)))]
    print(
        f"{name:24s} P {_fmt(total.precision)}  R {_fmt(total.recall)}  F1 {_fmt(total.f1)}  "
        f"safe flagged {total.fp}/{total.fp + total.tn} ({_fmt(total.safe_flag_rate)})  "
        f"latency p50 {statistics.median(ms):8.2f} ms  p95 {p95:8.2f} ms"
    )
    for key, label in (("split", "split"), ("language", "lang")):
        groups: dict[str, list[CodeAnswer]] = {}
        for a in answers:
            groups.setdefault(getattr(a, key), []).append(a)
        parts = []
        for g, items in sorted(groups.items()):
            c = counts(items)
            parts.append(f"{g} R {_fmt(c.recall)} FP {c.fp}")
        print(f"  {label:8s} " + "; ".join(parts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--venv",
        type=Path,
        default=Path("/tmp/cs-venv"),
        help="CodeShield virtualenv",
    )
    parser.add_argument(
        "--install", action="store_true", help="create the venv and install CodeShield first"
    )
    parser.add_argument("--limit", type=int, default=0, help="first N answers only (0: all)")
    parser.add_argument("--json", type=Path, help="also write per-answer results as JSON")
    args = parser.parse_args()
    if args.install:
        subprocess.run([sys.executable, "-m", "venv", str(args.venv)], check=True)
        pip = str(args.venv / "bin" / "pip")
        subprocess.run(
            [pip, "install", "--quiet", "codeshield==1.0.1", "semgrep==1.100.*"], check=True
        )
    answers = load_code_answers()
    if args.limit:
        answers = answers[: args.limit]
    ours = run_ours(answers)
    print(f"{len(answers)} answers ({sum(a.vulnerable for a in answers)} vulnerable)\n")
    report("insecure_code (ours)", answers, ours)
    if not (args.venv / "bin" / "python").exists():
        print(
            f"\nCodeShield venv {args.venv} not found; see this script's docstring"
            " (or pass --install)."
        )
        return 0
    cs_any, cs_block, errors = run_codeshield(answers, args.venv)
    report("CodeShield (any issue)", answers, cs_any)
    report("CodeShield (block)", answers, cs_block)
    if errors:
        print(f"CodeShield errors: {errors}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    a.id: {
                        "vulnerable": a.vulnerable,
                        "ours": ours[a.id].flagged,
                        "codeshield": cs_any[a.id].flagged,
                        "ours_ms": ours[a.id].ms,
                        "codeshield_ms": cs_any[a.id].ms,
                    }
                    for a in answers
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
