"""``shrink``: start the student from θ*_t − fraction·θ*_t, i.e. pull the expert start towards 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from distillkit.errors import ConfigError
from distillkit.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch
    from distillkit.context import PerturbContext, RunContext


class Shrink:
    """A ``perturb_expert`` plugin: the delta −fraction·start, every outer iteration."""

    name: ClassVar[str] = "shrink"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        #: The fraction of the start removed: 0 leaves it unchanged, 1 starts at zero.
        fraction: float = 0.01

        def __post_init__(self) -> None:
            if not 0 <= self.fraction <= 1:
                raise ConfigError(f"shrink.fraction must be in [0, 1], got {self.fraction}")

    config_defaults: ClassVar[dict[str, object]] = {}

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def perturb_expert(self, run: RunContext, ctx: PerturbContext) -> torch.Tensor:
        delta = -self.config.fraction * ctx.start  # same shape, dtype and device as the start
        run.log("shrink/delta_norm", delta.norm())
        return delta
