"""``datm``: DATM's start-epoch window, correct-sample init and learned soft labels (Guo et al., ICLR 2024).

DATM ("Towards Lossless Dataset Distillation via Difficulty-Aligned Trajectory Matching",
arXiv 2310.05773; code github.com/NUS-HPC-AI-Lab/DATM) matches early expert epochs first and
widens the range of start epochs as distillation goes on: t is drawn from [T⁻, T) and the
upper bound T grows from its initial value towards the final T⁺, so later (harder) trajectory
parts join gradually.

Paper vs code: the paper describes the growing upper bound in words (§4.2, "sequential
generation"); the official code makes it linear in the iteration,
``T = min(T⁺, T_cur + ⌊(T⁺ − T_cur) · it / expansion_end⌋)`` (options
``--min_start_epoch``, ``--current_max_start_epoch``, ``--max_start_epoch``,
``--expansion_end_epoch``), which :func:`window` implements. The code walks a shuffled
list of experts; here the expert is drawn uniformly each iteration with the run's generator.

Initialisation (``init = "correct"``, the code's ``--pix_init samples_predicted_correctly``):
per class, the real images are scanned in a random order (the run's generator), 256 at a time,
and the first ``ipc`` that the first expert at epoch ``label_epoch`` (code:
``Label_Model_Timestamp`` = −1, its final epoch) classifies correctly become the synthetic
images. If a class has fewer than ``ipc`` of them, the rest are filled with the class's other
real images in that order (with a warning); the code instead moves on to the next expert and
rescans, which never ends when no expert gets enough right. ``init = "real"`` defers to the
core's random real images. Either way the plugin implements ``init_synthetic``, so it cannot
be selected together with ``kmeans-init`` (the host refuses the pair: both replace it).

Soft labels (``soft_labels``, through ``init_labels``): image i's label is softmax(ŷ_i), with
the logits ŷ_i initialised as the mean, over the experts e that classify image i correctly,
of f(x_i; θ^e_final) (the code's "only sum correct predicted logits"; when no expert is
right, the mean over all experts, where the code would divide by zero). The inner loss is
the soft cross-entropy, and ŷ is learned with the images: SGD with lr ``label_lr`` (code:
``lr_y``, 2 for CIFAR-10 ipc 10, 2–10 in its configs) and momentum ``label_momentum``
(``Momentum_y``, 0.9). The code labels a ``real`` initialisation with its first expert
alone; here both initialisations get the correct-experts mean. Selecting ``tesla`` too is
refused (both replace ``init_labels``).

The code's update gating, which skips the update of images, labels and α in an iteration
whose matching loss exceeds ``threshold`` (1.0 in its configs), is the core option
``distill.skip_loss_above``: ``--preset datm-code`` and the DATM paper presets set it; the plugin
alone leaves it off.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from distillkit.config import check_choices
from distillkit.context import Segment, SoftLabels, SyntheticInit
from distillkit.errors import ConfigError, DataError
from distillkit.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch
    from torch import nn

    from distillkit.context import InitContext, LabelInitContext, RunContext, SegmentContext

#: Real images per forward pass of the correct-sample scan (the DATM code's batch).
BATCH = 256


def window(iteration: int, cfg: DATMWindow.Config) -> tuple[int, int]:
    """The start-epoch window [lo, hi) of outer iteration ``iteration`` (0-based), grown as in DATM."""
    lo, cur = cfg.min_start_epoch, cfg.current_max_start_epoch
    top, end = cfg.max_start_epoch, cfg.expansion_end
    if end <= 0:
        return lo, top
    return lo, min(top, cur + (top - cur) * iteration // end)


def _shortfall_line(shortfalls: dict[str, int], ipc: int, classes: int) -> str:
    """One warning for every class the expert gets fewer than ipc real images right (a weak or early
    expert would otherwise print a line per class: 200 on Tiny ImageNet)."""
    first, *others = shortfalls
    where = f"class {first!r}" + (f" and {len(others)} other classes" if others else "")
    return (
        f"datm: the expert classifies fewer than ipc={ipc} real images correctly in {len(shortfalls)} "
        f"of {classes} classes ({where}); other real images fill the {sum(shortfalls.values())} places left"
    )


def correct_first(
    model: nn.Module, images: torch.Tensor, order: torch.Tensor, target: int, count: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """The first ``count`` indices of ``order`` whose image ``model`` classifies as ``target``.

    Scans ``order`` in batches of :data:`BATCH` and stops once enough are found. When fewer are
    correct, the other indices of ``order`` fill up, in order. Returns the indices and how many
    were filled up.
    """
    import torch

    found: list[torch.Tensor] = []
    with torch.no_grad():
        for batch in order.split(BATCH):
            predicted = model(images[batch].to(device)).argmax(1).cpu()
            found.append(batch[predicted == target])
            if sum(len(f) for f in found) >= count:
                break
    chosen = torch.cat(found)[:count]
    short = count - len(chosen)
    if short:
        chosen = torch.cat([chosen, order[~torch.isin(order, chosen)][:short]])
    return chosen, short


def correct_mean(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image, the mean of the experts' logits [E, n, C] over the experts right about it.

    An image no expert classifies as ``labels[i]`` gets the mean over all experts.
    """
    right = (logits.argmax(2) == labels).to(logits.dtype)  # [E, n]
    right[:, right.sum(0) == 0] = 1
    return (logits * right[..., None]).sum(0) / right.sum(0)[:, None]


class DATMWindow:
    """DATM: t in a growing window (§4.2), correctly classified real images, learned soft labels."""

    name: ClassVar[str] = "datm"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """The window schedule, the initialisation and the labels; names follow the official code's options.

        Defaults are small (this project's budgets); DATM's own configs use larger values
        per dataset and IPC (e.g. T⁺ of 20–80 epochs).
        """

        #: T⁻, the lowest start epoch (code: --min_start_epoch).
        min_start_epoch: int = 0
        #: the window's initial upper bound, exclusive (code: --current_max_start_epoch).
        current_max_start_epoch: int = 2
        #: T⁺, the final upper bound, exclusive (code: --max_start_epoch); the trajectories must
        #: hold epoch T⁺ − 1 + distill.expert_epochs (so distill.max_start_epoch ≥ T⁺).
        max_start_epoch: int = 4
        #: iterations over which the upper bound grows linearly to T⁺ (code: --expansion_end_epoch,
        #: counted in iterations despite its name); 0: the full window from the start.
        expansion_end: int = 100
        #: initial images: "correct" = real images the first expert classifies correctly (code:
        #: --pix_init samples_predicted_correctly); "real" = the core's random real images.
        init: Literal["correct", "real"] = "correct"
        #: learn soft labels, initialised from the experts' logits (code: always on); False keeps
        #: the hard labels.
        soft_labels: bool = True
        #: lr of the labels' SGD (code: lr_y; 2 for CIFAR-10 ipc 10, 2–10 in its configs); 0 fixes them.
        label_lr: float = 2.0
        #: momentum of the labels' SGD, in [0, 1) (code: Momentum_y, 0.9).
        label_momentum: float = 0.9
        #: the expert epoch that selects images and labels them; −1 = the expert's last epoch
        #: (code: Label_Model_Timestamp, −1).
        label_epoch: int = -1

        def __post_init__(self) -> None:
            check_choices(self, "datm")
            lo, cur, top = self.min_start_epoch, self.current_max_start_epoch, self.max_start_epoch
            if not 0 <= lo < cur <= top:
                raise ConfigError(
                    "datm needs 0 <= min_start_epoch < current_max_start_epoch <= max_start_epoch, "
                    f"got {lo}, {cur}, {top}"
                )
            if self.expansion_end < 0:
                raise ConfigError(f"datm.expansion_end must be >= 0, got {self.expansion_end}")
            if not (math.isfinite(self.label_lr) and self.label_lr >= 0):
                raise ConfigError(f"datm.label_lr must be a finite number >= 0, got {self.label_lr}")
            if not 0 <= self.label_momentum < 1:
                raise ConfigError(f"datm.label_momentum must be in [0, 1), got {self.label_momentum}")
            if self.label_epoch < -1:
                raise ConfigError(f"datm.label_epoch must be >= -1 (-1: the last), got {self.label_epoch}")

    config_defaults: ClassVar[dict[str, object]] = {}
    #: ``--smoke`` trains trajectories for start epoch 0 only (T⁺ = 1): the window shrinks to [0, 1).
    smoke_options: ClassVar[dict[str, object]] = {
        "min_start_epoch": 0,
        "current_max_start_epoch": 1,
        "max_start_epoch": 1,
    }

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def sample_segment(self, run: RunContext, ctx: SegmentContext) -> Segment:
        """An expert, then t in the window of ``ctx.iteration``; too short trajectories are a ConfigError."""
        cfg = self.config
        need = cfg.max_start_epoch - 1 + ctx.expert_epochs
        held = min(ctx.epochs_available)
        if need > held:
            raise ConfigError(
                f"datm.max_start_epoch {cfg.max_start_epoch} needs expert epoch {need}, but the "
                f"trajectories hold epochs 0..{held}; raise distill.max_start_epoch to at least "
                f"{cfg.max_start_epoch} (and experts.epochs) or lower datm.max_start_epoch"
            )
        lo, hi = window(ctx.iteration, cfg)
        expert = ctx.randint(ctx.experts)
        return Segment(expert, lo + ctx.randint(hi - lo), source="datm")

    @hookimpl
    def init_synthetic(self, run: RunContext, ctx: InitContext) -> SyntheticInit | None:
        """Per class, the first ``ipc`` real images (random order) the first expert gets right."""
        import torch

        cfg = self.config
        if cfg.init == "real":
            return None
        if cfg.label_epoch > ctx.expert_epochs_available:
            raise ConfigError(
                f"datm.label_epoch is {cfg.label_epoch}, but the first expert holds epochs "
                f"0..{ctx.expert_epochs_available}"
            )
        model = ctx.make_model()
        ctx.load_flat(model, ctx.expert_params(cfg.label_epoch))
        model.to(run.device).eval()
        chosen, shortfalls = [], {}
        for c in range(ctx.num_classes):
            pool = (ctx.train_labels == c).nonzero().flatten()
            if len(pool) < ctx.ipc:
                raise DataError(f"datm: class {c} has {len(pool)} training images, fewer than ipc={ctx.ipc}")
            g = run.generator
            order = pool[torch.randperm(len(pool), generator=g, device=g.device).cpu()]
            picks, short = correct_first(model, ctx.train_images, order, c, ctx.ipc, run.device)
            if short:
                shortfalls[ctx.class_names[c]] = short
            chosen.append(picks)
        if shortfalls:
            warnings.warn(_shortfall_line(shortfalls, ctx.ipc, ctx.num_classes), stacklevel=2)
        images = ctx.train_images[torch.cat(chosen)]  # index tensor: a fresh copy, not a view
        labels = torch.arange(ctx.num_classes).repeat_interleave(ctx.ipc)
        return SyntheticInit(images=images, labels=labels, source="datm-correct")

    @hookimpl
    def init_labels(self, run: RunContext, ctx: LabelInitContext) -> SoftLabels | None:
        """Learned logits, initialised as the mean logits of the experts right about each image."""
        import torch

        cfg = self.config
        if not cfg.soft_labels:
            return None
        held = min(ctx.epochs_held)
        if cfg.label_epoch > held:
            raise ConfigError(f"datm.label_epoch is {cfg.label_epoch}, but the experts hold epochs 0..{held}")
        thetas = [ctx.expert_params(e, cfg.label_epoch) for e in range(ctx.experts)]
        logits = torch.stack([ctx.predict(theta, ctx.images).detach() for theta in thetas])
        labels = ctx.labels.to(logits.device)
        return SoftLabels(correct_mean(logits, labels), cfg.label_lr, cfg.label_momentum, source="datm")
