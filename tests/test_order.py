"""Plugin order does not matter: the five AST plugins in two orders give bit-identical runs."""

from __future__ import annotations

import torch
from conftest import TINY

from distillkit import api
from distillkit.resolve import resolve_config

FIVE = ["smooth", "kmeans-init", "bil", "itm", "wp"]


def _tiny_run(order: list[str], store_dir) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    overrides = dict(item.split("=", 1) for item in TINY[1::2]) | {"experts.epochs": "3"}
    config, host = resolve_config("digits", None, overrides, order)
    data = api.prepare_data(config.data)
    store = api.train_experts(config, host, data, store_dir)
    trajectory = store.load(0, list(range(store.num_epochs(0) + 1)))
    result = api.distill(api.distill_job(config, host, data, store))
    return trajectory, result.images, result.labels, result.lr


def test_five_plugins_in_two_orders_give_identical_bytes(tmp_path):
    forward = _tiny_run(FIVE, tmp_path / "a")
    backward = _tiny_run(list(reversed(FIVE)), tmp_path / "b")
    for a, b in zip(forward[:3], backward[:3], strict=True):
        assert torch.equal(a, b)
    assert forward[3] == backward[3]
