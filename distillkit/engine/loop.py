"""The MTT outer loop with the four distillation hook call sites.

One iteration: draw an expert and a start epoch t ≤ T⁺ − 1, perturb the start
(hook ``perturb_expert``), weight the inner loss (hook ``inner_loss_weight``),
unroll N student steps on the synthetic set, match θ̂_N to θ*_{t+M} (plus hook
``intermediate_match``), then step the images and the learned step size α.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from distillkit.config import DistillConfig
from distillkit.context import (
    InnerLossContext,
    LossTerm,
    MatchContext,
    PerturbContext,
    RunContext,
)
from distillkit.engine.student import FlatStudent
from distillkit.engine.unroll import BatchSampler, normalised_distance, unroll
from distillkit.errors import PluginRuntimeError, RunFailed

#: α is clamped to at least this fraction of its initial value, so it stays positive.
ALPHA_FLOOR = 1e-3


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
    terms: dict[str, float] = field(default_factory=dict)


def _as_terms(results: list[Any]) -> list[LossTerm]:
    terms: list[LossTerm] = []
    for r in results:
        terms.extend(r if isinstance(r, list) else [r])
    return terms


def call_hook(hook: Any, name: str, **kwargs: Any) -> Any:
    """Call a hook; an exception inside a plugin names that plugin."""
    try:
        return getattr(hook, name)(**kwargs)
    except Exception as exc:
        owner = _owner_of(getattr(hook, name), exc)
        raise PluginRuntimeError(f"plugin '{owner}' failed in {name}: {type(exc).__name__}: {exc}") from exc


def _owner_of(caller: Any, exc: BaseException) -> str:
    codes = {impl.function.__code__: impl.plugin_name for impl in caller.get_hookimpls()}
    tb = exc.__traceback__
    owner = "unknown"
    while tb is not None:
        owner = codes.get(tb.tb_frame.f_code, owner)
        tb = tb.tb_next
    return owner


class Distiller:
    """Holds the synthetic set, α, both optimisers and the expert slices; ``step()`` runs one iteration."""

    def __init__(
        self,
        run: RunContext,
        hook: Any,
        student: FlatStudent,
        images: torch.Tensor,
        labels: torch.Tensor,
        experts: list[torch.Tensor],
        config: DistillConfig,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    ) -> None:
        device = run.device
        self.run = run
        self.hook = hook
        self.student = student
        self.config = config
        self.augment = augment
        self.experts = [e.to(device) for e in experts]
        self.images = images.detach().to(device).clone().requires_grad_(True)
        self.labels = labels.to(device)
        self.alpha = torch.tensor(config.lr_init, device=device).requires_grad_(True)
        self.alpha_floor = config.lr_init * ALPHA_FLOOR
        self.opt_img = torch.optim.SGD([self.images], lr=config.lr_img, momentum=config.img_momentum)
        self.opt_lr = torch.optim.SGD([self.alpha], lr=config.lr_lr, momentum=0.5)
        self.sampler = BatchSampler(len(self.images), config.batch_syn, run.generator)
        self.iteration = 0
        self._logged: dict[str, Any] = {}
        run.log = self._log

    def _log(self, name: str, value: Any) -> None:
        self._logged[name] = value

    def _randint(self, high: int) -> int:
        g = self.run.generator
        return int(torch.randint(high, (1,), generator=g, device=g.device).item())

    def step(self) -> IterationResult:
        """One outer iteration; raises ``RunFailed`` on a non-finite loss before touching anything."""
        cfg, run, hook = self.config, self.run, self.hook
        it = self.iteration
        self._logged = {}
        expert = self._randint(len(self.experts))
        t = self._randint(cfg.max_start_epoch)
        segment = self.experts[expert]
        start, target = segment[t], segment[t + cfg.expert_epochs]

        # hook: perturb_expert — each delta from the unperturbed start; summed.
        deltas = call_hook(
            hook,
            "perturb_expert",
            run=run,
            ctx=PerturbContext(it, start, t, self.student.layout),
        )
        perturbed = start + sum(deltas) if deltas else start
        # hook: inner_loss_weight — product of all factors.
        weights = call_hook(
            hook,
            "inner_loss_weight",
            run=run,
            ctx=InnerLossContext(it, t, cfg.max_start_epoch, cfg.expert_epochs, cfg.syn_steps),
        )
        weight = math.prod(float(w) for w in weights)

        theta0 = perturbed.detach().clone().requires_grad_(True)
        params = unroll(
            self.student,
            theta0,
            self.images,
            self.labels,
            self.alpha,
            cfg.syn_steps,
            self.sampler,
            lambda x: self.augment(x, run.generator),
            loss_weight=weight,
            momentum=cfg.student_momentum,
        )
        match = normalised_distance(params[-1], target, start)
        # hook: intermediate_match — terms added to the matching loss.
        terms = _as_terms(
            call_hook(
                hook,
                "intermediate_match",
                run=run,
                ctx=MatchContext(
                    iteration=it,
                    start_epoch=t,
                    expert_epochs=cfg.expert_epochs,
                    syn_steps=cfg.syn_steps,
                    student_params=tuple(params),
                    expert_params=lambda k, s=segment, t=t: s[t + k],
                    start=perturbed,
                    unperturbed_start=start,
                    distance=normalised_distance,
                ),
            )
        )
        loss = match + sum(term.value for term in terms) if terms else match
        if not torch.isfinite(loss):
            raise RunFailed(
                f"matching loss is not finite at iteration {it} (start epoch {t})",
                hint="lower distill.lr_img or distill.lr_lr",
            )
        self.opt_img.zero_grad(set_to_none=True)
        self.opt_lr.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_img.step()
        self.opt_lr.step()
        with torch.no_grad():
            self.alpha.clamp_(min=self.alpha_floor)
        self.iteration += 1
        return IterationResult(
            iteration=it,
            loss=float(loss.detach()),
            match_loss=float(match.detach()),
            alpha=float(self.alpha.detach()),
            start_epoch=t,
            expert=expert,
            inner_weight=weight,
            terms={
                **{name: float(value) for name, value in self._logged.items()},
                **{term.name: float(term.value.detach()) for term in terms},
            },
        )
