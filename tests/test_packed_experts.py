"""Experts trained as packed groups (``experts.parallel``) against the same experts trained alone."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import DEVICES, TINY_EXPERTS
from test_experts_api import Interrupted, Recorder

import distillkit
from distillkit import api
from distillkit.config import ExpertsConfig
from distillkit.errors import ConfigError
from distillkit.experts import pipeline
from distillkit.experts.packed import packing_refusal, packs_experts
from distillkit.experts.store import TrajectoryStore

#: Every piece of per-expert state matters: momentum buffers, weight decay, a decayed lr, every DSA
#: op drawing from the expert's generator, and a test pass after every epoch.
SETTINGS = {
    **TINY_EXPERTS,
    "model.name": "convnet-w8-d2",
    "experts.count": 3,
    "experts.epochs": 3,
    "experts.momentum": 0.9,
    "experts.weight_decay": 5e-4,
    "experts.lr_decay": "half",
    "experts.eval_every": 1,
    "data.augment": "color_crop_cutout_flip_scale_rotate",
}


def resolve(parallel: str, **overrides: object):
    settings = {**SETTINGS, "experts.parallel": parallel, **overrides}
    return distillkit.resolve_config(preset="digits", overrides=settings)


@pytest.fixture(scope="module")
def data() -> api.PreparedData:
    config, _ = resolve("off")
    return api.prepare_data(config.data)


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory, data: api.PreparedData) -> TrajectoryStore:
    config, host = resolve("off")
    return api.train_experts(config, host, data, tmp_path_factory.mktemp("alone"))


def assert_same_experts(store: TrajectoryStore, alone: TrajectoryStore, test_images: int) -> None:
    """Equal up to float rounding: trajectories, per-epoch means and tests (to one test image)."""
    assert store.key == alone.key  # packing is not part of what determines a trajectory
    for index in range(3):
        assert torch.allclose(store.load(index), alone.load(index), rtol=0, atol=1e-5)
        mine, theirs = store.manifest.experts[index], alone.manifest.experts[index]
        for a, b in zip(mine["test_acc"], theirs["test_acc"], strict=True):
            assert abs(a - b) <= 1 / test_images + 1e-12
        for row, other in zip(mine["history"], theirs["history"], strict=True):
            assert set(row) == set(other) and row["epoch"] == other["epoch"]
            for key in ("loss", "ce", "train_acc"):
                assert row[key] == pytest.approx(other[key], abs=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_packed_experts_train_as_they_would_alone(
    tmp_path: Path, data, alone: TrajectoryStore, device: str, exact_kernels
) -> None:
    if device != "cpu":  # the module's store was trained on the CPU
        alone = api.train_experts(*resolve("off", device=device), data, tmp_path / "alone")
    config, host = resolve("on", device=device)
    recorder = Recorder()
    store = api.train_experts(config, host, data, tmp_path / "packed", recorder)
    assert recorder.notes == [] and recorder.epochs == 9
    assert [e.get("packed_with") for e in store.manifest.experts] == [3, 3, 3]
    assert "packed_with" not in alone.manifest.experts[0]
    assert_same_experts(store, alone, len(data.test[1]))


def test_packed_experts_take_the_same_first_batches_when_epochs_are_capped(
    tmp_path: Path, data, alone: TrajectoryStore
) -> None:
    capped = {"experts.max_steps_per_epoch": 2}  # of 11 batches of 128
    capped_alone = api.train_experts(*resolve("off", **capped), data, tmp_path / "alone")
    assert not torch.allclose(capped_alone.load(0), alone.load(0))
    packed = api.train_experts(*resolve("on", **capped), data, tmp_path / "packed")
    assert [e.get("packed_with") for e in packed.manifest.experts] == [3, 3, 3]
    assert_same_experts(packed, capped_alone, len(data.test[1]))


def test_groups_follow_pack_size_and_a_group_of_one_trains_alone(tmp_path: Path, data, alone) -> None:
    config, host = resolve("on", **{"experts.pack_size": 2})
    store = api.train_experts(config, host, data, tmp_path / "pairs")
    assert [e.get("packed_with") for e in store.manifest.experts] == [2, 2, None]
    assert torch.equal(store.load(2), alone.load(2))  # the one left over trained the plain way
    assert_same_experts(store, alone, len(data.test[1]))


def test_an_interrupted_group_resumes_expert_by_expert(tmp_path: Path, data, alone) -> None:
    config, host = resolve("on")
    with pytest.raises(Interrupted):  # after expert 0's second epoch: 0 at 2, 1 and 2 at 1
        api.train_experts(config, host, data, tmp_path / "cut", Recorder(stop_after=4))
    epochs = [
        json.loads((tmp_path / "cut" / f"expert_{i:03d}.partial.json").read_text())["epoch"] for i in range(3)
    ]
    assert epochs == [2, 1, 1]
    recorder = Recorder()
    store = api.train_experts(config, host, data, tmp_path / "cut", recorder)
    assert recorder.notes == [f"resuming expert {i} after epoch {e}" for i, e in enumerate(epochs)]
    assert recorder.epochs == 9 - sum(epochs)
    assert [e.get("packed_with") for e in store.manifest.experts] == [None] * 3
    assert_same_experts(store, alone, len(data.test[1]))
    assert not list((tmp_path / "cut").glob("*.partial.*"))


def test_plugins_that_shape_expert_training_keep_experts_one_at_a_time(tmp_path: Path, data) -> None:
    settings = {**SETTINGS, "experts.parallel": "on", "experts.count": 2, "experts.epochs": 2}
    config, host = distillkit.resolve_config(preset="digits", overrides=settings, plugins=["smooth"])
    recorder = Recorder()
    store = api.train_experts(config, host, data, tmp_path / "smooth", recorder)
    assert recorder.notes == [
        "experts train one at a time: plugin(s) smooth shape each expert's loss or step, "
        "which needs one model at a time"
    ]
    assert [e.get("packed_with") for e in store.manifest.experts] == [None, None]


def test_a_model_that_cannot_be_packed_trains_one_at_a_time(tmp_path: Path, data) -> None:
    overrides = {"model.name": "convnet-w8-d1-bn", "experts.count": 2, "experts.epochs": 2}
    packed_config, host = resolve("on", **overrides)
    recorder = Recorder()
    store = api.train_experts(packed_config, host, data, tmp_path / "on", recorder)
    assert recorder.notes == [
        "experts train one at a time: convnet-w8-d1-bn cannot be packed "
        "(it has buffers (norm1.running_mean; e.g. batch-norm running statistics))"
    ]
    config, host = resolve("off", **overrides)
    reference = api.train_experts(config, host, data, tmp_path / "off")
    assert all(torch.equal(store.load(i), reference.load(i)) for i in range(2))


def test_when_packing_is_asked_for_and_refused() -> None:
    auto = ExpertsConfig()
    assert auto.parallel == "auto" and auto.pack_size == 8
    assert packs_experts(auto, torch.device("cuda")) and not packs_experts(auto, torch.device("cpu"))
    assert packs_experts(dataclasses.replace(auto, parallel="on"), torch.device("cpu"))
    assert not packs_experts(dataclasses.replace(auto, parallel="off"), torch.device("cuda"))
    assert packing_refusal(auto, []) is None
    assert "SGD only" in str(packing_refusal(dataclasses.replace(auto, optimizer="adam"), []))
    with pytest.raises(ConfigError, match=r"experts\.pack_size must be > 0"):
        resolve("on", **{"experts.pack_size": 0})


def test_a_group_out_of_device_memory_resumes_one_at_a_time(
    tmp_path: Path, data, alone: TrajectoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device running out of memory is simulated (this test runs on CPU): the packed trainer
    raises ``torch.OutOfMemoryError`` once expert 0 has finished its second epoch."""
    real = pipeline.train_packed_experts

    def runs_out_of_memory(members, *args, **kwargs):
        def on_epoch(epoch: int, row: dict, forward=members[0].on_epoch) -> None:
            forward(epoch, row)
            if epoch == 1:
                raise torch.OutOfMemoryError("simulated")

        members[0].on_epoch = on_epoch
        return real(members, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train_packed_experts", runs_out_of_memory)
    config, host = resolve("on")
    recorder = Recorder()
    store = api.train_experts(config, host, data, tmp_path / "oom", recorder)
    assert recorder.notes == [
        "experts train one at a time: a packed group of 3 ran out of cpu memory "
        "(a lower experts.pack_size packs fewer)",
        "resuming expert 0 after epoch 2",
        "resuming expert 1 after epoch 1",
        "resuming expert 2 after epoch 1",
    ]
    assert [e.get("packed_with") for e in store.manifest.experts] == [None] * 3
    assert_same_experts(store, alone, len(data.test[1]))
    assert not list((tmp_path / "oom").glob("*.partial.*"))
