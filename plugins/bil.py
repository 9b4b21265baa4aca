"""``bil``: balanced inner-loop loss (AST Eq. 2).

    ν = log_b(start − middle + ϑ)      if start ≥ middle
    ν = 1 / log_b(middle − start + ϑ)  otherwise;      ℓ̂_BIL = ν · ℓ_IL

Early start epochs give large inner losses and late ones small losses; ν damps
the former and boosts the latter so the random start epoch moves the inner loss
less. With plain SGD (and with heavy-ball momentum, since ν is constant over an
outer iteration) this is a start-epoch-dependent multiplier on the student lr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from distillkit.config import check_choices
from distillkit.errors import ConfigError
from distillkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from distillkit.context import InnerLossContext, RunContext


def balance_factor(start: int, max_start: int, offset: float, base: float, middle: str) -> float:
    """ν of Eq. 2 for start epoch ``start`` and maximum start epoch T⁺ = ``max_start``.

    ``middle="exact"`` uses T⁺/2 (paper), ``"floor"`` uses ⌊T⁺/2⌋ (official code).
    """
    mid = max_start / 2 if middle == "exact" else max_start // 2
    if start >= mid:
        return math.log(start - mid + offset, base)
    return 1.0 / math.log(mid - start + offset, base)


class BalancedInnerLoss:
    """Multiply the student's inner-loop loss by ν(start epoch) (AST Eq. 2, §3.2.2)."""

    name: ClassVar[str] = "bil"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """Options of Eq. 2; defaults are the official code's (the paper's in the comments).

        With the paper's natural log, ν spans 0.43–2.25 at T⁺ = 5 and 0.39–2.48 at T⁺ = 10: a
        5–6× swing of the student's effective step size with the start epoch, which cost
        1.2 points on digits (docs/results.md). The code's base 5 spans 0.70–1.43 at T⁺ = 5.
        """

        #: ϑ, keeps the logarithm positive (paper and code: 8).
        offset: float = 8.0
        #: base b of the logarithm (paper: unspecified, i.e. natural, e; code, the default: 5).
        log_base: float = 5.0
        #: "exact" = T⁺/2 (paper); "floor" = ⌊T⁺/2⌋ (code, the default).
        middle: Literal["exact", "floor"] = "floor"

        def __post_init__(self) -> None:
            check_choices(self, "bil")
            if self.offset <= 1:
                raise ConfigError(f"bil.offset must be > 1 (ν must stay positive), got {self.offset}")
            if self.log_base <= 1:
                raise ConfigError(f"bil.log_base must be > 1, got {self.log_base}")

    config_defaults: ClassVar[dict[str, object]] = {}

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def inner_loss_weight(self, run: RunContext, ctx: InnerLossContext) -> float:
        """Return ν for this outer iteration's start epoch (Eq. 2) and log it as ``bil/nu``."""
        cfg = self.config
        nu = balance_factor(ctx.start_epoch, ctx.max_start_epoch, cfg.offset, cfg.log_base, cfg.middle)
        run.log("bil/nu", nu)
        return nu
