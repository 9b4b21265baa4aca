"""Experts over two real gloo ranks: the store one process writes, reruns train only what is missing,
and a rank that fails stops the job with one line and leaves no half-written expert."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_EXPERTS
from ranks import run_ranks

import distillkit
from distillkit import api
from distillkit.experts.store import TrajectoryStore

#: Tiny experts (about a second each); a test pass every 2 epochs.
SETTINGS = {**TINY_EXPERTS, "experts.batch_size": 256, "experts.eval_every": 2}
#: Manifest fields that are wall times, so differ between any two runs.
TIMING = ("seconds",)


def _train(store: str, count: int, parallel: str = "auto") -> list[int]:
    """Train ``count`` experts into ``store`` as this process's rank; the store's finished experts."""
    from distillkit.distributed import join_world, leave_world

    world = join_world(timeout_s=60)
    overrides = {**SETTINGS, "experts.count": count, "experts.parallel": parallel}
    config, host = distillkit.resolve_config(preset="digits", overrides=overrides)
    finished = api.train_experts(
        config, host, api.prepare_data(config.data), Path(store), world=world
    ).finished()
    leave_world(world)
    return finished


@pytest.fixture(scope="module")
def data() -> api.PreparedData:
    config, _ = distillkit.resolve_config(preset="digits", overrides=SETTINGS)
    return api.prepare_data(config.data)


def _train_here(store: Path, count: int, data: api.PreparedData) -> TrajectoryStore:
    """One process, one thread (as each rank has), in this process."""
    config, host = distillkit.resolve_config(preset="digits", overrides={**SETTINGS, "experts.count": count})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return api.train_experts(config, host, data, store)
    finally:
        torch.set_num_threads(threads)


def _tensor_files(root: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in sorted(root.glob("expert_*.safetensors")) if ".partial" not in p.name
    }


def _manifest(root: Path) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["experts"]:
        for name in TIMING:
            entry.pop(name)
    return manifest


def _stamps(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in root.glob("expert_*.safetensors")}


def test_two_ranks_write_the_store_one_process_writes_and_reruns_train_only_what_is_missing(
    tmp_path: Path, data: api.PreparedData
) -> None:
    reference, store = tmp_path / "reference", tmp_path / "store"
    _train_here(reference, 3, data)
    assert run_ranks(_train, str(store), 3) == [("ok", [0, 1, 2])] * 2
    assert len(_tensor_files(store)) == 3 and _tensor_files(reference) == _tensor_files(store)
    assert _manifest(reference) == _manifest(store)
    assert sorted(p.name for p in reference.iterdir()) == sorted(
        p.name for p in store.iterdir()
    )  # no sidecar
    # Rerun in one process with one more expert: only expert 3 is trained.
    before = _stamps(store)
    assert _train_here(store, 4, data).finished() == [0, 1, 2, 3]
    assert {k: v for k, v in _stamps(store).items() if k in before} == before
    _train_here(reference, 4, data)
    assert _tensor_files(reference) == _tensor_files(store) and _manifest(reference) == _manifest(store)


def test_each_rank_packs_its_own_share(tmp_path: Path, data: api.PreparedData) -> None:
    reference, store = tmp_path / "reference", tmp_path / "store"
    _train_here(reference, 4, data)
    assert run_ranks(_train, str(store), 4, "on") == [("ok", [0, 1, 2, 3])] * 2
    packed = TrajectoryStore.open(store)
    assert [entry["packed_with"] for entry in packed.manifest.experts] == [2] * 4  # 0 and 2, 1 and 3
    one = TrajectoryStore.open(reference)
    assert all(torch.allclose(packed.load(i), one.load(i), rtol=0, atol=1e-5) for i in range(4))


def test_a_failing_rank_stops_the_job_in_one_line_without_half_written_experts(
    tmp_path: Path, data: api.PreparedData
) -> None:
    config, host = distillkit.resolve_config(preset="digits", overrides={**SETTINGS, "experts.count": 4})
    store = tmp_path / "store"
    TrajectoryStore.create_or_open(store, api.expert_key(config, data, host))
    blocker = store / "expert_003.partial.json"  # rank 1 trains experts 1 and 3: 3 cannot start
    blocker.mkdir()
    args = [f"--set={k}={v}" for k, v in {**SETTINGS, "experts.count": 4}.items()]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "DISTILLKIT_TIMEOUT_S": "20",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distillkit",
            "experts",
            *args,
            "--out",
            str(store),
            "--nproc",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2, lines
    assert lines[0].startswith("Error: rank 1: ") and "expert_003.partial.json" in lines[0], lines
    assert len(lines) <= 2 and "Traceback" not in done.stderr
    blocker.rmdir()
    assert not list(store.glob("*.tmp*")) and not (store / "expert_003.safetensors").exists()
    finished_files = set(_tensor_files(store))
    assert "expert_001.safetensors" in finished_files  # rank 1 finished expert 1 before failing
    before = _stamps(store)
    assert _train_here(store, 4, data).finished() == [0, 1, 2, 3]  # the sidecars are adopted
    assert {k: v for k, v in _stamps(store).items() if k in finished_files} == {
        k: before[k] for k in finished_files
    }
    assert not list(store.glob("*.entry.json")) and not list(store.glob("*.partial.*"))
