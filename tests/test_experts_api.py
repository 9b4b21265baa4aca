"""Expert training through the API: stores of only the needed epochs, and per-epoch resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from conftest import TINY_EXPERTS

import distillkit
from distillkit import api
from distillkit.config import ExpertsConfig, last_needed_epoch
from distillkit.errors import StoreError
from distillkit.experts.store import TrajectoryStore
from distillkit.experts.train import epoch_batches, steps_per_epoch
from distillkit.hookspecs import hookimpl

#: The shared tiny experts with one test pass, after the last epoch.
TINY = {**TINY_EXPERTS, "experts.batch_size": 256, "experts.eval_every": 0}


def resolve(**overrides: object):
    return distillkit.resolve_config(preset="digits", overrides={**TINY, **overrides})


@pytest.fixture(scope="module")
def data() -> api.PreparedData:
    config, _ = resolve()
    return api.prepare_data(config.data)


def test_needed_epochs_store_what_distillation_and_init_read(tmp_path: Path, data: api.PreparedData) -> None:
    config, host = resolve(**{"experts.store_epochs": "needed"})
    store = api.train_experts(config, host, data, tmp_path / "needed")
    assert store.key["stored_epochs"] == [0, 1, 2, 4]  # (1 - 1) + 2 = 2, and the final epoch
    assert store.num_epochs(0) == 4 and store.stored_epochs(0) == [0, 1, 2, 4]
    config_all, host_all = resolve()
    full = api.train_experts(config_all, host_all, data, tmp_path / "all")
    assert "stored_epochs" not in full.key and full.stored_epochs(0) == list(range(5))
    # Same seed, same training: the kept rows are exactly the full trajectory's rows.
    assert torch.equal(store.load(0), full.load(0, [0, 1, 2, 4]))
    (slice_,) = api.load_expert_slices(store, last_needed_epoch(config.distill))
    assert torch.equal(slice_, full.load(0, range(3)))
    size = (tmp_path / "needed" / "expert_000.safetensors").stat().st_size
    assert 0.75 < size / (tmp_path / "all" / "expert_000.safetensors").stat().st_size < 0.85  # 4 of 5 rows


def test_key_follows_the_stored_epochs(data: api.PreparedData) -> None:
    def key(**overrides: object) -> dict:
        config, host = resolve(**overrides)
        return api.expert_key(config, data, host)

    assert key(**{"distill.max_start_epoch": 2}) == key()  # all epochs: distill settings do not matter
    needed = key(**{"experts.store_epochs": "needed"})
    assert needed != key()
    assert needed != key(**{"experts.store_epochs": "needed", "distill.max_start_epoch": 2})
    # When "needed" is every epoch, the store is the same as an all-epochs one.
    assert key(**{"experts.store_epochs": "needed", "distill.max_start_epoch": 3}) == key()
    assert api.default_store_dir(needed) != api.default_store_dir(key())


def test_max_steps_per_epoch_trains_the_first_batches_and_is_keyed_only_when_set(
    tmp_path: Path, data: api.PreparedData
) -> None:
    cfg = ExpertsConfig(batch_size=4, max_steps_per_epoch=2)
    assert [b.tolist() for b in epoch_batches(torch.arange(10), cfg)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert steps_per_epoch(10, cfg) == 2
    assert steps_per_epoch(10, replace(cfg, max_steps_per_epoch=0)) == 3
    assert steps_per_epoch(10, replace(cfg, max_steps_per_epoch=9)) == 3
    whole = api.train_experts(*resolve(), data, tmp_path / "whole")
    assert "max_steps_per_epoch" not in whole.key["experts"]  # stores of whole epochs keep their keys
    more = api.train_experts(*resolve(**{"experts.max_steps_per_epoch": 100}), data, tmp_path / "more")
    assert torch.equal(more.load(0), whole.load(0))  # a cap above an epoch's 6 steps changes nothing
    short = api.train_experts(*resolve(**{"experts.max_steps_per_epoch": 2}), data, tmp_path / "short")
    assert short.key["experts"]["max_steps_per_epoch"] == 2
    assert torch.equal(short.load(0)[0], whole.load(0)[0]) and not torch.allclose(
        short.load(0), whole.load(0)
    )


def test_store_lacking_needed_epochs_is_a_clear_error(tmp_path: Path, data: api.PreparedData) -> None:
    config, host = resolve(**{"experts.store_epochs": "needed"})
    store = api.train_experts(config, host, data, tmp_path / "s")
    longer, _ = resolve(**{"distill.max_start_epoch": 2})
    with pytest.raises(StoreError, match=r"stores epochs 0\.\.2, 4, but distillation needs 0\.\.3") as info:
        api.load_expert_slices(store, last_needed_epoch(longer.distill))
    assert "store_epochs=all" in info.value.hint
    # Training for the longer distillation has another key, so it cannot reuse this store.
    config_longer, host_longer = resolve(**{"experts.store_epochs": "needed", "distill.max_start_epoch": 2})
    with pytest.raises(StoreError, match=r"stored_epochs is .* there but missing now"):
        api.train_experts(config_longer, host_longer, data, tmp_path / "s")


# -- per-epoch resume ------------------------------------------------------------------------

#: Every piece of state matters here: momentum buffers, a decayed lr, augmentation drawing from
#: run.generator, and per-epoch test accuracies.
RESUME = {
    "experts.epochs": 3,
    "experts.momentum": 0.9,
    "experts.lr_decay": "half",  # from epoch 3 // 2 = 1
    "experts.eval_every": 1,
    "data.augment": "color_crop_cutout_scale_rotate",
}


class Interrupted(Exception):
    """Stands in for Ctrl-C or a crash between two epochs."""


class Recorder(api.Reporter):
    """Keeps the notes; raises from the per-epoch progress call after ``stop_after`` epochs."""

    def __init__(self, stop_after: int = 0) -> None:
        self.stop_after, self.epochs, self.notes = stop_after, 0, []

    def advance(self, n: int = 1, **info: object) -> None:
        if "expert" in info:
            self.epochs += 1
            if self.epochs == self.stop_after:
                raise Interrupted

    def note(self, message: str) -> None:
        self.notes.append(message)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_interrupted_expert_resumes_bit_identically(
    tmp_path: Path, data: api.PreparedData, optimizer: str
) -> None:
    config, host = resolve(**RESUME, **{"experts.optimizer": optimizer})
    whole = api.train_experts(config, host, data, tmp_path / "whole")
    with pytest.raises(Interrupted):
        api.train_experts(config, host, data, tmp_path / "cut", Recorder(stop_after=2))
    partial = tmp_path / "cut" / "expert_000.partial.json"
    assert json.loads(partial.read_text())["epoch"] == 2
    assert TrajectoryStore.open(tmp_path / "cut").finished() == []
    recorder = Recorder()
    resumed = api.train_experts(config, host, data, tmp_path / "cut", recorder)
    assert recorder.notes == ["resuming expert 0 after epoch 2"] and recorder.epochs == 1
    assert torch.equal(resumed.load(0), whole.load(0))
    assert resumed.manifest.experts[0]["test_acc"] == whole.manifest.experts[0]["test_acc"]
    leftovers = sorted(p.name for p in (tmp_path / "cut").iterdir())
    assert leftovers == [".lock", "expert_000.safetensors", "manifest.json"]  # no partial files


def test_corrupt_partial_checkpoint_starts_the_expert_over(tmp_path: Path, data: api.PreparedData) -> None:
    config, host = resolve(**RESUME)
    with pytest.raises(Interrupted):
        api.train_experts(config, host, data, tmp_path / "cut", Recorder(stop_after=2))
    path = tmp_path / "cut" / "expert_000.partial.safetensors"
    corrupt = bytearray(path.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0x01
    path.write_bytes(bytes(corrupt))
    recorder = Recorder()
    store = api.train_experts(config, host, data, tmp_path / "cut", recorder)
    assert recorder.notes == [
        f"{path}: checksum mismatch (partial checkpoint corrupt or truncated). Starting expert 0 over."
    ]
    assert recorder.epochs == 3
    whole = api.train_experts(config, host, data, tmp_path / "whole")
    assert torch.equal(store.load(0), whole.load(0))


def test_the_store_keeps_each_epochs_training_means_and_plugin_terms(tmp_path: Path, data) -> None:
    config, host = distillkit.resolve_config(
        preset="digits",
        overrides={**TINY, "experts.epochs": 3, "experts.eval_every": 1},
        plugins=["smooth"],
    )
    store = api.train_experts(config, host, data, tmp_path / "s")
    history = store.manifest.experts[0]["history"]
    assert [row["epoch"] for row in history] == [0, 1, 2]
    for row, acc in zip(history, store.manifest.experts[0]["test_acc"], strict=True):
        assert {"loss", "ce", "loss/clip", "loss/gp", "test_acc"} <= set(row) and row["test_acc"] == acc
        assert row["loss"] == pytest.approx(row["loss/clip"] * row["ce"] + row["loss/gp"], rel=1e-4)
    assert history[0]["loss/clip"] == pytest.approx(0.5) and history[2]["loss/clip"] == pytest.approx(0.6)


class LogsStepIndex:
    """An expert_loss plugin that adds nothing and logs the step index (a tensor) and epoch (a float)."""

    name: ClassVar[str] = "logs-step"

    @hookimpl
    def expert_loss(self, run, ctx):
        run.log("logs-step/step", torch.tensor(float(ctx.step)))
        run.log("logs-step/epoch", float(ctx.epoch))


def test_values_logged_from_expert_loss_are_the_epochs_means_in_the_history(tmp_path: Path, data) -> None:
    config, host = distillkit.resolve_config(
        preset="digits", overrides={**TINY, "experts.epochs": 2}, extra_plugins=[LogsStepIndex()]
    )
    store = api.train_experts(config, host, data, tmp_path / "s")
    steps = -(-len(data.train_images) // config.experts.batch_size)
    for epoch, row in enumerate(store.manifest.experts[0]["history"]):
        assert row["logs-step/step"] == pytest.approx((steps - 1) / 2)
        assert row["logs-step/epoch"] == epoch
