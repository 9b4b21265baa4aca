"""Several experts trained as one packed computation (``experts.parallel``).

Why: an expert is a tiny network (ConvNetW32 ≈ 24k parameters); trained one after another on an
accelerator, its steps wait on kernel launches. Packed side by side along the channel axis
(:mod:`distillkit.ensemble`), K experts take one grouped computation per step.

Each expert keeps everything it has alone: its initialisation, its generator (data order, then the
DSA draw of each batch, in the order it would draw them alone), its SGD state and lr schedule, its
snapshots, test accuracies, per-epoch history and partial checkpoints — written in the
one-at-a-time format, so an interrupted group resumes expert by expert. Only float rounding
differs (grouped kernels sum in other orders).

Packing cannot honour what it cannot see: a plugin that shapes an expert's loss or step works on
one model and one loss, so :func:`packing_refusal` keeps those experts (and Adam's, which
:class:`~distillkit.packed_sgd.PackedSGD` does not implement) one at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillkit.config import ExpertsConfig, first_decayed_epoch
from distillkit.context import RunContext
from distillkit.data.pixels import Images
from distillkit.ensemble import PackedNetworks, pack, packed_accuracy
from distillkit.experts.partial import TrainingState, capture
from distillkit.experts.train import ExpertResult, epoch_batches, is_test_epoch, make_optimizer
from distillkit.packed_sgd import PackedSGD

#: Training images the packing check (:func:`distillkit.ensemble.pack`) runs on.
CHECK_IMAGES = 8


def packs_experts(cfg: ExpertsConfig, device: torch.device) -> bool:
    """Whether ``experts.parallel`` asks for packed groups on ``device`` ("auto": CUDA only).

    On CPU one network already keeps the cores busy: packed experts measured even with one at a
    time, packed evaluation slower (docs/performance.md, "Batched experts", "Batched evaluation").
    """
    if cfg.parallel == "auto":
        return device.type == "cuda"
    return cfg.parallel == "on"


def packing_refusal(cfg: ExpertsConfig, shaping_plugins: Sequence[str]) -> str | None:
    """Why these experts must train one at a time whatever ``experts.parallel`` says; ``None`` if not.

    ``shaping_plugins`` are the active plugins implementing ``expert_loss`` or ``expert_step``.
    """
    if shaping_plugins:
        names = ", ".join(sorted(shaping_plugins))
        return f"plugin(s) {names} shape each expert's loss or step, which needs one model at a time"
    if cfg.optimizer != "sgd":
        return f"packed experts train with SGD only (experts.optimizer is {cfg.optimizer!r})"
    return None


@dataclass
class Member:
    """One expert of a packed group: its context (device, generator), fresh model and callbacks."""

    run: RunContext
    model: nn.Module
    on_epoch: Callable[[int, dict[str, float]], None]
    on_checkpoint: Callable[[TrainingState], None] | None = None


def train_packed_experts(
    members: Sequence[Member],
    train: tuple[Images, Tensor],
    test: tuple[Images, Tensor] | None,
    cfg: ExpertsConfig,
    augment: Callable[[Tensor, torch.Generator], Tensor],
    keep: Sequence[int] | None = None,
) -> list[ExpertResult]:
    """Train every member's expert for ``cfg.epochs`` epochs as one packed computation.

    Per member this is :func:`distillkit.experts.train.train_expert` without plugins, up to float
    rounding: the same snapshots (epochs ``keep``, default all), tests, history rows and partial
    checkpoints, in the same order per member. An expert's ``seconds`` is its share of the
    group's time (the group's ÷ K). Raises :class:`distillkit.ensemble.NotPackable` before any
    training when the model cannot be packed.
    """
    began = time.perf_counter()
    device = members[0].run.device
    images, labels = (t.to(device) for t in train)
    models = [m.model.to(device).train() for m in members]
    packed = pack(models, images[:CHECK_IMAGES])
    size, kept = len(members), set(range(cfg.epochs + 1) if keep is None else keep)
    params = list(packed.stacked().values())
    optimizer = PackedSGD(params, [cfg.lr] * size, cfg.momentum, cfg.weight_decay)
    snapshots: list[list[Tensor]] = [[row] if 0 in kept else [] for row in _flat(params, size)]
    test_acc: list[list[float]] = [[] for _ in members]
    history: list[list[dict[str, float]]] = [[] for _ in members]
    decay_epoch = first_decayed_epoch(cfg)
    for epoch in range(cfg.epochs):
        if epoch == decay_epoch:
            optimizer.lrs = [cfg.lr * cfg.lr_decay_factor] * size
        means = _train_epoch(packed, params, optimizer, members, images, labels, cfg, augment)
        if epoch + 1 in kept:
            for rows, flat in zip(snapshots, _flat(params, size), strict=True):
                rows.append(flat)
        accs: list[float | None] = [None] * size
        if test is not None and is_test_epoch(cfg, epoch):
            accs = list(packed_accuracy(packed, test[0].to(device), test[1].to(device)))
        seconds = (time.perf_counter() - began) / size
        if any(m.on_checkpoint is not None for m in members):
            packed.load_into(models)
        for k, member in enumerate(members):
            row = {"epoch": epoch, "loss": means[0][k], "ce": means[0][k], "train_acc": means[1][k]}
            if accs[k] is not None:
                test_acc[k].append(accs[k])
                row["test_acc"] = accs[k]
            history[k].append(row)
            if member.on_checkpoint is not None:
                sgd = _member_sgd(models[k], optimizer, k, cfg)
                rows, tested = snapshots[k], test_acc[k]
                member.on_checkpoint(
                    capture(epoch + 1, models[k], sgd, member.run, rows, tested, seconds, history[k])
                )
            member.on_epoch(epoch, row)
    seconds = (time.perf_counter() - began) / size
    return [
        ExpertResult(torch.stack(rows).cpu(), tested, seconds, means_by_epoch)
        for rows, tested, means_by_epoch in zip(snapshots, test_acc, history, strict=True)
    ]


def _train_epoch(
    packed: PackedNetworks,
    params: list[Tensor],
    optimizer: PackedSGD,
    members: Sequence[Member],
    images: Images,
    labels: Tensor,
    cfg: ExpertsConfig,
    augment: Callable[[Tensor, torch.Generator], Tensor],
) -> list[list[float]]:
    """One epoch of every member; returns [mean loss per member, mean train accuracy per member].

    Each member draws its epoch's order first, then per batch its DSA, as alone. Sums stay on the
    device (one sync per epoch).
    """
    generators = [m.run.generator for m in members]
    orders = [
        epoch_batches(torch.randperm(len(images), generator=g, device=g.device).to(labels.device), cfg)
        for g in generators
    ]
    sums = torch.zeros(2, len(members), device=labels.device)
    steps = 0
    for batch in zip(*orders, strict=True):
        inputs = torch.cat([augment(images[idx], g) for idx, g in zip(batch, generators, strict=True)], dim=1)
        targets = torch.stack([labels[idx] for idx in batch], dim=1)  # [B, K]
        logits = packed(inputs)  # [B, K, classes]
        per_image = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        losses = per_image.view_as(targets).mean(0)  # network k's own mean loss
        optimizer.step(torch.autograd.grad(losses.sum(), params))
        correct = (logits.detach().argmax(2) == targets).float().mean(0)
        sums += torch.stack([losses.detach(), correct])
        steps += 1
    return (sums / max(steps, 1)).tolist()


def _flat(params: Sequence[Tensor], size: int) -> Tensor:
    """Every member's parameters as one flat row each (``flatten_params`` order), ``[K, P]``."""
    return torch.cat([p.detach().reshape(size, -1) for p in params], dim=1)


def _member_sgd(model: nn.Module, optimizer: PackedSGD, k: int, cfg: ExpertsConfig) -> torch.optim.Optimizer:
    """Member k's SGD state as the ``torch.optim.SGD`` an expert trained alone would hold now."""
    sgd = make_optimizer(model, cfg)
    for group in sgd.param_groups:
        group["lr"] = optimizer.lrs[k]
    for param, buffer in zip(model.parameters(), optimizer.buffers, strict=True):
        if buffer is not None:
            sgd.state[param]["momentum_buffer"] = buffer[k].clone()
    return sgd
