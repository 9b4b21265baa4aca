"""``distillkit.testing``: the plugin-author kit works on every first-party plugin and catches bad ones."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from distillkit.context import LossTerm
from distillkit.errors import PluginError, PluginRuntimeError
from distillkit.hookspecs import hookimpl
from distillkit.testing import check_hooks, perturb_context, run_plugin_smoke, tiny_run
from distillkit_plugins.bil import BalancedInnerLoss
from distillkit_plugins.itm import IntermediateMatching
from distillkit_plugins.kmeans_init import KMeansInit
from distillkit_plugins.smooth import SmoothExperts
from distillkit_plugins.wp import WeightPerturbation


@pytest.mark.parametrize(
    ("plugin", "hook"),
    [
        (SmoothExperts, "expert_loss"),
        (KMeansInit, "init_synthetic"),
        (BalancedInnerLoss, "inner_loss_weight"),
        (WeightPerturbation, "perturb_expert"),
        (IntermediateMatching, "intermediate_match"),
    ],
)
def test_every_first_party_plugin_passes_the_kit(plugin, hook):
    done = check_hooks(plugin(plugin.Config()))
    assert set(done) == {hook}


class HalfStart:
    """A tiny perturb_expert plugin of the kind docs/plugins.md walks through."""

    name: ClassVar[str] = "half-start"

    @hookimpl
    def perturb_expert(self, run, ctx):
        return -0.5 * ctx.start


class WrongShape(HalfStart):
    @hookimpl
    def perturb_expert(self, run, ctx):
        return torch.zeros(1)


class LogsAnError:
    name: ClassVar[str] = "logs"

    @hookimpl
    def intermediate_match(self, run, ctx):
        run.log("logs/seen", 1.0)
        return [LossTerm("logs/zero", ctx.student_params[-1].sum() * 0.0)]


def test_the_kit_combines_like_the_engine_and_refuses_what_it_refuses():
    torch.testing.assert_close(check_hooks(HalfStart())["perturb_expert"], 0.5 * perturb_context().start)
    with pytest.raises(PluginRuntimeError, match="plugin 'half-start' returned"):
        check_hooks(WrongShape())
    (term,) = check_hooks(LogsAnError())["intermediate_match"]
    assert term.name == "logs/zero"
    run, logged = tiny_run()
    run.log("x", 2)
    assert logged == {"x": 2}


def test_a_smoke_run_distils_with_the_plugin(tmp_path):
    summary = run_plugin_smoke(HalfStart(), tmp_path)
    assert 0 <= summary["distilled"]["mean"] <= 1
    assert "half-start" in summary["plugins"]


class Unmarked:
    """A hook-named method without ``@hookimpl``: a run would never call it."""

    name = "unmarked"

    def perturb_expert(self, run, ctx):
        return None


class WrongArgument:
    name = "wrong-argument"

    @hookimpl
    def perturb_expert(self, run, context):
        return None


@pytest.mark.parametrize(
    ("plugin", "message"), [(Unmarked(), "not marked @hookimpl"), (WrongArgument(), "context")]
)
def test_check_hooks_refuses_what_a_run_would_ignore_or_refuse(plugin, message):
    with pytest.raises(PluginError, match=message):
        check_hooks(plugin)


def test_run_plugin_smoke_takes_the_plugins_own_options(tmp_path):
    import json

    run_plugin_smoke(WeightPerturbation(WeightPerturbation.Config()), tmp_path, {"wp.alpha": 0.5})
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["plugin_options"]["wp"]["alpha"] == 0.5
