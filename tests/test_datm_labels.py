"""``datm``'s correct-sample initialisation and learned soft labels (DATM, Guo et al. ICLR 2024)."""

from __future__ import annotations

import re
from importlib.metadata import EntryPoint
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillkit.artifacts import load_synthetic
from distillkit.context import InitContext, LabelInitContext, SoftLabels
from distillkit.errors import ConfigError, PluginConflictError
from distillkit.hookspecs import hookimpl
from distillkit.host import PluginHost
from distillkit.models.flat import load_flat
from distillkit.testing import check_hooks, run_plugin_smoke, tiny_run
from distillkit_plugins.datm import DATMWindow, correct_first, correct_mean

CLASSES = 3


def _plugin(**options: Any) -> DATMWindow:
    return DATMWindow(DATMWindow.Config(**options))


# -- soft labels: the mean logits of the experts that are right ------------------------------

#: Three experts' logits on two images of classes 0 and 1. Image 0: experts 0 and 1 say class 0
#: (right), expert 2 says class 1 (wrong). Image 1: no expert says class 1.
LOGITS = torch.tensor(
    [
        [[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]],
        [[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]],
        [[0.0, 5.0, 0.0], [3.0, 0.0, 0.0]],
    ]
)
LABELS = torch.tensor([0, 1])
#: By hand: image 0 = ([2, 0, 0] + [3, 1, 0]) / 2; image 1 = ([1, 0, 0] + [0, 0, 2] + [3, 0, 0]) / 3.
EXPECTED = torch.tensor([[2.5, 0.5, 0.0], [4 / 3, 0.0, 2 / 3]])


def test_the_label_logits_average_only_the_experts_that_are_right():
    torch.testing.assert_close(correct_mean(LOGITS, LABELS), EXPECTED)


def _label_context(asked: list[tuple[int, int]]) -> LabelInitContext:
    """The three experts of :data:`LOGITS`: expert e's parameters are the vector [e]."""

    def expert_params(expert: int, epoch: int) -> torch.Tensor:
        asked.append((expert, epoch))
        return torch.tensor([float(expert)])

    return LabelInitContext(
        images=torch.zeros(2, 1, 4, 4),
        labels=LABELS,
        num_classes=CLASSES,
        experts=3,
        epochs_held=(5, 4, 6),
        expert_params=expert_params,
        predict=lambda theta, images: LOGITS[int(theta[0])].clone(),
    )


def test_init_labels_answers_the_correct_mean_learned_with_the_options():
    asked: list[tuple[int, int]] = []
    plugin = _plugin(label_lr=5.0, label_momentum=0.5, label_epoch=3)
    soft = plugin.init_labels(run=tiny_run()[0], ctx=_label_context(asked))
    torch.testing.assert_close(soft.logits, EXPECTED)
    assert (soft.lr, soft.momentum, soft.source) == (5.0, 0.5, "datm")
    assert asked == [(0, 3), (1, 3), (2, 3)]


def test_the_defaults_are_the_code_settings_for_cifar10_ipc10():
    soft = _plugin().init_labels(run=tiny_run()[0], ctx=_label_context(asked := []))
    assert (soft.lr, soft.momentum) == (2.0, 0.9)
    assert asked == [(0, -1), (1, -1), (2, -1)]


def test_hard_labels_without_soft_labels_and_a_too_late_epoch_is_refused():
    assert _plugin(soft_labels=False).init_labels(run=tiny_run()[0], ctx=_label_context([])) is None
    with pytest.raises(ConfigError, match=r"datm.label_epoch is 5, but the experts hold epochs 0..4"):
        _plugin(label_epoch=5).init_labels(run=tiny_run()[0], ctx=_label_context([]))


# -- initialisation: real images the first expert classifies correctly -----------------------


class Oracle(nn.Module):
    """Predicts the class written in pixel (0, 0) of channel 0; one parameter to load."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x[:, 0, 0, 0].long(), CLASSES).float() * self.scale


#: What the oracle predicts for the 12 training images (4 per class, classes 0, 1, 2 in turn):
#: class 0 right on images 0 and 2, class 1 on 4, 5, 6, class 2 only on 10.
PREDICTED = [0, 1, 0, 2, 1, 1, 1, 0, 0, 0, 2, 1]
TRAIN_LABELS = torch.arange(CLASSES).repeat_interleave(4)


def _init_context(ipc: int, asked: list[int]) -> InitContext:
    """Image i holds its predicted class in pixel (0, 0) and its index i in pixel (0, 1)."""
    images = torch.zeros(len(PREDICTED), 1, 4, 4)
    images[:, 0, 0, 0] = torch.tensor(PREDICTED, dtype=torch.float)
    images[:, 0, 0, 1] = torch.arange(len(PREDICTED), dtype=torch.float)

    def expert_params(epoch: int) -> torch.Tensor:
        asked.append(epoch)
        return torch.ones(1)

    return InitContext(
        train_images=images,
        train_labels=TRAIN_LABELS,
        num_classes=CLASSES,
        ipc=ipc,
        class_names=("zero", "one", "two"),
        expert_params=expert_params,
        expert_epochs_available=4,
        make_model=Oracle,
        load_flat=load_flat,
    )


def _picked(init) -> list[int]:
    return [int(v) for v in init.images[:, 0, 0, 1]]


def test_the_initial_images_are_the_first_correct_ones_in_the_run_generators_order():
    asked: list[int] = []
    with pytest.warns(UserWarning, match="class 'two'"):
        init = _plugin(label_epoch=2).init_synthetic(run=tiny_run(seed=3)[0], ctx=_init_context(2, asked))
    g = torch.Generator().manual_seed(3)  # the run generator draws one permutation per class
    expected = []
    for c in range(2):
        order = (4 * c + torch.randperm(4, generator=g)).tolist()
        expected += [i for i in order if PREDICTED[i] == c][:2]
    assert _picked(init)[:4] == expected
    assert {PREDICTED[i] for i in expected[:2]} == {0} and {PREDICTED[i] for i in expected[2:]} == {1}
    assert init.labels.tolist() == [0, 0, 1, 1, 2, 2] and init.source == "datm-correct"
    assert asked == [2]


def test_a_class_with_too_few_correct_images_is_filled_with_other_real_ones():
    fewer = r"fewer than ipc=2 real images correctly in 1 of 3 classes \(class 'two'\); .* the 1 places left"
    with pytest.warns(UserWarning, match=fewer):
        init = _plugin().init_synthetic(run=tiny_run()[0], ctx=_init_context(2, []))
    two = _picked(init)[4:]
    assert two[0] == 10 and two[1] in {8, 9, 11}


def test_the_scan_goes_on_past_the_first_batch():
    images = torch.zeros(600, 1, 4, 4)
    images[500, 0, 0, 0] = 2.0  # the only image predicted as class 2
    chosen, short = correct_first(Oracle(), images, torch.arange(600), 2, 2, torch.device("cpu"))
    assert chosen.tolist() == [500, 0] and short == 1


def test_init_real_defers_to_the_core_and_datm_excludes_kmeans_init():
    assert _plugin(init="real").init_synthetic(run=tiny_run()[0], ctx=_init_context(1, [])) is None
    done = check_hooks(_plugin(init="real", soft_labels=False))
    assert done["init_synthetic"] is None and done["init_labels"] is None
    eps = [
        EntryPoint("datm", "distillkit_plugins.datm:DATMWindow", "distillkit"),
        EntryPoint("kmeans-init", "distillkit_plugins.kmeans_init:KMeansInit", "distillkit"),
    ]
    with pytest.raises(PluginConflictError, match=r"'datm' and 'kmeans-init' both replace init_synthetic"):
        PluginHost(eps=eps).select(["datm", "kmeans-init"])


def test_the_kit_checks_every_datm_hook():
    with pytest.warns(UserWarning, match="datm: the expert classifies fewer than ipc") as warned:
        done = check_hooks(_plugin())  # the kit's expert is untrained: classes fall short
    assert set(done) == {"sample_segment", "init_synthetic", "init_labels"}
    assert isinstance(done["init_labels"], SoftLabels) and done["init_synthetic"].source == "datm-correct"
    shortfalls = [w for w in warned if "datm:" in str(w.message)]
    assert len(shortfalls) == 1  # one line for all the classes, not one per class
    assert re.search(r"in \d+ of \d+ classes \(class '.+'", str(shortfalls[0].message))


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"init": "noise"}, "datm.init"),
        ({"label_lr": -1.0}, "datm.label_lr"),
        ({"label_lr": float("nan")}, "datm.label_lr"),
        ({"label_momentum": 1.0}, "datm.label_momentum"),
        ({"label_momentum": -0.5}, "datm.label_momentum"),
        ({"label_epoch": -2}, "datm.label_epoch"),
    ],
)
def test_bad_options_are_one_line_config_errors(options: dict[str, Any], fragment: str):
    with pytest.raises(ConfigError) as info:
        DATMWindow.Config(**options)
    assert fragment in str(info.value) and "\n" not in str(info.value)


# -- end to end (once the engine asks init_labels) -----------------------------------------


class RecordingDATM(DATMWindow):
    """``datm`` that keeps the logits it answered, to compare with the saved set."""

    answered: SoftLabels | None = None

    @hookimpl
    def init_labels(self, run, ctx):
        self.answered = super().init_labels(run, ctx)
        return self.answered


def test_a_datm_run_learns_its_labels(tmp_path):
    window = {"current_max_start_epoch": 1, "max_start_epoch": 1, "expansion_end": 0}
    plugin = RecordingDATM(DATMWindow.Config(**window))
    summary = run_plugin_smoke(plugin, tmp_path)
    assert 0 <= summary["distilled"]["mean"] <= 1
    *_, extra = load_synthetic(tmp_path / "run")
    learned = extra["soft_labels"]
    assert learned.shape == (10, 10) and torch.isfinite(learned).all()
    assert not torch.equal(learned, plugin.answered.logits.cpu())  # lr 2: the labels moved
