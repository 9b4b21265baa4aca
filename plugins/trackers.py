"""What the experiment-tracker plugins (``tensorboard``, ``wandb``) share: names and a package check."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from distillkit.errors import PluginError

if TYPE_CHECKING:
    from distillkit.context import MetricsContext


def metric_prefix(ctx: MetricsContext) -> str:
    """``distill``, ``experts/<i>`` or ``evaluate/<set>/<model>``: where a record's numbers go."""
    if ctx.stage == "experts":
        return f"experts/{ctx.expert}"
    if ctx.stage == "evaluate":
        return f"evaluate/{ctx.subject}"
    return ctx.stage


def require(plugin: str, package: str) -> None:
    """Refuse to build ``plugin`` when ``package`` (its optional extra) is not installed.

    Looked up without importing it, so ``list-plugins`` stays fast.
    """
    try:
        found = importlib.util.find_spec(package) is not None
    except ValueError:  # sys.modules[package] is None: its import is blocked
        found = False
    if not found:
        raise PluginError(
            f"the {plugin} plugin needs the {package} package, which is not installed",
            hint=f"pip install 'distillkit[{package}]'",
        )


def run_dir_of(plugin: str, ctx: MetricsContext) -> Path:
    """The run directory a tracker writes under; a command without one cannot be tracked."""
    if ctx.run_dir is None:
        raise PluginError(
            f"{plugin}: this command has no run directory to write to "
            "(track expert training with `distillkit run`)"
        )
    return ctx.run_dir
