"""What the engine returns, saves and raises, and what it needs of the plugin host.

Kept apart from :mod:`distillkit.engine.loop` so the loop reads as the algorithm; every name
here is also importable from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from distillkit.errors import RunFailed


class PluginHostLike(Protocol):
    """What the engine needs from the plugin host: the hook relay and plugin state."""

    hook: Any

    def plugin_state(self) -> dict[str, Any]: ...

    def load_plugin_state(self, state: dict[str, Any]) -> None: ...


class DivergenceError(RunFailed):
    """The guard gave up after ``distill.max_failures`` rollbacks; the engine holds the last good state."""


class RankMismatch(RunFailed):
    """The ranks of a job no longer hold the same synthetic set (``distill.sync_check_every``)."""


@dataclass
class IterationResult:
    """Metrics of one outer iteration (plain floats, for ``metrics.jsonl``)."""

    iteration: int
    loss: float
    match_loss: float
    alpha: float
    start_epoch: int
    expert: int
    inner_weight: float
    #: The loss exceeded ``distill.skip_loss_above``: nothing was updated.
    skipped: bool = False
    terms: dict[str, float] = field(default_factory=dict)
    rollbacks: list[str] = field(default_factory=list)


@dataclass
class EngineState:
    """Everything needed to continue bit for bit: tensors (safetensors-ready) and JSON metadata."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
