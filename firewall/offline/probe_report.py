"""What a probe run writes: the readable table, the JSON report (a public contract) and the plot.

The JSON report
---------------
``{"candidates": [{"text", "score", "flagged", ...}, ...], "requests_spent", "budget", ...}``:
``candidates`` sorted by ``score``, highest first (candidates the budget never reached last,
with ``score: null``); ``flagged`` is the probe's own verdict. The other fields of a
candidate (``display``, ``family``, ``stage``, ``prompts``, ``moved``, ``position``,
``excesses``) and the
top-level ones besides ``candidates``, ``requests_spent`` and ``budget`` may grow; those three
and each candidate's ``text``, ``score`` and ``flagged`` keep their meaning.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from firewall.offline import plotting
from firewall.offline.probe import CandidateResult, ProbeReport

__all__ = ["display", "plot_report", "report_json", "table"]

#: Characters shown as ``<U+XXXX>``: invisible ones, and any non-ASCII one (a homoglyph
#: must not pass for the Latin word it imitates in a report a person reads).
_SHOWN_CATEGORIES = frozenset({"Cf", "Cc", "Co", "Cn", "Cs", "Zl", "Zp", "Mn", "Me"})


def display(text: str) -> str:
    """``text`` with every invisible or non-ASCII character written as ``<U+XXXX>``, and line
    breaks as ``\\n``."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch.isascii() and unicodedata.category(ch) not in _SHOWN_CATEGORIES:
            out.append(ch)
        else:
            out.append(f"<U+{ord(ch):04X}>")
    return "".join(out)


def _prompts(r: CandidateResult) -> str:
    if r.stage == "untested":
        return "-"
    where = f", at the {r.position}" if r.position else ""
    return f"{len(r.excesses)} ({r.stage}{where})"


def table(report: ProbeReport, top: int = 20, width: int = 48) -> str:
    """The ``top`` ranked candidates and a summary, as plain text."""
    rows = [("rank", "candidate", "family", "score", "flagged", "prompts")]
    for rank, r in enumerate(report.results[:top], start=1):
        shown = display(r.candidate.text)
        if len(shown) > width:
            shown = shown[: width - 3] + "..."
        score = "-" if r.score is None else f"{r.score:.3f}"
        rows.append((str(rank), shown, r.candidate.family, score, "YES" if r.flagged else "no", _prompts(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.extend(_summary(report))
    return "\n".join(lines)


def _summary(report: ProbeReport) -> list[str]:
    stages = Counter(r.stage for r in report.results)
    s = report.settings
    out = [
        f"candidates: {len(report.results)} ({', '.join(f'{n} {k}' for k, n in sorted(stages.items()))})",
        f"flagged: {len(report.flagged)} (score >= {report.threshold} on at least {s.min_share:.0%} "
        f"of {report.prompts} prompts, scoring: {report.scoring})",
        f"requests spent: {report.requests_spent} of a budget of {report.budget}"
        f" ({report.requests_reused} answers reused, {report.requests_failed} failed)"
        f" in {report.elapsed_s:.1f} s",
    ]
    if report.budget_exhausted:
        out.append("budget exhausted: the sweep stopped early; rerun with --state and a larger --budget")
    if report.requests_failed and report.last_error:
        out.append(f"last upstream error: {report.last_error}")
    return out


def report_json(report: ProbeReport, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    s = report.settings
    return {
        "candidates": [
            {
                "text": r.candidate.text,
                "score": None if r.score is None else round(r.score, 4),
                "flagged": r.flagged,
                "display": display(r.candidate.text),
                "family": r.candidate.family,
                "stage": r.stage,
                "prompts": len(r.excesses),
                "moved": r.moved,
                "position": r.position,
                "excesses": [round(e, 4) for e in r.excesses],
            }
            for r in report.results
        ],
        "requests_spent": report.requests_spent,
        "budget": report.budget,
        "requests_reused": report.requests_reused,
        "requests_failed": report.requests_failed,
        "budget_exhausted": report.budget_exhausted,
        "flagged": len(report.flagged),
        "scoring": report.scoring,
        "prompts": report.prompts,
        "threshold": report.threshold,
        "min_share": s.min_share,
        "settings": {
            "screen_threshold": report.screen_threshold,
            "screen_prompts": s.screen_prompts,
            "confirm_prompts": s.confirm_prompts,
            "confirm": s.confirm,
            "group_size": s.group_size,
            "controls": s.controls,
        },
        "space": dict(Counter(r.candidate.family for r in report.results)),
        "elapsed_s": round(report.elapsed_s, 3),
        **(extra or {}),
    }


def plot_report(report: ProbeReport, path: str | Path, top: int = 20) -> None:
    """Two panels: the ``top`` candidates' scores as bars (flagged ones red) with the threshold,
    and the share of each family's screened candidates per score bin.

    Raises :class:`~firewall.offline.plotting.PlotUnavailableError` without matplotlib.
    """
    fig, (bars, hist) = plotting.figure(2, 9.0)
    shown = [r for r in report.results[:top] if r.score is not None]
    labels = [f"{display(r.candidate.text)[:28]} ({r.candidate.family})" for r in shown]
    ys = list(range(len(shown)))[::-1]
    bars.barh(
        ys, [r.score or 0.0 for r in shown], color=["#c0392b" if r.flagged else "#7f8c8d" for r in shown]
    )
    bars.set_yticks(ys, labels, fontsize=7)
    bars.axvline(report.threshold, color="black", linestyle="--", linewidth=1, label="threshold")
    bars.set_xlim(0, 1)
    bars.set_xlabel("score (excess over controls)")
    bars.set_title(
        f"top {len(shown)} candidates ({report.requests_spent} requests, scoring: {report.scoring})"
    )
    bars.legend(fontsize=7)
    bins = [i / 20 for i in range(21)]
    for family in sorted({r.candidate.family for r in report.results}):
        scores = [r.score for r in report.results if r.candidate.family == family and r.score is not None]
        if scores:
            plotting.share_hist(hist, scores, bins, histtype="step", label=f"{family} ({len(scores)})")
    hist.axvline(report.threshold, color="black", linestyle="--", linewidth=1)
    plotting.finish_panel(hist, "score distribution per family", "share of candidates")
    plotting.save(fig, path)
