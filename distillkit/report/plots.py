"""The report's figures as PNG bytes (matplotlib, the optional ``[plots]`` extra).

Each function takes plain lists and returns the encoded image; :func:`available` says
whether figures can be drawn at all, so the page falls back to tables without matplotlib.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from distillkit.plotting import pyplot

_SIZE = (5.0, 2.9)
_DPI = 100


def available() -> bool:
    return pyplot() is not None


def _png(fig: Any) -> bytes:
    plt = pyplot()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=_DPI)
    plt.close(fig)
    return buffer.getvalue()


def _axes(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=_SIZE)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def lines(
    x: Sequence[float], ys: dict[str, Sequence[float]], title: str, ylabel: str, log: bool = False
) -> bytes:
    """One line per entry of ``ys`` over the iterations ``x`` (NaN values are gaps)."""
    fig, ax = _axes(title, "iteration", ylabel)
    for label, y in ys.items():
        ax.plot(x, y, "-", linewidth=1.2, label=label)
    finite = [v for y in ys.values() for v in y if math.isfinite(v)]
    if log and finite and min(finite) > 0:
        ax.set_yscale("log")
    if len(ys) > 1:
        ax.legend(fontsize=8)
    return _png(fig)


def start_epochs(x: Sequence[float], starts: Sequence[float], experts: Sequence[float]) -> bytes:
    """The start epoch drawn at each iteration, coloured by the expert drawn (AST paper Fig. 2)."""
    fig, ax = _axes("start epoch and expert drawn per iteration", "iteration", "start epoch t")
    top = max([9, *(int(e) for e in experts if math.isfinite(e))])
    cmap = "tab10" if top == 9 else "viridis"  # one distinct colour each for up to ten experts
    points = ax.scatter(x, starts, c=experts, cmap=cmap, s=10, vmin=-0.5, vmax=top + 0.5)
    fig.colorbar(points, ax=ax, label="expert")
    return _png(fig)


def loss_by_start(
    starts: Sequence[float], losses: Sequence[float], means: dict[int, tuple[float, int]]
) -> bytes:
    """Matching loss against the start epoch: every iteration, and the mean per epoch (AST Fig. 9)."""
    fig, ax = _axes("matching loss per start epoch", "start epoch t", "matching loss")
    ax.scatter(starts, losses, s=8, alpha=0.4, color="#2b7bba", label="iterations")
    if means:
        epochs = sorted(means)
        ax.plot(epochs, [means[t][0] for t in epochs], "-o", color="#d95f02", markersize=4, label="mean")
    ax.legend(fontsize=8)
    return _png(fig)
