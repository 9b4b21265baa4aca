"""Packed evaluation networks (distillkit.ensemble) train exactly as they would one at a time.

Everything runs on the embedded sklearn digits (8×8) or tiny tensors, in seconds; the comparisons of
packed and one-at-a-time training run on CUDA too where the machine has it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import DEVICES
from torch import nn

from distillkit import evaluate as evaluate_module
from distillkit.config import EvaluateConfig
from distillkit.data.augment import DSA
from distillkit.data.datasets import load_dataset
from distillkit.ensemble import (
    Member,
    NotPackable,
    PackedSGD,
    pack,
    packed_accuracy,
    train_packed,
    unsupported_reason,
)
from distillkit.evaluate import EvalSet, evaluate_set, evaluate_sets, packs_on, train_on_set
from distillkit.experts.train import accuracy
from distillkit.models import build_model

CPU = torch.device("cpu")
#: The digits preset's model. (A depth-3 ConvNet instance-normalises 2×2 maps on 8×8 digits, which
#: amplifies float rounding quickly; both paths then part faster than in any real setting.)
MODEL = "convnet-w32-d2"
#: Three steps per epoch on 20 images (8, 8, 4) and the momentum change at epoch 3.
SCHEDULE = EvaluateConfig(runs=3, epochs=6, batch_size=8, momentum_after_decay=0.5)


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    return data.train_images[:20], data.train_labels[:20], (data.test_images, data.test_labels)


def make(name: str, seed: int) -> nn.Module:
    """As ``runtime.model_factory`` does for digits: seeded, the global RNG left alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name, 1, 10, (8, 8))


@pytest.mark.parametrize("device", DEVICES)
def test_packed_networks_get_the_parameters_and_draws_of_one_at_a_time(digits, device, exact_kernels):
    images, labels = (t.to(device) for t in digits[:2])
    augment, seed, lr = DSA(), 7, 0.05

    def network(k: int) -> nn.Module:
        return make(MODEL, seed + k).to(device)

    def generator(k: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed + k)

    alone, generators = [], [generator(k) for k in range(SCHEDULE.runs)]
    for k in range(SCHEDULE.runs):
        alone.append(train_on_set(network(k), images, labels, lr, SCHEDULE, augment, generators[k]))
    models = [network(k) for k in range(SCHEDULE.runs)]
    members = [Member(images, labels, lr, generator(k)) for k in range(SCHEDULE.runs)]
    packed = train_packed(pack(models, images[:8]), members, SCHEDULE, augment)
    packed.load_into(models)
    for k in range(SCHEDULE.runs):
        # The same draws, in the same order: each generator ends in the same state.
        assert torch.equal(members[k].generator.get_state(), generators[k].get_state())
        moved = 0.0
        for (name, ours), theirs, start in zip(
            models[k].named_parameters(),
            alone[k].parameters(),
            network(k).parameters(),
            strict=True,
        ):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0, msg=name)
            moved = max(moved, (theirs - start).abs().max().item())
        assert moved > 1e-2  # the networks really trained
    assert not torch.equal(models[0].conv1.weight, models[1].conv1.weight)


@pytest.mark.parametrize(("momentum", "after"), [(0.9, -1.0), (0.9, 0.5), (0.0, 0.8), (0.9, 0.0)])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-4])
def test_packed_sgd_is_torch_sgd_per_network(momentum, after, weight_decay):
    generator = torch.Generator().manual_seed(0)
    alone = [torch.randn(6, 5, generator=generator) for _ in range(3)]
    stacked = torch.stack(alone)
    lrs = [0.1, 0.1, 0.03]  # network 2 as from another set
    optimizers = [
        torch.optim.SGD([p], lr=lr, momentum=momentum, weight_decay=weight_decay)
        for p, lr in zip(alone, lrs, strict=True)
    ]
    ours = PackedSGD([stacked], lrs, momentum, weight_decay)
    for step in range(8):
        if step == 4:
            ours.lrs = [lr * 0.1 for lr in lrs]
            for optimizer, lr in zip(optimizers, lrs, strict=True):
                optimizer.param_groups[0]["lr"] = lr * 0.1
                if after >= 0:
                    optimizer.param_groups[0]["momentum"] = after
            if after >= 0:
                ours.momentum = after
        grads = torch.randn(3, 6, 5, generator=generator)
        for p, g, optimizer in zip(alone, grads, optimizers, strict=True):
            p.grad = g.clone()
            optimizer.step()
        ours.step([grads])
        torch.testing.assert_close(stacked, torch.stack(alone), atol=1e-7, rtol=0)


def test_a_packed_group_out_of_device_memory_trains_one_at_a_time(digits, monkeypatch):
    """The device running out of memory is simulated (this test runs on CPU)."""
    images, labels, test = digits
    cfg = dataclasses.replace(SCHEDULE, epochs=4)

    def runs_out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("simulated")

    off = evaluate_set(make, MODEL, images, labels, 0.05, test, cfg, DSA(), CPU, 3)
    monkeypatch.setattr(evaluate_module, "train_packed", runs_out_of_memory)
    on = dataclasses.replace(cfg, parallel="on")
    # Trained one at a time instead: the same accuracies, bit for bit.
    assert evaluate_set(make, MODEL, images, labels, 0.05, test, on, DSA(), CPU, 3) == off


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_set_gives_the_same_accuracies_packed(digits, device, exact_kernels):
    images, labels, test = digits
    cfg = dataclasses.replace(SCHEDULE, epochs=20)
    results = {}
    for parallel in ("off", "on"):
        seen: list[float] = []
        config = dataclasses.replace(cfg, parallel=parallel)
        results[parallel] = evaluate_set(
            make, MODEL, images, labels, 0.05, test, config, DSA(), torch.device(device), 3,
            on_run=seen.append,
        )  # fmt: skip
        assert seen == list(results[parallel].runs)
    one_image = 1 / len(test[1])
    assert results["on"].mean > 0.3  # trained, not chance
    for packed, alone in zip(results["on"].runs, results["off"].runs, strict=True):
        assert abs(packed - alone) <= one_image + 1e-12


def test_packed_accuracy_is_each_networks_accuracy(digits):
    _, _, (test_x, test_y) = digits
    models = [make(MODEL, k) for k in range(3)]
    packed = pack(models, test_x[:8])
    assert packed_accuracy(packed, test_x, test_y) == [accuracy(m, test_x, test_y) for m in models]


def test_sets_of_one_architecture_train_in_one_batch(digits):
    images, labels, test = digits
    cfg = dataclasses.replace(SCHEDULE, runs=2, epochs=8, parallel="on")
    sets = [
        EvalSet(images, labels, 0.05, 3),
        EvalSet(images[:10], labels[:10], 0.02, 11),  # another size: its own batch
        EvalSet(images.flip(0), labels.flip(0), 0.02, 40),
    ]
    seen: list[float] = []
    together = evaluate_sets(make, MODEL, sets, test, cfg, DSA(), CPU, on_run=seen.append)
    assert seen == [acc for result in together for acc in result.runs]
    off = dataclasses.replace(cfg, parallel="off")
    for item, result in zip(sets, together, strict=True):
        alone = evaluate_set(make, MODEL, item.images, item.labels, item.lr, test, off, DSA(), CPU, item.seed)
        for packed, single in zip(result.runs, alone.runs, strict=True):
            assert abs(packed - single) <= 1 / len(test[1]) + 1e-12


def test_batch_norm_models_fall_back_to_one_at_a_time(digits):
    images, labels, test = digits
    assert "buffers" in unsupported_reason(make(f"{MODEL}-bn", 0))
    with pytest.raises(NotPackable, match="buffers"):
        pack([make(f"{MODEL}-bn", k) for k in range(2)], images[:8])
    cfg = dataclasses.replace(SCHEDULE, runs=2)
    runs = {
        parallel: evaluate_set(
            make, f"{MODEL}-bn", images, labels, 0.05, test, dataclasses.replace(cfg, parallel=parallel),
            DSA(), CPU, 5,
        ).runs
        for parallel in ("on", "off")
    }  # fmt: skip
    assert runs["on"] == runs["off"]  # the very same path: equal to the bit


class ChannelMixer(nn.Module):
    """Only packable layers, but a forward that mixes channels: packing would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.classifier = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.classifier((x - x.mean(1, keepdim=True)).flatten(1))


def test_a_forward_that_mixes_channels_is_refused_not_trained_wrongly(digits):
    images, labels, test = digits
    assert unsupported_reason(ChannelMixer()) is None  # the structure alone looks fine
    with pytest.raises(NotPackable, match="mixes"):
        pack([ChannelMixer() for _ in range(2)], images[:8])

    def make_mixer(name: str, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return ChannelMixer()

    cfg = dataclasses.replace(SCHEDULE, runs=2, epochs=3)
    runs = {
        p: evaluate_set(
            make_mixer,
            "mixer",
            images,
            labels,
            0.05,
            test,
            dataclasses.replace(cfg, parallel=p),
            DSA(),
            CPU,
            1,
        ).runs
        for p in ("on", "off")
    }
    assert runs["on"] == runs["off"]


class OwnParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.flatten(1) * self.scale)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(64, 10)), "Dropout"),
        (OwnParameter(), "holds parameters"),
        (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")), "reflect"),
    ],
)
def test_layers_without_a_packed_form_are_named(model, reason):
    assert reason in unsupported_reason(model)


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(64, 10)
        self.spare = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.flatten(1))


def test_a_parameter_without_gradient_is_refused(digits):
    # torch.optim.SGD skips it (no weight decay either); packed training would decay it.
    with pytest.raises(NotPackable, match="spare"):
        pack([Unused() for _ in range(2)], digits[0][:4])


@pytest.mark.parametrize(
    "name", ["convnet-w8-d2-ln", "convnet-w8-d2-gn-mp", "convnet-w8-nn-np", "vgg11", "resnet18-ap"]
)
def test_other_architectures_pack(name, digits):
    models = [make(name, k) for k in range(2)]
    packed = pack(models, digits[0][:4])  # checks logits and gradients per network
    assert packed.size == 2
    for (key, stacked), original in zip(packed.stacked().items(), models[1].parameters(), strict=True):
        assert torch.equal(stacked[1], original), key


def test_auto_packs_with_cuda_only():
    auto = EvaluateConfig()
    assert auto.parallel == "auto"
    assert packs_on(auto, torch.device("cuda")) and not packs_on(auto, CPU)
    assert packs_on(dataclasses.replace(auto, parallel="on"), CPU)
    assert not packs_on(dataclasses.replace(auto, parallel="off"), torch.device("cuda"))
