"""Experts over two real gloo ranks: the same store as one process, reruns train only what is missing."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY_EXPERTS
from ranks import run_ranks

#: Three tiny experts (about a second each), so two ranks split them unevenly.
SETTINGS = {**TINY_EXPERTS, "experts.count": 3, "experts.batch_size": 256, "experts.eval_every": 2}
TIMING = ("seconds",)


def _train(store: str, count: int) -> list[int]:
    """Train ``count`` experts into ``store`` as this rank of the job; the store's finished experts."""
    import distillkit
    from distillkit import api
    from distillkit.distributed import join_world, leave_world

    world = join_world(timeout_s=30)
    config, host = distillkit.resolve_config(preset="digits", overrides={**SETTINGS, "experts.count": count})
    data = api.prepare_data(config.data)
    finished = api.train_experts(config, host, data, Path(store), world=world).finished()
    leave_world(world)
    return finished


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.suffix == ".safetensors"}


def _manifest(root: Path) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["experts"]:
        for field in TIMING:
            entry.pop(field)
    return manifest


def test_two_ranks_write_the_store_one_process_writes(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_ranks(_train, str(one), 3, size=1) == [("ok", [0, 1, 2])]
    assert run_ranks(_train, str(two), 3) == [("ok", [0, 1, 2])] * 2
    assert _files(one) == _files(two) and len(_files(one)) == 3
    assert _manifest(one) == _manifest(two)
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
