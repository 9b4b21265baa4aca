"""Evaluation protocol (docs/config.md): train fresh networks on a small set, report final-epoch accuracy.

K seeded networks, SGD (momentum 0.9, weight decay 5e-4), learning rate = the
learned α, lr × 0.1 after half the epochs, DSA on every batch, accuracy on the
real test set after the LAST epoch (nothing is selected on test accuracy).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distillkit.config import EvaluateConfig
from distillkit.data.pixels import Images
from distillkit.experts.train import accuracy


@dataclass(frozen=True)
class EvalResult:
    """Accuracies (fractions) of the evaluation networks of one model."""

    model: str
    runs: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.runs) if self.runs else float("nan")

    @property
    def std(self) -> float:
        return statistics.pstdev(self.runs) if len(self.runs) > 1 else 0.0

    def as_dict(self) -> dict:
        return {"model": self.model, "mean": self.mean, "std": self.std, "runs": list(self.runs)}


def protocol_line(cfg: EvaluateConfig, lr: float) -> str:
    """The declared protocol, printed above every result table."""
    after = f", momentum {cfg.momentum_after_decay} after" if cfg.momentum_after_decay >= 0 else ""
    return (
        f"{cfg.runs} nets × {cfg.epochs} epochs, SGD lr {lr:.4g} (momentum {cfg.momentum}, "
        f"wd {cfg.weight_decay}), lr ×{cfg.lr_decay_factor} at epoch {cfg.epochs // 2}{after}, "
        "DSA, final-epoch test accuracy"
    )


def train_on_set(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    cfg: EvaluateConfig,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    generator: torch.Generator,
) -> nn.Module:
    """Train ``model`` on (images, labels) with the evaluation schedule; return it."""
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    images, labels = images.detach(), labels.detach()
    for epoch in range(cfg.epochs):
        if epoch == cfg.epochs // 2:
            for group in optimizer.param_groups:
                group["lr"] = lr * cfg.lr_decay_factor
                if cfg.momentum_after_decay >= 0:
                    group["momentum"] = cfg.momentum_after_decay
        order = torch.randperm(len(images), generator=generator, device=generator.device)
        for idx in order.to(images.device).split(cfg.batch_size):
            loss = F.cross_entropy(model(augment(images[idx], generator)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def evaluate_set(
    make_model: Callable[[str, int], nn.Module],
    model_name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    test: tuple[Images, torch.Tensor],
    cfg: EvaluateConfig,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    device: torch.device,
    seed: int,
    on_run: Callable[[float], None] = lambda acc: None,
) -> EvalResult:
    """Train ``cfg.runs`` fresh ``model_name`` networks (seeds ``seed + k``) and test each once at the end."""
    test_x, test_y = (t.to(device) for t in test)
    accs = []
    for k in range(cfg.runs):
        generator = torch.Generator(device=device).manual_seed(seed + k)
        model = make_model(model_name, seed + k).to(device)
        train_on_set(model, images.to(device), labels.to(device), lr, cfg, augment, generator)
        acc = accuracy(model, test_x, test_y)
        accs.append(acc)
        on_run(acc)
    return EvalResult(model_name, tuple(accs))
