"""Distillation over two real gloo ranks on CPU: one set for all, own segments each, resumable at any size."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_EXPERTS
from ranks import run_ranks

import distillkit
from distillkit import api
from distillkit.checkpoint import load_latest_checkpoint
from distillkit.distilling import DistillJob, build_distiller, distill
from distillkit.distributed import World, join_world, leave_world
from distillkit.engine.loop import RankMismatch
from distillkit.engine.reduce import fingerprint
from distillkit.errors import CollectiveError
from distillkit.experts.store import TrajectoryStore

#: Two tiny experts, so the ranks' segments (expert, start epoch) can differ.
SETTINGS = {
    **TINY_EXPERTS,
    "experts.count": 2,
    "experts.eval_every": 0,
    "distill.max_start_epoch": 2,
    "distill.syn_steps": 4,
    "distill.lr_img": 1000,
    "distill.sync_check_every": 1,
}


def _job(store_dir: Path, world: World, **overrides: object) -> DistillJob:
    config, host = distillkit.resolve_config(preset="digits", overrides={**SETTINGS, **overrides})
    data = api.prepare_data(config.data)
    return api.distill_job(config, host, data, TrajectoryStore.open(store_dir), world)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store") / "experts"
    config, host = distillkit.resolve_config(preset="digits", overrides=SETTINGS)
    api.train_experts(config, host, api.prepare_data(config.data), root)
    return root


def _steps(store_dir: Path, iterations: int) -> dict:
    """Each iteration's segment and matching loss on this rank, and a checksum of the set and α after it."""
    world = join_world(timeout_s=30)
    distiller, _ = build_distiller(_job(store_dir, world))
    segments, prints = [], []
    for _ in range(iterations):
        result = distiller.step()
        segments.append((result.expert, result.start_epoch, result.match_loss))
        prints.append(fingerprint([distiller.images, distiller.alpha, distiller.opt_img.buffer]))
    leave_world(world)
    return {"segments": segments, "prints": prints}


def _answers(results: list) -> list:
    assert [status for status, _ in results] == ["ok"] * len(results), results
    return [answer for _, answer in results]


def test_every_rank_holds_the_same_set_after_every_iteration_and_matches_its_own_segments(store):
    zero, one = _answers(run_ranks(_steps, store, 6))
    assert zero["prints"] == one["prints"]
    assert len(set(zero["prints"])) == 6  # the set did change every iteration
    assert zero["segments"] != one["segments"]
    # Rank 0 draws exactly the single-process stream: same segments, same losses before any update.
    alone = _steps(store, 1)
    assert alone["segments"][0] == zero["segments"][0]


def _distill(store_dir: Path, out_dir: Path, iterations: int, resume: bool, world: World) -> dict:
    out_dir.mkdir(exist_ok=True)
    job = _job(store_dir, world, **{"distill.iterations": iterations, "distill.checkpoint_every": 2})
    result = distill(job, out_dir, resume=resume)
    return {
        "print": fingerprint([result.images, result.labels], result.lr),
        "segments": [(h.expert, h.start_epoch) for h in result.history],
    }


def _distill_runs(store_dir: Path, plans: list[tuple[Path, int, bool]]) -> list[dict]:
    """Several distillations one after the other in one job (starting processes is the slow part)."""
    world = join_world(timeout_s=30)
    answers = [_distill(store_dir, out, iterations, resume, world) for out, iterations, resume in plans]
    leave_world(world)
    return answers


def test_checkpoints_resume_at_two_ranks_bit_for_bit_and_at_another_world_size(store, tmp_path):
    whole, cut, one, single = (tmp_path / name for name in ("whole", "cut", "one", "single"))
    _distill(store, single, 4, False, World())  # a single-process checkpoint, for 2 ranks to resume
    plans = [(whole, 6, False), (cut, 4, False), (one, 4, False), (cut, 6, True), (single, 6, True)]
    reference, _, _, resumed, grown = _answers(run_ranks(_distill_runs, store, plans))[0]
    assert resumed == reference
    checkpoint, _ = load_latest_checkpoint(one)
    assert checkpoint.iteration == 4 and "ranks/1/rng" in checkpoint.current.tensors

    alone = _distill(store, one, 6, True, World())  # the 2-rank checkpoint, one process
    assert alone["segments"] == reference["segments"]  # rank 0's stream goes on where it was
    assert alone["print"] != reference["print"]  # now without rank 1's segments
    # One process's checkpoint at 2 ranks: rank 1 joins with a fresh stream, saved from then on.
    checkpoint, _ = load_latest_checkpoint(single)
    assert checkpoint.iteration == 6 and "ranks/1/rng" in checkpoint.current.tensors
    assert grown["segments"] == reference["segments"]


def _fail_on_rank_one(store_dir: Path) -> dict:
    """Two failures in one job: rank 1's set drifts (the sync check stops both), then rank 1 raises."""
    world = join_world(timeout_s=30)
    distiller, _ = build_distiller(_job(store_dir, world))
    distiller.step()
    if world.rank == 1:
        with torch.no_grad():
            distiller.images.add_(1e-3)
    try:
        distiller.step()
        mismatch = "no error"
    except RankMismatch as exc:
        mismatch = str(exc)
    if world.rank == 1:
        raise RuntimeError("rank 1 gives up")
    tick = time.monotonic()
    try:
        distiller.step()
    except CollectiveError as exc:
        return {"mismatch": mismatch, "error": str(exc), "seconds": time.monotonic() - tick}
    return {"mismatch": mismatch, "error": "no error"}


def test_a_drifting_rank_stops_both_and_a_rank_that_raises_stops_the_other_at_once(store):
    (status0, zero), (status1, one) = run_ranks(_fail_on_rank_one, store)
    assert status0 == "ok" and status1 == "error" and "rank 1 gives up" in one
    assert zero["mismatch"].startswith("after iteration 2 the synthetic set or α of rank(s) 1 differ")
    assert zero["error"].startswith("rank 0: all_reduce across 2 ranks failed")
    assert zero["seconds"] < 20  # the peer's exit is noticed at once, long before the 30 s timeout
