"""herding-init on a tiny dataset: distinct real picks, the first one nearest the class mean."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch
from distillkit.testing import CLASSES, check_hooks, init_context, run_plugin_smoke, tiny_run

from distillkit_herding import HerdingInit, herding

PER_CLASS = 25


def make(ipc: int):
    """The kit's tiny 3-class set and TinyNet expert; the expert network itself for checks."""
    ctx = init_context(ipc=ipc, per_class=PER_CLASS, seed=4)
    run, _logged = tiny_run()
    expert = ctx.make_model()
    ctx.load_flat(expert, ctx.expert_params(-1))
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


def test_the_kit_accepts_the_answer_and_a_real_run_uses_it(tmp_path) -> None:
    assert set(check_hooks(HerdingInit(HerdingInit.Config()))) == {"init_synthetic"}
    summary = run_plugin_smoke(HerdingInit(HerdingInit.Config()), tmp_path)
    assert summary["init"] == "herding-init"


def test_entry_point_installed() -> None:
    names = {ep.name for ep in entry_points(group="distillkit")}
    if "herding-init" not in names:
        pytest.skip(
            "distillkit-herding is not installed (pip install -e examples/distillkit-herding)"
        )
    (ep,) = [ep for ep in entry_points(group="distillkit") if ep.name == "herding-init"]
    assert ep.load() is HerdingInit
