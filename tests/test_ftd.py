"""The ftd plugin: the GSAM step by hand on a quadratic, the ρ schedule, exclusivity, tiny runs."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
from conftest import TINY_EXPERTS
from torch import nn

import distillkit
from distillkit import api
from distillkit.context import ExpertOptimContext
from distillkit.errors import PluginConflictError
from distillkit.hookspecs import hookimpl
from distillkit_plugins.ftd import gsam_step, rho_at

TINY = {**TINY_EXPERTS, "experts.batch_size": 256, "experts.eval_every": 0, "experts.epochs": 2}


def test_gsam_step_on_a_quadratic_matches_the_hand_computation() -> None:
    # f(w) = ½ wᵀAw, A = diag(2, 1), w = (1, 2): g = Aw = (2, 2), ‖g‖ = 2√2.
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    model = nn.Linear(1, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [2.0]], dtype=torch.float64))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = model.weight.view(-1)
    loss_of = lambda: 0.5 * model.weight.view(-1) @ a @ model.weight.view(-1)  # noqa: E731
    ctx = ExpertOptimContext(model, opt, loss_of, loss_of(), 0, 0, 1, 1)
    rho, alpha = 0.5, 0.4
    gsam_step(ctx, rho, alpha, adaptive=False)
    # by hand: e = ρ g/‖g‖ = (0.5/√2)(1, 1); g_f = A(w + e); g_⊥ = g − (g·g_f/‖g_f‖²) g_f.
    g = torch.tensor([2.0, 2.0], dtype=torch.float64)
    e = 0.5 / 2**0.5 * torch.tensor([1.0, 1.0], dtype=torch.float64)
    w0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    gf = a @ (w0 + e)
    assert gf.tolist() == pytest.approx([2 + 2**0.5 / 2, 2 + 2**0.5 / 4])
    g_perp = g - (g @ gf) / (gf @ gf) * gf
    assert float(g_perp @ gf) == pytest.approx(0.0, abs=1e-12)
    d = gf - alpha * g_perp
    assert w.tolist() == pytest.approx((w0 - 0.1 * d).tolist(), abs=1e-12)
    assert (w0 - 0.1 * d).tolist() != pytest.approx((w0 - 0.1 * gf).tolist())  # α matters


def test_rho_follows_the_lr() -> None:
    assert rho_at(0.01, 0.01, 0.001, 0.05, 0.01) == pytest.approx(0.05)
    assert rho_at(0.001, 0.01, 0.001, 0.05, 0.01) == pytest.approx(0.01)
    assert rho_at(0.0055, 0.01, 0.001, 0.05, 0.01) == pytest.approx(0.03)
    assert rho_at(0.01, 0.01, 0.01, 0.05, 0.01) == 0.05  # a fixed lr: ρ_max


class OtherStep:
    name: ClassVar[str] = "other-step"

    @hookimpl
    def expert_step(self, run, ctx):
        return None


def test_expert_step_is_exclusive() -> None:
    with pytest.raises(PluginConflictError, match=r"'ftd' and 'other-step' both replace expert_step"):
        extra = [OtherStep()]
        distillkit.resolve_config(preset="digits", overrides=TINY, plugins=["ftd"], extra_plugins=extra)


@pytest.fixture(scope="module")
def data() -> api.PreparedData:
    config, _ = distillkit.resolve_config(preset="digits", overrides=TINY)
    return api.prepare_data(config.data)


def _train(tmp_path: Path, data, plugins: list[str], name: str) -> tuple[torch.Tensor, list[dict]]:
    config, host = distillkit.resolve_config(preset="digits", overrides=TINY, plugins=plugins)
    store = api.train_experts(config, host, data, tmp_path / name)
    return store.load(0), store.manifest.experts[0]["history"]


def test_ftd_experts_train_deterministically_and_differ_from_plain(tmp_path: Path, data) -> None:
    plain, _ = _train(tmp_path, data, [], "plain")
    ftd, history = _train(tmp_path, data, ["ftd"], "ftd")
    again, _ = _train(tmp_path, data, ["ftd"], "again")
    assert torch.isfinite(ftd).all() and not torch.equal(ftd, plain) and torch.equal(ftd, again)
    assert torch.equal(ftd[0], plain[0])  # same start, different updates
    assert all(row["ftd/rho"] == pytest.approx(0.01) for row in history)


def test_ftd_composes_with_smooth(tmp_path: Path, data) -> None:
    smooth, _ = _train(tmp_path, data, ["smooth"], "smooth")
    both, history = _train(tmp_path, data, ["smooth", "ftd"], "both")
    assert not torch.equal(both, smooth)
    assert {"loss/clip", "loss/gp", "ftd/rho"} <= set(history[0])


def test_an_interrupted_ftd_expert_resumes_bit_identically(tmp_path: Path, data) -> None:
    from test_experts_api import RESUME, Interrupted, Recorder

    overrides = {**TINY, **RESUME}  # momentum and an lr decay: ρ is read from the restored lr
    config, host = distillkit.resolve_config(preset="digits", overrides=overrides, plugins=["ftd"])
    whole = api.train_experts(config, host, data, tmp_path / "whole")
    with pytest.raises(Interrupted):
        api.train_experts(config, host, data, tmp_path / "cut", Recorder(stop_after=2))
    resumed = api.train_experts(config, host, data, tmp_path / "cut", Recorder())
    assert torch.equal(resumed.load(0), whole.load(0))


def test_ftd_brings_the_image_average_as_a_config_default_that_a_user_can_override() -> None:
    config, _ = distillkit.resolve_config(preset="digits", overrides=TINY, plugins=["ftd"])
    assert config.distill.image_ema == 0.999
    config, _ = distillkit.resolve_config(
        preset="digits", overrides={**TINY, "distill.image_ema": 0.9}, plugins=["ftd"]
    )
    assert config.distill.image_ema == 0.9
    plain, _ = distillkit.resolve_config(preset="digits", overrides=TINY)
    assert plain.distill.image_ema == 0.0


def test_ftd_experts_have_a_store_key_of_their_own(data) -> None:
    """An expert_step plugin changes the trajectories, so plain and ftd experts never share a store."""
    plain, plain_host = distillkit.resolve_config(preset="digits", overrides=TINY)
    ftd, ftd_host = distillkit.resolve_config(preset="digits", overrides=TINY, plugins=["ftd"])
    plain_key = api.expert_key(plain, data, plain_host)
    ftd_key = api.expert_key(ftd, data, ftd_host)
    assert plain_key != ftd_key
    assert set(ftd_key["expert_plugins"]) == {"ftd"} and plain_key["expert_plugins"] == {}
