"""``itm``: intermediate matching loss (AST Eq. 4, Algorithm 1 lines 13–17).

    L_i = ‖θ̂_{ξ_i} − θ*_{t+i}‖² / ‖θ*_t − θ*_{t+i}‖²,   i = 1 … M−1,   L̂ = Σ_i β_i · L_i

Matching the student only after all N inner steps lets errors build up along
the unroll; extra matches at the M−1 intermediate points supervise it on the
way. ξ_i is the student step after the fraction i/M of the N steps.

Target: the paper writes θ*_{t+ξ_i}, but read literally ξ_i counts student steps,
which are not expert epochs. The point the expert reaches after the fraction i/M
of the segment is θ*_{t+i}, which is also what the official code matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from distillkit.config import check_choices
from distillkit.context import LossTerm
from distillkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from distillkit.context import MatchContext, RunContext


def matching_points(syn_steps: int, expert_epochs: int, rule: str) -> list[int]:
    """Student steps ξ_1 … ξ_{M−1} of the intermediate matches.

    ``rule="proportional"``: ξ_i = ⌊i·N/M⌋ (paper); ``"stride"``: ξ_i = (N//M)·i
    (official code). They differ when M does not divide N: (80, 3) gives [26, 53]
    and [26, 52].
    """
    if rule == "proportional":
        return [i * syn_steps // expert_epochs for i in range(1, expert_epochs)]
    return [(syn_steps // expert_epochs) * i for i in range(1, expert_epochs)]


class IntermediateMatching:
    """Add β_i·L_i at the intermediate student steps ξ_i to the matching loss (AST Eq. 4)."""

    name: ClassVar[str] = "itm"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """Options of Eq. 4; defaults are the paper's (official-code values in the comments)."""

        #: "proportional" = ⌊i·N/M⌋ (paper); "stride" = (N//M)·i (code).
        points: Literal["proportional", "stride"] = "proportional"
        #: β_i: "equal" = 1 (the paper's better strategy; code ``--agg_middle_loss``);
        #: "varied" = i/M (code ``--adaptive_middle_loss``).
        beta: Literal["equal", "varied"] = "equal"

        def __post_init__(self) -> None:
            check_choices(self, "itm")

    config_defaults: ClassVar[dict[str, object]] = {}

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def intermediate_match(self, run: RunContext, ctx: MatchContext) -> list[LossTerm]:
        """One term ``itm/<ξ_i>`` = β_i·L_i per intermediate point (Alg. 1 l.13–17).

        A point at step 0 (only when N < M) is skipped: the student has not moved
        yet, so the term would not depend on the synthetic images.
        """
        cfg = self.config
        m = ctx.expert_epochs
        terms = []
        for i, xi in enumerate(matching_points(ctx.syn_steps, m, cfg.points), start=1):
            if xi == 0:
                continue
            beta = 1.0 if cfg.beta == "equal" else i / m
            loss = ctx.distance(ctx.student_params[xi], ctx.expert_params(i), ctx.reference)
            terms.append(LossTerm(f"itm/{xi}", beta * loss))
        return terms
