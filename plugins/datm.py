"""``datm``: the start-epoch window of DATM's sequential generation (Guo et al., ICLR 2024, §4.2).

DATM ("Towards Lossless Dataset Distillation via Difficulty-Aligned Trajectory Matching",
arXiv 2310.05773) matches early expert epochs first and widens the range of start epochs
as distillation goes on: t is drawn from [T⁻, T) and the upper bound T grows from its
initial value towards the final T⁺, so later (harder) trajectory parts join gradually.

Paper vs code: the paper describes the growing upper bound in words (§4.2, "sequential
generation"); the official code makes it linear in the iteration,
``T = min(T⁺, T_cur + ⌊(T⁺ − T_cur) · it / expansion_end⌋)`` (options
``--min_start_epoch``, ``--current_max_start_epoch``, ``--max_start_epoch``,
``--expansion_end_epoch``), which :func:`window` implements. The code walks a shuffled
list of experts; here the expert is drawn uniformly each iteration with the run's generator.

Not yet: DATM's learned soft labels and its ``samples_predicted_correctly`` initialisation
are separate parts of the method and are not part of this plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from distillkit.context import Segment
from distillkit.errors import ConfigError
from distillkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from distillkit.context import RunContext, SegmentContext


def window(iteration: int, cfg: DATMWindow.Config) -> tuple[int, int]:
    """The start-epoch window [lo, hi) of outer iteration ``iteration`` (0-based), grown as in DATM."""
    lo, cur = cfg.min_start_epoch, cfg.current_max_start_epoch
    top, end = cfg.max_start_epoch, cfg.expansion_end
    if end <= 0:
        return lo, top
    return lo, min(top, cur + (top - cur) * iteration // end)


class DATMWindow:
    """Draw the expert uniformly and t uniformly in the iteration's window (DATM §4.2)."""

    name: ClassVar[str] = "datm"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """The window schedule; names follow the official code's options.

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

        def __post_init__(self) -> None:
            lo, cur, top = self.min_start_epoch, self.current_max_start_epoch, self.max_start_epoch
            if not 0 <= lo < cur <= top:
                raise ConfigError(
                    "datm needs 0 <= min_start_epoch < current_max_start_epoch <= max_start_epoch, "
                    f"got {lo}, {cur}, {top}"
                )
            if self.expansion_end < 0:
                raise ConfigError(f"datm.expansion_end must be >= 0, got {self.expansion_end}")

    config_defaults: ClassVar[dict[str, object]] = {}

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
