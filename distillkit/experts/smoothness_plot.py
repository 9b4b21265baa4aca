"""The AST paper's Fig. 4 for any stores: ‖θ_t − θ_{t+1}‖² (dashed) and test accuracy (solid) per epoch.

matplotlib is optional (``pip install distillkit[plots]``, see :mod:`distillkit.plotting`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from distillkit.artifacts import atomic_path
from distillkit.errors import ConfigError
from distillkit.experts.smoothness import StoreSmoothness
from distillkit.plotting import PLOTS_HINT, pyplot


def require_matplotlib() -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend, or a one-line error saying what to install."""
    plt = pyplot()
    if plt is None:
        raise ConfigError(
            "--plot needs matplotlib, which is not installed.",
            hint=f"{PLOTS_HINT} (the table and --json work without it).",
        )
    return plt


def _series(store: StoreSmoothness, what: str) -> tuple[list[int], list[float]]:
    """Epochs and the mean over experts; an epoch without values becomes a gap (NaN) in the line."""
    epochs = list(range(store.epochs))
    means = [store.mean_std(t, what)[0] for t in epochs]
    return epochs, [math.nan if m is None else m for m in means]


def plot_smoothness(stores: Sequence[StoreSmoothness], path: Path) -> None:
    """Write a two-panel PNG to ``path`` (atomically): one line per store, the same colour in both."""
    plt = require_matplotlib()
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6.5))
    colours = plt.get_cmap("tab10")
    for i, store in enumerate(stores):
        colour = colours(i % 10)
        avg = "" if store.avg_var is None else f" (AvgVar {store.avg_var:.4g})"
        top.plot(*_series(store, "change"), "--o", color=colour, markersize=3, label=store.label + avg)
        epochs, accs = _series(store, "test_acc")
        if not all(math.isnan(a) for a in accs):
            bottom.plot(epochs, [100 * a for a in accs], "-o", color=colour, markersize=3, label=store.label)
    top.set_ylabel("‖θ$_t$ − θ$_{t+1}$‖² (mean over experts)")
    top.set_title("expert smoothness (AST paper Fig. 4): parameter change per epoch")
    top.legend(fontsize=8)
    bottom.set_ylabel("test accuracy after epoch t (%)")
    bottom.set_xlabel("expert epoch t")
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
