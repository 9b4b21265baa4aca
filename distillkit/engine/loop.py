"""The MTT outer loop with the four distillation hook call sites.

One iteration: draw an expert and a start epoch t (hook ``sample_segment``; by default
uniform, t ≤ T⁺ − 1), perturb the start
(hook ``perturb_expert``), weight the inner loss (hook ``inner_loss_weight``),
unroll N student steps on the synthetic set, match θ̂_N to θ*_{t+M} (plus hook
``intermediate_match``), then step the images and the learned step size α.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from distillkit.config import DistillConfig
from distillkit.context import (
    InnerLossContext,
    MatchContext,
    PerturbContext,
    RunContext,
    SegmentContext,
    SoftLabels,
)
from distillkit.engine.backprop import BACKPROP, UnrollSetup
from distillkit.engine.graphbudget import GraphFit, fit_graph_steps
from distillkit.engine.guard import Diverged, DivergenceGuard
from distillkit.engine.optim import MomentumSGD
from distillkit.engine.records import (
    DivergenceError,
    EngineState,
    IterationResult,
    PluginHostLike,
    RankMismatch,
)
from distillkit.engine.reduce import SOLO, Reducer, fingerprint
from distillkit.engine.student import FlatStudent
from distillkit.engine.unroll import BatchSampler, normalised_distance
from distillkit.errors import RunFailed
from distillkit.hookcalls import call_each, combine_deltas, combine_terms, combine_weights, first_segment

#: α is clamped to at least this fraction of its initial value, so it stays positive.
ALPHA_FLOOR = 1e-3


class Distiller:
    """Holds the synthetic set, α, both optimisers and the expert slices; ``step()`` runs one iteration.

    Each iteration is checked by a :class:`DivergenceGuard` before anything is
    updated; on a failure the engine restores its last good state (taken every
    ``guard_every`` iterations), multiplies ``lr_img`` and ``lr_lr`` by ``backoff``
    and carries on, until ``max_failures`` is exceeded.

    Over W ranks (``reducer``) each rank matches its own segment; the loss the guard
    checks and the gradients of the images and α are means over the ranks, so every
    rank takes the same update and the same guard decisions (docs/distributed.md).

    ``soft`` (the ``init_labels`` answer) replaces the hard labels in every inner step
    by soft-label logits, learned with their own momentum SGD when ``soft.lr > 0``.
    With ``distill.image_ema`` = d > 0 the engine also keeps E ← d·E + (1 − d)·images after
    every update; :meth:`final_images` is then E, the set saved and evaluated.
    """

    def __init__(
        self,
        run: RunContext,
        host: PluginHostLike,
        student: FlatStudent,
        images: torch.Tensor,
        labels: torch.Tensor,
        experts: list[torch.Tensor],
        config: DistillConfig,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
        reducer: Reducer = SOLO,
        soft: SoftLabels | None = None,
    ) -> None:
        device = run.device
        self.run = run
        self.reducer = reducer
        self.host = host
        self.hook = host.hook
        self.student = student
        self.config = config
        self.experts = [e.to(device) for e in experts]
        self.epochs_available = tuple(len(e) - 1 for e in self.experts)
        self.images = images.detach().to(device).clone().requires_grad_(True)
        self.labels = labels.to(device)
        self.soft = soft
        self.soft_labels = None if soft is None else soft.logits.detach().to(device).clone()
        learn_labels = soft is not None and soft.lr > 0
        if self.soft_labels is not None and learn_labels:
            self.soft_labels.requires_grad_(True)
        self.images_ema = self.images.detach().clone() if config.image_ema > 0 else None
        self.alpha = torch.tensor(config.lr_init, device=device).requires_grad_(True)
        self.alpha_floor = config.lr_init * ALPHA_FLOOR
        self.opt_img = MomentumSGD(self.images, lr=config.lr_img, momentum=config.img_momentum)
        self.opt_lr = MomentumSGD(self.alpha, lr=config.lr_lr, momentum=0.5)
        self.opt_labels = (
            MomentumSGD(self.soft_labels, lr=soft.lr, momentum=soft.momentum) if learn_labels else None
        )
        self.sampler = BatchSampler(len(self.images), config.batch_syn, run.generator)
        setup = UnrollSetup(
            student=student,
            images=self.images,
            labels=self.labels if self.soft_labels is None else self.soft_labels,
            alpha=self.alpha,
            steps=config.syn_steps,
            sampler=self.sampler,
            augment=lambda x: augment(x, run.generator),
            generator=run.generator,
            momentum=config.student_momentum,
            graph_steps=config.graph_steps,
        )
        # K chosen from distill.graph_memory_mb (None: graph_steps as configured).
        self.graph_fit: GraphFit | None = None
        if config.graph_memory_mb > 0:
            self.graph_fit = fit_graph_steps(setup, self.experts[0][0], config.graph_memory_mb)
            setup = replace(setup, graph_steps=self.graph_fit.graph_steps)
        self.setup = setup
        self.backprop = BACKPROP[config.memory](setup)
        self.guard = DivergenceGuard(config.max_loss_ratio, config.max_abs_pixel)
        self.iteration = 0
        self.failures = 0
        self._logged: dict[str, Any] = {}
        run.log = self._log
        self.last_good = self.state()

    def _log(self, name: str, value: Any) -> None:
        self._logged[name] = value

    @property
    def _optimisers(self) -> list[tuple[str, MomentumSGD]]:
        """Every outer optimiser with its state name (the labels' only when they are learned)."""
        named = [("opt_img", self.opt_img), ("opt_lr", self.opt_lr)]
        return named + ([("opt_labels", self.opt_labels)] if self.opt_labels is not None else [])

    def _learned_grads(self) -> dict[str, torch.Tensor | None]:
        """The gradients the outer step applies, by what they update (for the guard's messages)."""
        names = {"opt_img": "images", "opt_lr": "alpha", "opt_labels": "labels"}
        return {names[name]: opt.param.grad for name, opt in self._optimisers}

    def final_images(self) -> torch.Tensor:
        """The set to save and evaluate: the images, or their moving average with ``distill.image_ema``."""
        chosen = self.images if self.images_ema is None else self.images_ema
        return chosen.detach()

    def step(self) -> IterationResult:
        """One good outer iteration; divergent attempts are rolled back and retried at lower lr."""
        rollbacks: list[str] = []
        while True:
            try:
                result = self._attempt()
            except Diverged as failure:
                rollbacks.append(self._recover(failure.reason))
                continue
            result.rollbacks = rollbacks
            if self.iteration % self.config.guard_every == 0:
                self.last_good = self.state()
            every = self.config.sync_check_every
            if self.reducer.size > 1 and every and self.iteration % every == 0:
                self.check_ranks_agree()
            return result

    def check_ranks_agree(self) -> None:
        """Stop with a clear error unless every rank holds the same set, α, momenta and learning rates."""
        mine = fingerprint(
            [
                self.images,
                self.alpha,
                self.soft_labels,
                self.images_ema,
                *(o.buffer for _, o in self._optimisers),
            ],
            self.lr_img,
            self.lr_lr,
        )
        prints = self.reducer.all_gather_object(mine)
        differ = [rank for rank, other in enumerate(prints) if other != prints[0]]
        if differ:
            raise RankMismatch(
                f"after iteration {self.iteration} the synthetic set or α of rank(s) "
                f"{', '.join(map(str, differ))} differ from rank 0's",
                hint="the ranks must run the same distillkit, torch and config on the same kind of device",
            )

    def _attempt(self) -> IterationResult:
        cfg, run, hook = self.config, self.run, self.hook
        it = self.iteration
        self._logged = {}
        # hook: sample_segment — the first answer (exclusive; core default: uniform).
        ctx = SegmentContext(
            iteration=it,
            total_iterations=cfg.iterations,
            experts=len(self.experts),
            epochs_available=self.epochs_available,
            max_start_epoch=cfg.max_start_epoch,
            expert_epochs=cfg.expert_epochs,
            generator=run.generator,
        )
        chosen = first_segment(call_each(hook, "sample_segment", run=run, ctx=ctx), ctx)
        expert, t = chosen.expert, chosen.start_epoch
        segment = self.experts[expert]
        start, target = segment[t], segment[t + cfg.expert_epochs]

        # hook: perturb_expert — each delta from the unperturbed start; summed.
        deltas = call_each(
            hook,
            "perturb_expert",
            run=run,
            ctx=PerturbContext(it, start, t, self.student.layout),
        )
        perturbed = combine_deltas(deltas, start)
        # hook: inner_loss_weight — product of all factors.
        weights = call_each(
            hook,
            "inner_loss_weight",
            run=run,
            ctx=InnerLossContext(it, t, cfg.max_start_epoch, cfg.expert_epochs, cfg.syn_steps),
        )
        weight = combine_weights(weights)

        params = self.backprop.forward(perturbed, weight)
        reference = perturbed if cfg.match_denominator == "perturbed" else start
        match = normalised_distance(params[-1], target, reference)
        # hook: intermediate_match — terms added to the matching loss.
        terms = combine_terms(
            call_each(
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
                    reference=reference,
                    distance=normalised_distance,
                ),
            ),
            match.device,
        )
        loss = match + sum(term.value for term in terms) if terms else match
        mean_loss = loss.detach().clone()
        self.reducer.all_reduce_mean_([mean_loss])
        loss_value = self.guard.check_loss(mean_loss)
        skipped = 0 < cfg.skip_loss_above < loss_value
        if not skipped:
            self._update(loss, params, loss_value)
        self.iteration += 1
        return IterationResult(
            iteration=it,
            loss=loss_value,
            match_loss=float(match.detach()),
            alpha=float(self.alpha.detach()),
            start_epoch=t,
            expert=expert,
            inner_weight=weight,
            skipped=skipped,
            terms={
                **{name: _scalar(value) for name, value in self._logged.items()},
                **{term.name: float(term.value.detach()) for term in terms},
            },
        )

    def _update(self, loss: torch.Tensor, params: list[torch.Tensor], loss_value: float) -> None:
        """Back-propagate ``loss`` and step images, α (and learned labels), checked by the guard."""
        for _, opt in self._optimisers:
            opt.zero_grad()
        self.backprop.backward(loss, params)
        self.reducer.all_reduce_mean_([opt.param.grad for _, opt in self._optimisers])
        self.guard.check_grads(**self._learned_grads())
        for _, opt in self._optimisers:
            opt.step()
        self.guard.check_images(self.images)
        self.guard.check_alpha(self.alpha)
        with torch.no_grad():
            self.alpha.clamp_(min=self.alpha_floor)
            if self.images_ema is not None:
                self.images_ema.lerp_(self.images, 1.0 - self.config.image_ema)
        self.guard.accept(loss_value)

    def _recover(self, reason: str) -> str:
        """Roll back to the last good state with lower learning rates; give up after ``max_failures``."""
        cfg = self.config
        failed_at = self.iteration
        lr_img, lr_lr = self.lr_img * cfg.backoff, self.lr_lr * cfg.backoff
        self.failures += 1
        failures = self.failures
        self.load_state(self.last_good)
        self.failures = failures
        if failures > cfg.max_failures:
            raise DivergenceError(
                f"distillation diverged {failures} times (last: {reason} at iteration {failed_at}); "
                f"stopped at the last good state, iteration {self.iteration}",
                hint="lower distill.lr_img / distill.lr_lr, or raise distill.max_failures",
            )
        self._set_lrs(lr_img, lr_lr)
        return (
            f"{reason} at iteration {failed_at}: rolled back to iteration {self.iteration}, "
            f"lr_img {lr_img:.4g}, lr_lr {lr_lr:.4g}"
        )

    @property
    def lr_img(self) -> float:
        return self.opt_img.lr

    @property
    def lr_lr(self) -> float:
        return self.opt_lr.lr

    def _set_lrs(self, lr_img: float, lr_lr: float) -> None:
        self.opt_img.lr = lr_img
        self.opt_lr.lr = lr_lr

    # -- state ------------------------------------------------------------------------------

    def state(self) -> EngineState:
        """A detached copy of everything that determines the rest of the run."""
        tensors = {
            "images": self.images.detach().clone(),
            "labels": self.labels.clone(),
            "alpha": self.alpha.detach().clone(),
            "rng": self.run.generator.get_state(),
        }
        for name, tensor in (("soft_labels", self.soft_labels), ("images_ema", self.images_ema)):
            if tensor is not None:
                tensors[name] = tensor.detach().clone()
        for name, opt in self._optimisers:
            if opt.buffer is not None:
                tensors[f"{name}.momentum"] = opt.buffer.clone()
        queue = self.sampler.queue
        if queue:
            tensors["sampler.queue"] = torch.cat(queue)
        meta = {
            "iteration": self.iteration,
            "failures": self.failures,
            "lr_img": self.lr_img,
            "lr_lr": self.lr_lr,
            "recent_losses": list(self.guard.recent),
            "sampler_sizes": [len(q) for q in queue],
            "plugins": self.host.plugin_state(),
        }
        return EngineState(tensors, meta)

    def load_state(self, state: EngineState) -> None:
        """Restore a :meth:`state`; the inverse, bit for bit."""
        t, meta = state.tensors, state.meta
        device = self.images.device
        with torch.no_grad():
            self.images.copy_(t["images"].to(device))
            self.alpha.copy_(t["alpha"].to(device))
        if not torch.equal(t["labels"].to(device), self.labels):
            raise RunFailed("the saved state's labels do not match this run's synthetic set")
        for name, tensor in (("soft_labels", self.soft_labels), ("images_ema", self.images_ema)):
            if (name in t) != (tensor is not None):
                raise RunFailed(
                    f"the saved state {'has' if name in t else 'lacks'} {name.replace('_', ' ')}, "
                    "unlike this run (other plugins or distill.image_ema?)"
                )
            if tensor is not None:
                with torch.no_grad():
                    tensor.copy_(t[name].to(device))
        self.run.generator.set_state(t["rng"].cpu())
        for name, opt in self._optimisers:
            buffer = t.get(f"{name}.momentum")
            opt.buffer = None if buffer is None else buffer.to(device).clone()
        sizes = meta["sampler_sizes"]
        queue = t["sampler.queue"].to(device).split(sizes) if sizes else []
        self.sampler.queue = [q.clone() for q in queue]
        self.iteration = int(meta["iteration"])
        self.failures = int(meta["failures"])
        self._set_lrs(float(meta["lr_img"]), float(meta["lr_lr"]))
        self.guard.recent = [float(v) for v in meta["recent_losses"]]
        self.host.load_plugin_state(meta["plugins"])


def _scalar(value: Any) -> float:
    """A logged value as a float; a tensor still in the graph is detached first (no autograd warning)."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
