"""The World API with two real gloo processes on CPU, and the single-process world."""

from __future__ import annotations

import pytest
import torch
from ranks import run_ranks

from distillkit.distributed import World, join_world
from distillkit.errors import RunFailed, StoreError


def test_single_process_world_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = join_world()
    assert world == World() and world.is_main and world.size == 1
    t = torch.tensor([1.5, 2.5])
    world.all_reduce_mean_([t])
    world.barrier()
    assert t.tolist() == [1.5, 2.5]
    assert world.all_reduce_max(3.0) == 3.0
    assert world.all_gather_object({"a": 1}) == [{"a": 1}]
    assert world.broadcast_object([1, 2]) == [1, 2]
    assert world.shard(list(range(5))) == [0, 1, 2, 3, 4]
    assert world.device(torch.device("cpu")) == torch.device("cpu")


def _collectives() -> dict:
    """Every collective once, an error decided on rank 0, then rank 1 skips the last barrier."""
    world = join_world(timeout_s=5)
    r = world.rank
    a = torch.full((2, 3), float(r + 1))
    b = torch.tensor([10.0 * r], dtype=torch.float64)
    world.all_reduce_mean_([a, b])
    world.barrier()
    gathered = world.all_gather_object({"rank": r, "t": torch.arange(r + 2), "nested": [(r, "x")]})
    told = world.broadcast_object({"from": r, "t": torch.ones(2) * r}, src=1)

    def decide() -> int:
        raise StoreError("store /x is broken", hint="retrain it")

    try:
        world.main_decides(decide)
        decided = "no error"
    except StoreError as exc:
        decided = f"{exc}|{exc.hint}"
    answer = {
        "rank": r,
        "size": world.size,
        "a": a.tolist(),
        "b": b.tolist(),
        "max": world.all_reduce_max(float(r) - 7),
        "gathered": [(g["rank"], g["t"].tolist(), g["nested"]) for g in gathered],
        "told": (told["from"], told["t"].tolist()),
        "shard": world.shard(list(range(5))),
        "decided": decided,
    }
    if r == 0:
        try:
            world.barrier()  # rank 1 never comes
            answer["lonely"] = "passed"
        except RunFailed as exc:
            answer["lonely"] = str(exc)
    return answer


def test_collectives_over_two_gloo_ranks():
    answers = run_ranks(_collectives)
    assert [status for status, _ in answers] == ["ok", "ok"], answers
    (_, zero), (_, one) = answers
    for rank, got in enumerate((zero, one)):
        assert got["rank"] == rank and got["size"] == 2
        assert got["a"] == [[1.5] * 3] * 2 and got["b"] == [5.0]
        assert got["max"] == -6.0
        assert got["gathered"] == [(0, [0, 1], [[0, "x"]]), (1, [0, 1, 2], [[1, "x"]])]
        assert got["told"] == (1, [1.0, 1.0])
        assert got["decided"] == "store /x is broken|retrain it"  # the same error on every rank
    assert zero["shard"] == [0, 2, 4] and one["shard"] == [1, 3]
    # A rank that never arrives: the others fail after the timeout, one line naming their rank.
    assert zero["lonely"].startswith("rank 0: barrier across 2 ranks failed"), zero["lonely"]
    assert "\n" not in zero["lonely"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_follows_local_rank_on_cuda():
    world = World(rank=1, size=2, local_rank=1)
    assert world.device(torch.device("cuda")) == torch.device("cuda", 1 % torch.cuda.device_count())
    assert world.device(torch.device("cuda:0")) == torch.device("cuda:0")
