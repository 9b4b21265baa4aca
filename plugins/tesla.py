"""``tesla``: soft labels from an expert, with constant-memory matching (Cui et al., ICML 2023).

TESLA ("Scaling Up Dataset Distillation to ImageNet-1K with Constant Memory", arXiv 2211.10586)
has two parts:

* **Constant memory.** The matching loss ‖θ̂_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖², with
  θ̂_{i+1} = θ̂_i − α·∇ℓ(θ̂_i; X_i), is differentiated without keeping the graph of all N inner
  steps. The core already has an exact form of this (``distill.memory = "constant"``, with
  ``distill.graph_steps``), so the plugin only selects it through ``config_defaults``.
* **Soft label assignment.** Each synthetic image x_i gets the label y_i = softmax(f(x_i; θ_T) / τ)
  of a trained expert θ_T instead of its one-hot class, and every inner step minimises the soft
  cross-entropy −Σ_c y_ic · log softmax(f(x_i; θ̂))_c (the core's ``distillkit.labels.label_loss``).

Here the labels are computed once, when distillation starts: the logits of expert ``label_expert``
at epoch ``label_epoch`` (−1: its last epoch) on the initial synthetic images,
divided by ``temperature``; they stay fixed (lr 0), are saved with the set, and evaluation trains
with them.

Paper vs code: the official code (github.com/justincui03/tesla, ``--teacher_label``) recomputes
the labels in every iteration from that iteration's target expert θ*_{t+M}, with a plain softmax,
and evaluates with the labels of the last iteration. That per-iteration relabelling is not built:
the set's labels must be one stable tensor for evaluation and checkpoints (with relabelling they
depend on whichever segment was drawn last), and in that code only the ImageNet branch runs (the
other branch concatenates an empty list and fails), so no small-dataset setting of it exists to
reproduce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from distillkit.config import check_choices
from distillkit.context import SoftLabels
from distillkit.errors import ConfigError
from distillkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from distillkit.context import LabelInitContext, RunContext


class TeslaLabels:
    """Fixed soft labels from one expert (TESLA's soft label assignment) and constant-memory matching."""

    name: ClassVar[str] = "tesla"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """Which expert labels the set; TESLA's code uses the target expert of each iteration."""

        #: "expert" = soft labels from an expert (TESLA); "hard" = keep the one-hot classes
        #: (constant-memory matching only).
        labels: Literal["expert", "hard"] = "expert"
        #: the expert whose logits become the labels (0 … experts.count − 1).
        label_expert: int = 0
        #: that expert's epoch; −1 = its last epoch.
        label_epoch: int = -1
        #: τ, the logits are divided by it before the softmax (TESLA code: 1, a plain softmax).
        temperature: float = 1.0

        def __post_init__(self) -> None:
            check_choices(self, "tesla")
            if self.label_expert < 0:
                raise ConfigError(f"tesla.label_expert must be >= 0, got {self.label_expert}")
            if self.label_epoch < -1:
                raise ConfigError(f"tesla.label_epoch must be >= -1 (-1: the last), got {self.label_epoch}")
            if not (math.isfinite(self.temperature) and self.temperature > 0):
                raise ConfigError(f"tesla.temperature must be a positive number, got {self.temperature}")

    #: TESLA's constant-memory gradient: the core's exact recomputation of the inner steps.
    config_defaults: ClassVar[dict[str, object]] = {"distill.memory": "constant"}

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def init_labels(self, run: RunContext, ctx: LabelInitContext) -> SoftLabels | None:
        """Logits of the chosen expert on the initial images, over τ; fixed. ``None`` for "hard"."""
        cfg = self.config
        if cfg.labels == "hard":
            return None
        expert, epoch = cfg.label_expert, cfg.label_epoch
        if expert >= ctx.experts:
            raise ConfigError(f"tesla.label_expert is {expert}, but the run has {ctx.experts} experts")
        held = ctx.epochs_held[expert]
        if epoch > held:
            raise ConfigError(f"tesla.label_epoch is {epoch}, but expert {expert} holds epochs 0..{held}")
        logits = ctx.predict(ctx.expert_params(expert, epoch), ctx.images).detach()
        return SoftLabels(logits / cfg.temperature, lr=0.0, momentum=0.0, source="tesla")
