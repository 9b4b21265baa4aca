"""Expert training through the API: stores of only the needed epochs, and per-epoch resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import distillkit
from distillkit import api
from distillkit.errors import StoreError

#: Experts that train in about a second on a busy CPU (small net, no augmentation or evaluation).
TINY = {
    "device": "cpu",
    "model.name": "convnet-w8-d1",
    "data.augment": "none",
    "experts.count": 1,
    "experts.epochs": 4,
    "experts.batch_size": 256,
    "experts.evaluate_each_epoch": False,
    "distill.max_start_epoch": 1,
    "distill.expert_epochs": 2,
}


def resolve(**overrides: object):
    return distillkit.resolve_config(preset="digits", overrides={**TINY, **overrides})


@pytest.fixture(scope="module")
def data() -> api.PreparedData:
    config, _ = resolve()
    return api.prepare_data(config)


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
    (slice_,) = api.load_expert_slices(store, config)
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


def test_store_lacking_needed_epochs_is_a_clear_error(tmp_path: Path, data: api.PreparedData) -> None:
    config, host = resolve(**{"experts.store_epochs": "needed"})
    store = api.train_experts(config, host, data, tmp_path / "s")
    longer, _ = resolve(**{"distill.max_start_epoch": 2})
    with pytest.raises(StoreError, match=r"stores epochs 0\.\.2, 4, but distillation needs 0\.\.3") as info:
        api.load_expert_slices(store, longer)
    assert "store_epochs=all" in info.value.hint
    # Training for the longer distillation has another key, so it cannot reuse this store.
    config_longer, host_longer = resolve(**{"experts.store_epochs": "needed", "distill.max_start_epoch": 2})
    with pytest.raises(StoreError, match=r"stored_epochs is .* there but missing now"):
        api.train_experts(config_longer, host_longer, data, tmp_path / "s")
