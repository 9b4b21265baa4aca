"""What the engine needs from the job's ranks: a mean over ranks and a gather, injected.

The engine never imports ``torch.distributed``: the distillation stage hands the
:class:`~distillkit.engine.loop.Distiller` the run's ``World`` (``RunScope.world``),
which has these methods. :data:`SOLO` is the single-process reducer: every
operation is the identity, so a Distiller built without one runs exactly the
single-process loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

import torch


class Reducer(Protocol):
    """The collectives of one outer iteration (a subset of ``distillkit.distributed.World``)."""

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    def all_reduce_mean_(self, tensors: Sequence[torch.Tensor]) -> None: ...

    def all_gather_object(self, obj: Any) -> list[Any]: ...


class _Solo:
    """One process: the mean of one value is that value; a gather is a list of one."""

    rank = 0
    size = 1

    def all_reduce_mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        return None

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]


SOLO: Reducer = _Solo()


def fingerprint(tensors: Sequence[torch.Tensor | None], *numbers: float) -> str:
    """sha256 of the exact bytes of ``tensors`` and the reprs of ``numbers`` (None counts as absent)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none")
            continue
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(data.view(torch.uint8).numpy().tobytes())
    digest.update(repr(numbers).encode())
    return digest.hexdigest()
