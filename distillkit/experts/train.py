"""Expert training: real data, one flat snapshot per epoch, hooks ``expert_loss``/``expert_step`` per step.

The dataset is moved to the device once and batched by indexing (no
per-sample DataLoader), which is what makes small datasets fast on CPU. Image
sets held as 8-bit pixels (:class:`~distillkit.data.pixels.NormalisedPixels`)
move as such and are normalised per batch on the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distillkit.config import ExpertsConfig, first_decayed_epoch
from distillkit.context import ExpertOptimContext, ExpertStepContext, RunContext
from distillkit.data.pixels import Images
from distillkit.errors import StoreError
from distillkit.experts.partial import TrainingState, capture, restore
from distillkit.hookcalls import call_each, combine_expert_loss, step_values
from distillkit.models.flat import flatten_params


@dataclass
class ExpertResult:
    """A trained expert: ``trajectory[i]`` = flat parameters after ``kept[i]`` epochs (all by default).

    ``history`` has one entry per epoch: the means over its steps of the total loss, the base
    cross-entropy, the accuracy on the (augmented) training batches (``train_acc``), every plugin's
    named part (``loss/<name>``) and every value a plugin gave ``run.log`` (under its own name),
    plus ``test_acc`` when the epoch was tested (``experts.eval_every``); ``test_acc`` lists those.
    """

    trajectory: torch.Tensor
    test_acc: list[float]
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


class EpochMeans:
    """Running sums of the loss parts of one epoch, kept on the device (one sync per epoch)."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.steps = 0
        self.logged: dict[str, tuple[Any, int]] = {}

    def log(self, name: str, value: Any) -> None:
        """``run.log`` during expert training: the epoch's mean of each name goes to the history."""
        value = value.detach() if isinstance(value, torch.Tensor) else float(value)
        total, count = self.logged.get(name, (0.0, 0))
        self.logged[name] = (total + value, count + 1)

    def add(
        self, loss: torch.Tensor, base: torch.Tensor, parts: dict[str, Any], correct: torch.Tensor
    ) -> None:
        values = {"loss": loss.detach(), "ce": base.detach(), "train_acc": correct.float().mean()}
        values.update(
            {f"loss/{k}": v.detach() if isinstance(v, torch.Tensor) else v for k, v in parts.items()}
        )
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1

    def means(self, epoch: int, test_acc: float | None) -> dict[str, float]:
        row = {"epoch": epoch, **{k: float(v) / max(self.steps, 1) for k, v in self.sums.items()}}
        row.update({name: float(total) / count for name, (total, count) in self.logged.items()})
        return {**row, "test_acc": test_acc} if test_acc is not None else row


def epochs_to_store(cfg: ExpertsConfig, last_needed: int) -> list[int]:
    """Epochs whose snapshots a store keeps: all, or (``store_epochs = "needed"``) the ones
    distillation can match, 0..``last_needed``, plus the final epoch that init plugins read."""
    if cfg.store_epochs == "all":
        return list(range(cfg.epochs + 1))
    return sorted({*range(min(last_needed, cfg.epochs) + 1), cfg.epochs})


def steps_per_epoch(images: int, cfg: ExpertsConfig) -> int:
    """Training steps of one epoch over ``images``: ⌈images / batch_size⌉, at most ``max_steps_per_epoch``."""
    steps = -(-images // cfg.batch_size)
    return min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch > 0 else steps


def epoch_batches(order: torch.Tensor, cfg: ExpertsConfig) -> tuple[torch.Tensor, ...]:
    """An epoch's batches of indices, the first :func:`steps_per_epoch` of its shuffled ``order``."""
    return order.split(cfg.batch_size)[: steps_per_epoch(len(order), cfg)]


def is_test_epoch(cfg: ExpertsConfig, epoch: int) -> bool:
    """Whether the expert is tested after 0-based ``epoch``: every ``eval_every``-th and the last."""
    last = epoch == cfg.epochs - 1
    return last or (cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0)


def make_optimizer(model: nn.Module, cfg: ExpertsConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


#: Images per forward of a test pass: the usual training batch, so the pass never raises the
#: process's memory peak above training's (at 1024 a ConvNetW32 expert peaked 210 MiB higher,
#: and its pass took 2.2 instead of 1.8 s); the logits do not depend on it.
TEST_BATCH = 256


@torch.no_grad()
def accuracy(model: nn.Module, images: Images, labels: torch.Tensor, batch: int = TEST_BATCH) -> float:
    """Top-1 accuracy in eval mode, batched (``images`` on the model's device)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        correct += (model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum().item()
    model.train(was_training)
    return correct / max(len(images), 1)


def train_expert(
    run: RunContext,
    hook: Any,
    model: nn.Module,
    train: tuple[Images, torch.Tensor],
    test: tuple[Images, torch.Tensor] | None,
    cfg: ExpertsConfig,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    on_epoch: Callable[[int, dict[str, float]], None] = lambda epoch, row: None,
    keep: Sequence[int] | None = None,
    resume: TrainingState | None = None,
    on_checkpoint: Callable[[TrainingState], None] | None = None,
) -> ExpertResult:
    """Train one expert for ``cfg.epochs`` epochs, keeping the snapshots of epochs ``keep`` (default all).

    Snapshots are clones (never aliases); dropping unneeded ones here keeps
    memory at what the store will hold. ``on_epoch(epoch, row)`` gets each epoch's
    history row (``test_acc`` in it when the epoch was tested). After each epoch, before ``on_epoch``,
    ``on_checkpoint`` gets the whole training state; passing such a state back
    as ``resume`` (with a freshly built ``model`` and ``run``) continues from it
    and gives the same expert, bit for bit, as an uninterrupted run.
    """
    began = time.perf_counter()
    device, generator = run.device, run.generator
    kept = set(range(cfg.epochs + 1) if keep is None else keep)
    images, labels = (t.to(device) for t in train)
    model = model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    if resume is None:
        snapshots = [flatten_params(model)] if 0 in kept else []
        test_acc: list[float] = []
        history: list[dict[str, float]] = []
        start, earlier_seconds = 0, 0.0
    else:
        if not 0 <= resume.epoch <= cfg.epochs:
            raise StoreError(f"a partial checkpoint at epoch {resume.epoch} does not fit {cfg.epochs} epochs")
        restore(resume, model, optimizer, run)
        snapshots = list(resume.trajectory.to(device).unbind(0))
        test_acc, start, earlier_seconds = list(resume.test_acc), resume.epoch, resume.seconds
        history = list(resume.history)
    decay_epoch = first_decayed_epoch(cfg)
    steps = steps_per_epoch(len(images), cfg)
    for epoch in range(start, cfg.epochs):
        if epoch == decay_epoch:
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * cfg.lr_decay_factor
        means = EpochMeans()
        run.log = means.log
        order = torch.randperm(len(images), generator=generator, device=generator.device).to(device)
        for step, idx in enumerate(epoch_batches(order, cfg)):
            raw = images[idx]
            x = augment(raw, generator)
            y = labels[idx]

            def step_loss(
                x: torch.Tensor = x,
                raw: torch.Tensor = raw,
                y: torch.Tensor = y,
                step: int = step,
                epoch: int = epoch,
            ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any], torch.Tensor]:
                """The step's loss at the current weights on this very batch (no new random draws)."""
                logits = model(x)
                base = F.cross_entropy(logits, y)
                # hook: expert_loss — scales multiply the base loss, terms are added.
                ctx = ExpertStepContext(
                    model=model, images=x, raw_images=raw, labels=y, logits=logits, base_loss=base,
                    epoch=epoch, step=step, steps_per_epoch=steps, total_epochs=cfg.epochs,
                )  # fmt: skip
                loss, parts = combine_expert_loss(base, call_each(hook, "expert_loss", run=run, ctx=ctx))
                return loss, base, parts, logits

            loss, base, parts, logits = step_loss()
            means.add(loss, base, parts, logits.detach().argmax(1) == y)
            optimizer.zero_grad(set_to_none=True)
            # hook: expert_step — one plugin may take the update itself; otherwise the plain step.
            optim_ctx = ExpertOptimContext(
                model=model, optimizer=optimizer, compute_loss=lambda f=step_loss: f()[0], loss=loss,
                epoch=epoch, step=step, steps_per_epoch=steps, total_epochs=cfg.epochs,
            )  # fmt: skip
            answers = call_each(hook, "expert_step", run=run, ctx=optim_ctx)
            if answers:
                for name, value in step_values(answers).items():
                    means.log(name, value)
            else:
                loss.backward()
                optimizer.step()
        if epoch + 1 in kept:
            snapshots.append(flatten_params(model))
        acc = None
        if test is not None and is_test_epoch(cfg, epoch):
            acc = accuracy(model, test[0].to(device), test[1].to(device))
            test_acc.append(acc)
        history.append(means.means(epoch, acc))
        if on_checkpoint is not None:
            seconds = earlier_seconds + time.perf_counter() - began
            on_checkpoint(capture(epoch + 1, model, optimizer, run, snapshots, test_acc, seconds, history))
        on_epoch(epoch, history[-1])
    seconds = earlier_seconds + time.perf_counter() - began
    return ExpertResult(torch.stack(snapshots).cpu(), test_acc, seconds, history)
