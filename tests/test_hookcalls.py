"""Hook results are checked where they are combined: a wrong answer names its plugin, never succeeds."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import distillkit
from distillkit import api
from distillkit.config import RunConfig
from distillkit.context import InitContext, InnerLossContext, LossScale, LossTerm, PerturbContext, RunContext
from distillkit.errors import ExitCode, PluginRuntimeError, out_of_memory
from distillkit.hookcalls import (
    call_each,
    combine_deltas,
    combine_expert_loss,
    combine_terms,
    combine_weights,
    first_init,
)
from distillkit.hookspecs import hookimpl
from distillkit.host import PluginHost

START = torch.randn(12)
RUN = RunContext(config=RunConfig(), device=torch.device("cpu"), generator=torch.Generator(), out_dir=None)


class Returns:
    """A test plugin whose every hook answers with one given value."""

    name: ClassVar[str] = "returns"

    def __init__(self, value: Any) -> None:
        self.value = value

    @hookimpl
    def perturb_expert(self, run, ctx):
        return self.value

    @hookimpl
    def inner_loss_weight(self, run, ctx):
        return self.value

    @hookimpl
    def intermediate_match(self, run, ctx):
        return self.value

    @hookimpl
    def expert_loss(self, run, ctx):
        return self.value

    @hookimpl
    def init_synthetic(self, run, ctx):
        return self.value


def hook_of(value: Any):
    host = PluginHost(eps=[])
    host.select([], extra=[Returns(value)])
    return host.hook


def combined(hook_name: str, value: Any) -> Any:
    hook = hook_of(value)
    if hook_name == "perturb_expert":
        ctx = PerturbContext(0, START, 0, ())
        return combine_deltas(call_each(hook, hook_name, run=RUN, ctx=ctx), START)
    if hook_name == "inner_loss_weight":
        ctx = InnerLossContext(0, 0, 5, 2, 20)
        return combine_weights(call_each(hook, hook_name, run=RUN, ctx=ctx))
    if hook_name == "intermediate_match":
        return combine_terms([("returns", value)], torch.device("cpu"))
    if hook_name == "expert_loss":
        return combine_expert_loss(torch.tensor(1.0), [("returns", value)])
    ctx = InitContext(
        train_images=torch.randn(8, 1, 2, 2),
        train_labels=torch.arange(2).repeat(4),
        num_classes=2,
        ipc=1,
        class_names=("a", "b"),
        expert_params=lambda e: torch.zeros(1),
        expert_epochs_available=1,
        make_model=lambda: torch.nn.Identity(),
        load_flat=lambda m, t: None,
    )
    return first_init(call_each(hook, hook_name, run=RUN, ctx=ctx), 2, (1, 2, 2), 2)


JUNK = st.one_of(
    st.integers(),
    st.text(max_size=5),
    st.lists(st.floats(allow_nan=True), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.lists(st.integers(0, 4), max_size=3).map(lambda shape: torch.zeros(shape)),
    st.sampled_from([float("nan"), float("inf"), -1.0, 0.0, True]),
    st.sampled_from(
        [torch.tensor(float("nan")), torch.zeros(12, dtype=torch.float64), torch.zeros(12, dtype=torch.int64)]
    ),
)


@pytest.mark.parametrize(
    "hook_name",
    ["perturb_expert", "inner_loss_weight", "intermediate_match", "expert_loss", "init_synthetic"],
)
@settings(max_examples=40, deadline=None)
@given(value=JUNK)
def test_a_wrong_answer_is_a_plugin_error_naming_the_plugin(hook_name, value):
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hook_name == "inner_loss_weight" and number and 0 < value < float("inf"):
        return  # a positive finite number is a valid weight
    if hook_name in ("intermediate_match", "expert_loss") and isinstance(value, list) and not value:
        return  # no terms is a valid answer
    with pytest.raises(PluginRuntimeError, match="plugin 'returns'"):
        combined(hook_name, value)


def test_valid_answers_combine():
    delta = torch.full_like(START, 0.5)
    torch.testing.assert_close(combined("perturb_expert", delta), START + 0.5)
    assert combined("inner_loss_weight", 2) == 2.0
    assert combined("inner_loss_weight", torch.tensor(0.5)) == 0.5
    term = LossTerm("x", torch.tensor(0.25))
    assert combined("intermediate_match", [term]) == [term]
    loss, parts = combine_expert_loss(torch.tensor(2.0), [("a", [LossScale("s", 0.5), term])])
    assert float(loss) == pytest.approx(1.25) and parts == {"s": 0.5, "x": term.value}


def test_a_plugin_that_raises_or_exits_is_a_plugin_error():
    class Exits(Returns):
        @hookimpl
        def inner_loss_weight(self, run, ctx):
            raise SystemExit(0)

    host = PluginHost(eps=[])
    host.select([], extra=[Exits(1.0)])
    with pytest.raises(
        PluginRuntimeError, match=r"plugin 'returns' failed in inner_loss_weight: SystemExit"
    ) as info:
        call_each(host.hook, "inner_loss_weight", run=RUN, ctx=InnerLossContext(0, 0, 5, 2, 20))
    assert info.value.exit_code == ExitCode.PLUGIN_ERROR


def test_running_out_of_memory_in_a_plugin_passes_through_for_the_stage_to_name():
    class Allocates(Returns):
        @hookimpl
        def inner_loss_weight(self, run, ctx):
            return float(torch.empty(10**13).sum())  # 40 TB: the CPU allocator refuses

    host = PluginHost(eps=[])
    host.select([], extra=[Allocates(1.0)])
    with pytest.raises(RuntimeError) as info:
        call_each(host.hook, "inner_loss_weight", run=RUN, ctx=InnerLossContext(0, 0, 5, 2, 20))
    assert out_of_memory(info.value) and not isinstance(info.value, PluginRuntimeError)


class OneDelta:
    """Returns a delta of shape [1], which broadcasting would once have spread onto every parameter."""

    name: ClassVar[str] = "one-delta"

    @hookimpl
    def perturb_expert(self, run, ctx):
        return torch.zeros(1)


def test_a_broadcastable_delta_stops_a_real_run(tmp_path):
    tiny = {
        "experts.count": 1, "experts.epochs": 3, "distill.max_start_epoch": 1, "distill.syn_steps": 3,
        "distill.iterations": 2, "evaluate.runs": 1, "evaluate.epochs": 2,
    }  # fmt: skip
    config, host = distillkit.resolve_config(overrides=tiny, extra_plugins=[OneDelta()])
    with pytest.raises(PluginRuntimeError, match=r"plugin 'one-delta' returned .*shape \[1\]"):
        api.run(config, host, tmp_path / "run")
