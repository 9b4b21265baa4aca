"""distillkit: dataset distillation by trajectory matching, extended by plugins.

The public API is what this module exports. Heavy modules (torch) are imported
on first use so that ``distillkit --help`` and ``list-plugins`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from distillkit.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "RunConfig": "distillkit.config",
    "DataConfig": "distillkit.config",
    "ModelConfig": "distillkit.config",
    "ExpertsConfig": "distillkit.config",
    "DistillConfig": "distillkit.config",
    "EvaluateConfig": "distillkit.config",
    "resolve_config": "distillkit.resolve",
    "train_experts": "distillkit.api",
    "distill": "distillkit.api",
    "evaluate": "distillkit.api",
    "run": "distillkit.api",
    "load_synthetic": "distillkit.artifacts",
    "save_synthetic": "distillkit.artifacts",
    "load_dataset": "distillkit.data",
    "build_model": "distillkit.models",
    "TrajectoryStore": "distillkit.experts.store",
    "PluginHost": "distillkit.host",
    "LossTerm": "distillkit.context",
    "LossScale": "distillkit.context",
    "SyntheticInit": "distillkit.context",
}

__all__ = ["__version__", "hookimpl", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distillkit' has no attribute {name!r}")
