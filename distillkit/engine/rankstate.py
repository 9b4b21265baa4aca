"""The rank-local part of an engine state, and states that hold every rank's part.

Over W ranks every rank holds the same set, α, optimiser momenta, learning rates and
guard window (all follow from the all-reduced gradients), but its own random stream
(``run.generator``: segments, DSA, plugin draws) and batch-sampler queue. A state
gathered for a checkpoint keeps rank 0's part where a single-process state has it and
rank r's under ``ranks/<r>/`` (tensors) and ``meta["ranks"][r]``, so a single-process
checkpoint is exactly what it always was and a checkpoint of any world size can be
resumed by any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from distillkit.engine.loop import EngineState

#: The keys of :meth:`Distiller.state` that belong to one rank.
LOCAL_TENSORS = ("rng", "sampler.queue")
LOCAL_META = ("sampler_sizes",)
PREFIX = "ranks/"


def as_object(state: EngineState) -> dict[str, Any]:
    """A state as a JSON value with tensors inside (what ``World`` collectives carry)."""
    return {"tensors": state.tensors, "meta": state.meta}


def from_object(obj: dict[str, Any]) -> EngineState:
    return EngineState(dict(obj["tensors"]), dict(obj["meta"]))


def local_part(state: EngineState) -> EngineState:
    """This rank's own stream (generator state, sampler queue), on the CPU to travel between ranks."""
    tensors = {k: v.cpu() for k, v in state.tensors.items() if k in LOCAL_TENSORS}
    return EngineState(tensors, {k: state.meta[k] for k in LOCAL_META})


def fresh_part(generator_state: torch.Tensor) -> EngineState:
    """A stream that starts now: this generator state and an empty sampler queue."""
    return EngineState({"rng": generator_state}, {"sampler_sizes": []})


def with_ranks(state: EngineState, parts: list[EngineState]) -> EngineState:
    """Rank 0's ``state`` plus the local parts of ranks 1 … W−1 (``parts[0]`` is rank 0's own)."""
    tensors, ranks = dict(state.tensors), {}
    for rank, part in enumerate(parts[1:], start=1):
        tensors |= {f"{PREFIX}{rank}/{k}": v for k, v in part.tensors.items()}
        ranks[str(rank)] = part.meta
    return EngineState(tensors, {**state.meta, "ranks": ranks} if ranks else dict(state.meta))


def saved_ranks(state: EngineState) -> int:
    """How many ranks' streams a state holds (1 for a single-process one)."""
    return 1 + len(state.meta.get("ranks", {}))


def for_rank(state: EngineState, rank: int, fresh: Callable[[], EngineState]) -> EngineState:
    """Rank ``rank``'s view of a gathered state: the shared part and its own stream.

    A rank the state has no stream for (the job grew) starts from ``fresh()``.
    """
    shared = {k: v for k, v in state.tensors.items() if not k.startswith(PREFIX)}
    meta = {k: v for k, v in state.meta.items() if k != "ranks"}
    if rank == 0:
        return EngineState(shared, meta)
    saved = state.meta.get("ranks", {}).get(str(rank))
    if saved is None:
        local = fresh()
    else:
        mine = f"{PREFIX}{rank}/"
        tensors = {k.removeprefix(mine): v for k, v in state.tensors.items() if k.startswith(mine)}
        local = EngineState(tensors, saved)
    shared = {k: v for k, v in shared.items() if k not in LOCAL_TENSORS}
    return EngineState(shared | local.tensors, meta | local.meta)
