"""The one place matplotlib is loaded: score-distribution panels for ``eval`` and ``calibrate``.

matplotlib is optional (the ``test`` group has it, a sidecar image does not), so it
is imported by name at call time, and mypy passes with or without it. Both reports
draw the same kind of panel: the share of texts per score bin on a log axis (a 1%
tail stays visible next to the bulk at 0), with thresholds as vertical lines.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from firewall.core.errors import FirewallError

__all__ = [
    "PLOT_INSTALL_HINT",
    "PLOT_MISSING",
    "PlotUnavailableError",
    "figure",
    "finish_panel",
    "plot_available",
    "save",
    "share_hist",
]

PLOT_INSTALL_HINT: Final = "pip install matplotlib"
#: What a command says when ``--plot`` is asked for without matplotlib.
PLOT_MISSING: Final = f"--plot needs matplotlib, which is not installed; install it with: {PLOT_INSTALL_HINT}"


class PlotUnavailableError(FirewallError):
    """matplotlib is not installed; the message says what to install."""

    code = "plot_unavailable"
    reason = "plot_unavailable"


def plot_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot() -> Any:
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        return importlib.import_module("matplotlib.pyplot")
    except ImportError as exc:
        raise PlotUnavailableError(PLOT_MISSING) from exc


def figure(panels: int, width: float) -> tuple[Any, list[Any]]:
    """A figure of ``panels`` stacked axes; raises :class:`PlotUnavailableError` without matplotlib."""
    plt = _pyplot()
    fig, axes = plt.subplots(panels, 1, figsize=(width, 3.2 * panels), squeeze=False)
    return fig, [row[0] for row in axes]


def share_hist(ax: Any, scores: Sequence[float], bins: Sequence[float], **style: Any) -> Any:
    """A histogram of the *share* of ``scores`` per bin, so groups of any size compare."""
    return ax.hist(scores, bins=list(bins), weights=[1 / len(scores)] * len(scores), **style)


def finish_panel(ax: Any, title: str, ylabel: str, **legend: Any) -> None:
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.set_xlabel("score")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, **legend)


def save(fig: Any, path: str | Path) -> None:
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    _pyplot().close(fig)
