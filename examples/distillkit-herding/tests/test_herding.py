"""herding-init on a tiny dataset: distinct real picks, the first one nearest the class mean."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch
import torch.nn as nn
from distillkit.config import RunConfig
from distillkit.context import InitContext, RunContext
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from distillkit_herding import HerdingInit, herding

CLASSES, PER_CLASS = 3, 25


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.classifier = nn.Linear(16, CLASSES)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def make(ipc: int) -> tuple[RunContext, InitContext, nn.Module]:
    g = torch.Generator().manual_seed(4)
    labels = torch.arange(CLASSES).repeat(PER_CLASS)
    images = torch.randn(CLASSES, 1, 4, 4, generator=g)[labels]
    images = images + torch.randn(len(labels), 1, 4, 4, generator=g)
    torch.manual_seed(0)
    expert = TinyCNN()
    flat = parameters_to_vector(expert.parameters()).detach()
    ctx = InitContext(
        train_images=images,
        train_labels=labels,
        num_classes=CLASSES,
        ipc=ipc,
        class_names=tuple(map(str, range(CLASSES))),
        expert_params=lambda e: flat.clone(),
        expert_epochs_available=1,
        make_model=TinyCNN,
        load_flat=lambda model, theta: vector_to_parameters(theta, model.parameters()),
    )
    run = RunContext(
        config=RunConfig(),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        out_dir=None,
    )
    return run, ctx, expert


@pytest.mark.parametrize("ipc", [1, 5])
def test_distinct_real_images_per_class(ipc: int) -> None:
    run, ctx, _ = make(ipc)
    result = HerdingInit(HerdingInit.Config()).init_synthetic(run, ctx)
    assert result.source == "herding-init"
    assert torch.equal(result.labels, torch.arange(CLASSES).repeat_interleave(ipc))
    for c in range(CLASSES):
        real = ctx.train_images[ctx.train_labels == c].flatten(1)
        block = result.images[c * ipc : (c + 1) * ipc].flatten(1)
        assert len(torch.unique(block, dim=0)) == ipc
        for row in block:
            assert (real == row).all(1).any()


def test_first_pick_is_nearest_to_class_mean() -> None:
    run, ctx, expert = make(ipc=4)
    result = HerdingInit(HerdingInit.Config()).init_synthetic(run, ctx)
    with torch.no_grad():
        for c in range(CLASSES):
            x = ctx.train_images[ctx.train_labels == c]
            feats = expert.embed(x).double()
            nearest = (feats - feats.mean(0)).norm(dim=1).argmin()
            assert torch.equal(result.images[c * 4], x[nearest])


def test_running_mean_tracks_class_mean() -> None:
    feats = torch.randn(200, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    picks = herding(feats, 20)
    assert len(set(picks)) == 20
    herded = (feats[picks].mean(0) - feats.mean(0)).norm()
    first20 = (feats[:20].mean(0) - feats.mean(0)).norm()
    assert herded < first20


def test_entry_point_installed() -> None:
    names = {ep.name for ep in entry_points(group="distillkit")}
    if "herding-init" not in names:
        pytest.skip(
            "distillkit-herding is not installed (pip install -e examples/distillkit-herding)"
        )
    (ep,) = [ep for ep in entry_points(group="distillkit") if ep.name == "herding-init"]
    assert ep.load() is HerdingInit
