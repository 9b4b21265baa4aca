"""``wp``: weight perturbation of the expert start point (AST Eq. 5).

    d_{l,j} ← d_{l,j} / ‖d_{l,j}‖_F · ‖θ_{l,j}‖_F,   d ~ N(0, I);   θ*_t = θ_t + α·d

Every filter j of layer l is moved by a Gaussian direction scaled to α times its
own norm. Starting the student from a slightly perturbed expert imitates the
noisy weights a network trained on the distilled set has, reducing the
accumulated error between distillation and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from distillkit.config import check_choices
from distillkit.errors import ConfigError
from distillkit.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch

    from distillkit.context import ParamSlot, PerturbContext, RunContext


def _normal(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """N(0, I) shaped like ``weight``, drawn on the generator's device, moved to ``weight``'s."""
    import torch

    z = torch.randn(weight.shape, generator=generator, device=generator.device, dtype=weight.dtype)
    return z.to(weight.device)


def filter_delta(weight: torch.Tensor, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """α·d of Eq. 5: per filter (index along dim 0), a Gaussian rescaled to the filter's norm.

    The delta of filter j has norm exactly α·‖θ_j‖_F. A 1-D (or 0-D) tensor is one filter.
    """
    import torch

    d = _normal(weight, generator)
    rows = weight.shape[0] if weight.dim() >= 2 else 1
    w_norm = torch.linalg.vector_norm(weight.reshape(rows, -1), dim=1, keepdim=True)
    d_flat = d.reshape(rows, -1)
    d_norm = torch.linalg.vector_norm(d_flat, dim=1, keepdim=True)
    return (alpha * d_flat * (w_norm / d_norm)).reshape(weight.shape)


def multiplicative_delta(weight: torch.Tensor, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """α·D⊙W with D = Z/‖Z‖_F over the whole tensor (official code); relative size ≈ α/√numel."""
    import torch

    z = _normal(weight, generator)
    return alpha * z / torch.linalg.vector_norm(z) * weight


def in_scope(slot: ParamSlot, scope: str) -> bool:
    """Whether ``slot`` is perturbed: ≥ 2-D ("weights"), 4-D ("conv") or every tensor ("all")."""
    if scope == "weights":
        return len(slot.shape) >= 2
    if scope == "conv":
        return len(slot.shape) == 4
    return True


class WeightPerturbation:
    """Return a perturbation delta for the sampled expert start θ*_t (AST Eq. 5, §3.3.2)."""

    name: ClassVar[str] = "wp"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """Options of Eq. 5; defaults are the official code's (the paper's in the comments).

        The paper's form at α = 0.1 moves the start by ‖δ‖² ≈ 6–12 × ‖θ*_t − θ*_{t+2}‖² on
        the digits experts: the perturbation is larger than the segment being matched. The
        code's form gives 1–2× and is the default.
        """

        #: α (paper: 0.1; code, the default: 1, with the multiplicative form about 4–40× smaller).
        alpha: float = 1.0
        #: "filter" = per-filter Gaussian with the filter's norm (paper);
        #: "multiplicative" = whole-tensor-normalised Gaussian ⊙ W (code, the default).
        mode: Literal["filter", "multiplicative"] = "multiplicative"
        #: tensors perturbed: "weights" = conv and linear weights, every ≥ 2-D tensor
        #: (paper: "the j-th filter at the l-th layer"); "conv" = 4-D only (code, the default);
        #: "all" = also biases and norm parameters, each 1-D tensor as one filter.
        scope: Literal["weights", "conv", "all"] = "conv"

        def __post_init__(self) -> None:
            check_choices(self, "wp")
            if self.alpha < 0:
                raise ConfigError(f"wp.alpha must be >= 0, got {self.alpha}")

    config_defaults: ClassVar[dict[str, object]] = {}

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def perturb_expert(self, run: RunContext, ctx: PerturbContext) -> torch.Tensor:
        """The flat delta for ``ctx.start`` (zero outside the scope); logs ``wp/rel_norm``."""
        import torch

        cfg = self.config
        make = filter_delta if cfg.mode == "filter" else multiplicative_delta
        with torch.no_grad():
            delta = torch.zeros_like(ctx.start)
            for slot in ctx.layout:
                if in_scope(slot, cfg.scope):
                    part = slice(slot.offset, slot.offset + slot.numel)
                    weight = ctx.start[part].view(slot.shape)
                    delta[part] = make(weight, cfg.alpha, run.generator).flatten()
            run.log("wp/rel_norm", torch.linalg.vector_norm(delta) / torch.linalg.vector_norm(ctx.start))
        return delta
