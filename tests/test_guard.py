"""The outer loop's divergence guard (detect, roll back, lower lrs, give up) and match denominator."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distillkit import hookimpl
from distillkit.config import DistillConfig, RunConfig
from distillkit.context import LossTerm, RunContext
from distillkit.engine.guard import Diverged, DivergenceGuard
from distillkit.engine.loop import Distiller, DivergenceError
from distillkit.engine.student import FlatStudent
from distillkit.host import PluginHost
from distillkit.models.flat import flatten_params


class PoisonedTerm:
    """Adds a NaN loss term at the listed iterations (a real plugin, used to inject the fault)."""

    name = "poison"

    def __init__(self, at: set[int]) -> None:
        self.at = at

    @hookimpl
    def intermediate_match(self, run, ctx):
        if ctx.iteration in self.at:
            return LossTerm("poison", torch.tensor(math.nan))
        return None


def _distiller(plugins: list, **overrides) -> Distiller:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    start = flatten_params(model)
    experts = [torch.stack([start + 0.1 * k * torch.randn_like(start) for k in range(4)])]
    config = DistillConfig(
        ipc=2, syn_steps=3, expert_epochs=2, max_start_epoch=2, lr_img=10.0, guard_every=2, **overrides
    )
    host = PluginHost(eps=[])
    host.select([], extra=plugins)
    run = RunContext(RunConfig(distill=config), torch.device("cpu"), torch.Generator().manual_seed(0), None)
    images = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    return Distiller(run, host, FlatStudent(model), images, labels, experts, config, lambda x, g: x)


def test_a_nan_loss_rolls_back_to_the_last_good_state_and_halves_the_learning_rates():
    clean = _distiller([])
    for _ in range(3):
        clean.step()
    guarded = _distiller([PoisonedTerm({3})])
    for _ in range(3):
        guarded.step()
    assert torch.equal(guarded.images, clean.images)

    result = guarded.step()  # iteration 3 fails, rolls back to iteration 2 (guard_every=2), redoes 2
    assert len(result.rollbacks) == 1
    assert "matching loss is nan at iteration 3" in result.rollbacks[0]
    assert result.iteration == 2
    assert guarded.lr_img == pytest.approx(5.0)
    assert guarded.lr_lr == pytest.approx(0.5e-5)
    assert torch.isfinite(guarded.images).all()
    assert guarded.failures == 1


def test_repeated_failure_stops_with_the_last_good_set_in_place():
    distiller = _distiller([PoisonedTerm({2})], max_failures=3)
    distiller.step()
    distiller.step()
    good = distiller.images.detach().clone()
    with pytest.raises(DivergenceError, match="diverged 4 times"):
        distiller.step()
    assert distiller.iteration == 2
    assert torch.equal(distiller.images, good)


def test_explosion_check_compares_with_recent_good_losses():
    guard = DivergenceGuard(max_loss_ratio=100.0)
    for value in (1.0, 1.2, 0.9, 1.1, 1.0):
        guard.accept(value)
    assert guard.check_loss(torch.tensor(50.0)) == 50.0
    with pytest.raises(Diverged, match="exploded"):
        guard.check_loss(torch.tensor(500.0))
    with pytest.raises(Diverged, match="inf"):
        guard.check_loss(torch.tensor(math.inf))


def test_non_finite_gradients_and_non_positive_alpha_are_divergence():
    guard = DivergenceGuard(max_loss_ratio=0.0)
    guard.check_grads(images=torch.ones(3), alpha=None)
    with pytest.raises(Diverged, match="gradient of images"):
        guard.check_grads(images=torch.tensor([1.0, math.nan]))
    for bad in (0.0, -1e-3, math.inf, math.nan):
        with pytest.raises(Diverged, match="α"):
            guard.check_alpha(torch.tensor(bad))
    guard.check_alpha(torch.tensor(1e-6))


def test_state_round_trip_is_exact():
    a = _distiller([])
    a.step()
    saved = a.state()
    first = [a.step().loss for _ in range(3)]
    a.load_state(saved)
    again = [a.step().loss for _ in range(3)]
    assert first == again


class ShiftStart:
    """Perturbs every start by a constant δ (a real ``perturb_expert`` plugin)."""

    name = "shift"

    @hookimpl
    def perturb_expert(self, run, ctx):
        return torch.full_like(ctx.start, 0.05)


def test_match_denominator_uses_the_perturbed_start_when_asked():
    expert = _distiller([ShiftStart()], match_denominator="expert")
    perturbed = _distiller([ShiftStart()], match_denominator="perturbed")
    a, b = expert.step(), perturbed.step()
    start = expert.experts[a.expert][a.start_epoch]
    target = expert.experts[a.expert][a.start_epoch + 2]
    ratio = (start - target).pow(2).sum() / (start + 0.05 - target).pow(2).sum()
    assert b.match_loss == pytest.approx(a.match_loss * float(ratio), rel=1e-5)
    assert b.match_loss != a.match_loss


def test_exploding_pixels_are_divergence():
    guard = DivergenceGuard(max_loss_ratio=0.0, max_abs_pixel=1e3)
    guard.check_images(torch.full((2, 3), 999.0))
    with pytest.raises(Diverged, match="pixels"):
        guard.check_images(torch.tensor([1.0, -1e4]))
    with pytest.raises(Diverged, match="pixels"):
        guard.check_images(torch.tensor([1.0, math.nan]))
