"""The ``init_labels`` hook's checks and the ``tesla`` plugin (TESLA's soft label assignment)."""

from __future__ import annotations

import math
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar

import pytest
import torch

from distillkit.artifacts import load_synthetic
from distillkit.context import LabelInitContext, SoftLabels
from distillkit.errors import ConfigError, PluginConflictError, PluginRuntimeError
from distillkit.hookcalls import call_each, first_labels
from distillkit.hookspecs import hookimpl
from distillkit.host import PluginHost
from distillkit.models.flat import load_flat
from distillkit.resolve import resolve_config
from distillkit.testing import CLASSES, TinyNet, check_hooks, label_context, run_plugin_smoke, tiny_run
from distillkit_plugins.tesla import TeslaLabels


def _fixed_context(logits: list[list[float]]) -> LabelInitContext:
    """One expert whose network answers ``logits`` whatever the images."""
    table = torch.tensor(logits)
    return LabelInitContext(
        images=torch.zeros(len(table), 1, 4, 4),
        labels=torch.zeros(len(table), dtype=torch.long),
        num_classes=table.shape[1],
        experts=1,
        epochs_held=(3,),
        expert_params=lambda e, epoch: torch.zeros(1),
        predict=lambda theta, images: table.clone(),
    )


def test_labels_are_the_softmax_of_logits_over_the_temperature_by_hand():
    plugin = TeslaLabels(TeslaLabels.Config(temperature=2.0))
    soft = plugin.init_labels(run=tiny_run()[0], ctx=_fixed_context([[2.0, 0.0, 0.0]]))
    e = math.e  # softmax([2, 0, 0] / 2) = (e, 1, 1) / (e + 2)
    expected = torch.tensor([[e, 1.0, 1.0]]) / (e + 2)
    torch.testing.assert_close(soft.logits.softmax(1), expected)
    assert (soft.lr, soft.momentum, soft.source) == (0.0, 0.0, "tesla")


def test_labels_come_from_the_chosen_expert_and_epoch_of_a_tiny_net():
    ctx = label_context(ipc=2, experts=3, epochs=4)
    config = TeslaLabels.Config(label_expert=2, label_epoch=1, temperature=0.5)
    soft = TeslaLabels(config).init_labels(run=tiny_run()[0], ctx=ctx)
    net = TinyNet()
    load_flat(net, ctx.expert_params(2, 1))
    with torch.no_grad():
        expected = torch.softmax(net(ctx.images) / 0.5, dim=1)
    torch.testing.assert_close(soft.logits.softmax(1), expected)
    assert not soft.logits.requires_grad


def test_the_default_is_expert_0_at_its_last_epoch():
    ctx = label_context(experts=2, epochs=3)
    soft = TeslaLabels(TeslaLabels.Config()).init_labels(run=tiny_run()[0], ctx=ctx)
    torch.testing.assert_close(soft.logits, ctx.predict(ctx.expert_params(0, 3), ctx.images))


def test_hard_keeps_the_class_labels_and_both_modes_bring_constant_memory():
    assert check_hooks(TeslaLabels(TeslaLabels.Config(labels="hard"))) == {"init_labels": None}
    soft = check_hooks(TeslaLabels(TeslaLabels.Config()))["init_labels"]
    assert soft.logits.shape == (CLASSES, CLASSES)
    for labels in ("expert", "hard"):
        config, _host = resolve_config(
            overrides={"device": "cpu"}, extra_plugins=[TeslaLabels(TeslaLabels.Config(labels=labels))]
        )
        assert config.distill.memory == "constant"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"labels": "soft"}, "tesla.labels"),
        ({"label_expert": -1}, "tesla.label_expert"),
        ({"label_epoch": -2}, "tesla.label_epoch"),
        ({"temperature": 0.0}, "tesla.temperature"),
        ({"temperature": float("nan")}, "tesla.temperature"),
        ({"temperature": float("inf")}, "tesla.temperature"),
    ],
)
def test_bad_options_are_one_line_config_errors(options: dict[str, Any], fragment: str):
    with pytest.raises(ConfigError) as info:
        TeslaLabels.Config(**options)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def _host(*plugins: Any) -> PluginHost:
    host = PluginHost(eps=[])
    host.select([], extra=list(plugins))
    return host


@pytest.mark.parametrize(
    ("options", "fragment"),
    [({"label_expert": 2}, "the run has 2 experts"), ({"label_epoch": 3}, "holds epochs 0..2")],
)
def test_an_expert_or_epoch_the_run_lacks_fails_naming_the_plugin(options, fragment):
    host = _host(TeslaLabels(TeslaLabels.Config(**options)))
    with pytest.raises(PluginRuntimeError) as info:
        call_each(host.hook, "init_labels", run=tiny_run()[0], ctx=label_context())
    message = str(info.value)
    assert "plugin 'tesla' failed in init_labels" in message and fragment in message and "\n" not in message


def test_tesla_is_installed_and_conflicts_with_another_label_plugin():
    (ep,) = [ep for ep in entry_points(group="distillkit") if ep.name == "tesla"]
    assert ep.load() is TeslaLabels
    eps = [
        EntryPoint("tesla", "distillkit_plugins.tesla:TeslaLabels", "distillkit"),
        EntryPoint("datm", "distillkit_plugins.datm:DATMWindow", "distillkit"),
    ]
    with pytest.raises(PluginConflictError, match=r"'datm' and 'tesla' both replace init_labels"):
        PluginHost(eps=eps).select(["tesla", "datm"])


# -- the init_labels answer is checked, naming the plugin ------------------------------------


class Answers:
    """An ``init_labels`` plugin answering one given value."""

    name: ClassVar[str] = "bad-labels"

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    @hookimpl
    def init_labels(self, run, ctx):
        return self.answer


def _soft(**changes: Any) -> SoftLabels:
    fields = {"logits": torch.zeros(CLASSES, CLASSES), "lr": 1.0, "momentum": 0.5, "source": "x"}
    return SoftLabels(**(fields | changes))


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        ("labels", "a str, not a SoftLabels"),
        (_soft(logits=torch.zeros(CLASSES + 1, CLASSES)), "expected float [3, 3]"),
        (_soft(logits=torch.zeros(CLASSES)), "expected float [3, 3]"),
        (_soft(logits=torch.zeros(CLASSES, CLASSES, dtype=torch.long)), "expected float [3, 3]"),
        (_soft(logits=torch.full((CLASSES, CLASSES), float("nan"))), "NaN or infinite"),
        (_soft(lr=-1.0), "lr -1.0, not >= 0"),
        (_soft(lr=float("inf")), "lr inf, not a finite number"),
        (_soft(lr=True), "lr as a bool"),
        (_soft(momentum=1.0), "momentum 1.0, not in [0, 1)"),
        (_soft(momentum=-0.1), "momentum -0.1"),
        (_soft(source=3), "source as a int"),
    ],
)
def test_a_bad_answer_is_a_one_line_error_naming_the_plugin(answer: Any, fragment: str):
    with pytest.raises(PluginRuntimeError) as info:
        check_hooks(Answers(answer))
    message = str(info.value)
    assert message.startswith("plugin 'bad-labels' returned") and fragment in message
    assert "\n" not in message


def test_first_labels_gives_the_answer_and_its_plugin_or_none():
    ctx = label_context()
    assert first_labels(call_each(_host().hook, "init_labels", run=None, ctx=ctx), CLASSES, CLASSES) is None
    good = _soft(lr=0.0, momentum=0.0)
    answers = call_each(_host(Answers(good)).hook, "init_labels", run=None, ctx=ctx)
    assert first_labels(answers, CLASSES, CLASSES) == ("bad-labels", good)


# -- end to end (once the engine asks init_labels) -----------------------------------------


class RecordingTesla(TeslaLabels):
    """``tesla`` that keeps the logits it answered, to compare with the saved set."""

    answered: SoftLabels | None = None

    @hookimpl
    def init_labels(self, run, ctx):
        self.answered = super().init_labels(run, ctx)
        return self.answered


def test_a_tesla_run_saves_its_fixed_labels_and_uses_constant_memory(tmp_path):
    import json

    plugin = RecordingTesla(TeslaLabels.Config())
    summary = run_plugin_smoke(plugin, tmp_path)
    assert 0 <= summary["distilled"]["mean"] <= 1
    run_dir = tmp_path / "run"
    _images, labels, _lr, _meta, extra = load_synthetic(run_dir)
    assert torch.equal(extra["soft_labels"], plugin.answered.logits.cpu())  # lr 0: never moved
    assert torch.equal(labels, torch.arange(10))
    assert json.loads((run_dir / "config.json").read_text())["distill"]["memory"] == "constant"
