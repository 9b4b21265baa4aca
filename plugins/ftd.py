"""``ftd``: flat expert trajectories with GSAM updates (Du et al., CVPR 2023, arXiv 2211.11004).

FTD (Flat Trajectory Distillation) trains the experts with GSAM (Zhuang et al., ICLR 2022),
a sharpness-aware step that favours flat minima, so errors accumulated along a matched
trajectory grow less. One step, with g = ∇f(w):

    e   = ρ_t · g / ‖g‖                      (ascent; adaptive: e = ρ_t · w²⊙g / ‖|w|⊙g‖)
    g_f = ∇f(w + e)                          (the SAM gradient)
    g_⊥ = g − (g·g_f / ‖g_f‖²) · g_f         (g orthogonal to g_f)
    d   = g_f − α · g_⊥                      (GSAM's surrogate-gap descent)

then w is restored, d is written into ``.grad`` and the core optimizer steps (its momentum
and weight decay apply). ρ_t follows the lr: ρ_min + (ρ_max − ρ_min)(lr_t − lr_min)/(lr_max − lr_min),
ρ_max when the lr never changes. Paper vs code: the FTD paper states the flatness
regulariser as a sharpness term; its code uses GSAM with ρ_max = ρ_min = 0.01, α = 0.4 and
the adaptive (ASAM-style) ascent (the defaults here), so ρ is constant.

FTD's second part is an exponential moving average of the synthetic images, E ← d·E + (1 − d)·S
after every image update, and E is the set FTD evaluates (timm's ``ModelEmaV2`` over the image
tensor, ``--ema_decay``). The core keeps such an average under ``distill.image_ema``; this plugin
sets it to the FTD code's default d = 0.999 (``config_defaults``; its Table 7 uses 0.999–0.9999
per setting, see the ``ftd-*`` presets). The average spans about 1/(1 − d) iterations: 1 000 of
FTD's 5 000, so for runs of a few hundred iterations set a smaller d (e.g. 0.95 at 100 iterations
keeps the same fraction of the run), or the average stays close to the initial images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from distillkit.config import first_decayed_epoch
from distillkit.context import ExpertStepResult
from distillkit.errors import ConfigError
from distillkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from distillkit.context import ExpertOptimContext, RunContext

_EPS = 1e-12


def rho_at(lr: float, lr_max: float, lr_min: float, rho_max: float, rho_min: float) -> float:
    """ρ_t proportional to the lr between (lr_min, ρ_min) and (lr_max, ρ_max); ρ_max for a fixed lr."""
    if lr_max == lr_min:
        return rho_max
    return rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min)


class FlatTrajectory:
    """GSAM updates of the experts (FTD §3.2), through ``expert_step``."""

    name: ClassVar[str] = "ftd"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """GSAM options; defaults are the FTD code's (its paper gives no values)."""

        #: ρ at the largest lr (FTD code: 0.01).
        rho_max: float = 0.01
        #: ρ at the smallest lr (FTD code: 0.01, so ρ is constant).
        rho_min: float = 0.01
        #: α, the weight of the surrogate-gap direction (FTD code: 0.4).
        alpha: float = 0.4
        #: ASAM-style element-wise ascent scaled by |w|. FTD code: always on (``buffer_FTD.py``
        #: declares ``--adaptive`` with ``type=bool, default=True``, so no command line turns it off).
        adaptive: bool = True

        def __post_init__(self) -> None:
            if not 0 <= self.rho_min <= self.rho_max:
                raise ConfigError(f"ftd needs 0 <= rho_min <= rho_max, got {self.rho_min}, {self.rho_max}")

    #: FTD evaluates the moving average of the synthetic images (code: --ema_decay 0.999).
    config_defaults: ClassVar[dict[str, object]] = {"distill.image_ema": 0.999}

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def expert_step(self, run: RunContext, ctx: ExpertOptimContext) -> ExpertStepResult:
        """One GSAM step; stateless (ρ comes from the optimizer's lr), so resume loses nothing."""
        cfg, experts = self.config, run.config.experts
        decays = first_decayed_epoch(experts) is not None
        lr_min = experts.lr * experts.lr_decay_factor if decays else experts.lr
        rho = rho_at(ctx.optimizer.param_groups[0]["lr"], experts.lr, lr_min, cfg.rho_max, cfg.rho_min)
        gsam_step(ctx, rho, cfg.alpha, cfg.adaptive)
        return ExpertStepResult("ftd", {"rho": rho})


def gsam_step(ctx: ExpertOptimContext, rho: float, alpha: float, adaptive: bool) -> None:
    """Backward at w, ascend by e, backward at w + e, write d = g_f − α·g_⊥ and step."""
    import torch  # here, so that reading the plugin's options (docs) needs no torch

    params = [p for p in ctx.model.parameters() if p.requires_grad]
    ctx.loss.backward()
    g = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    with torch.no_grad():
        scaled = [(p.abs() * gi if adaptive else gi) for p, gi in zip(params, g, strict=True)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in scaled]))
        scale = rho / (norm + _EPS)
        e = [(p * p * gi if adaptive else gi) * scale for p, gi in zip(params, g, strict=True)]
        for p, ei in zip(params, e, strict=True):
            p.add_(ei)
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.compute_loss().backward()
    with torch.no_grad():
        gf = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]
        inner = sum((a * b).sum() for a, b in zip(g, gf, strict=True))
        gf_sq = sum((b * b).sum() for b in gf)
        for p, ei, gi, gfi in zip(params, e, g, gf, strict=True):
            p.sub_(ei)
            p.grad = gfi - alpha * (gi - inner / (gf_sq + _EPS) * gfi)
    ctx.optimizer.step()
