"""Closed-loop residual int8 coding of a trajectory (the ``int8`` store dtype).

A trajectory changes little from one epoch to the next, so storing each row as
the difference to the previous one needs far fewer bits than the row itself.
Row 0 is coded absolutely; every later row codes the residual to the
*reconstructed* previous row, so the quantisation error of one row is corrected
by the next residual instead of accumulating over epochs.

Each row keeps int8 codes ``q`` (one byte per parameter) and one float32 scale
per parameter tensor (slot): ``s = max|r| / 127`` over that slot's residual
``r`` (``s = 0`` for an unchanged slot), ``q = round(r / s)``. Reconstruction is
``row = previous + q * s`` in float32 on the CPU, the same function for writer
and reader, so a loaded row is bit-identical to what the writer reconstructed.

Error bound: every element of a reconstructed row is within ``s / 2`` of the
original (``s`` = its slot's scale in that row), plus float32 rounding of one
addition (half an ulp of the value). Since ``s`` follows the epoch-to-epoch
change, not the weight size, the bound stays small and does not grow with the
row index.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

CODES = "codes"
SCALES = "scales"
_LEVELS = 127


def _slot_ids(sizes: Sequence[int]) -> torch.Tensor:
    """Slot index of every parameter of a flat row."""
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(list(sizes), dtype=torch.long))


def _step(
    previous: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """One reconstructed row; writer and reader both call this, so their float32 results agree."""
    return previous + codes.to(torch.float32) * scales[ids]


def encode(trajectory: torch.Tensor, sizes: Sequence[int]) -> dict[str, torch.Tensor]:
    """Code a finite float32 CPU ``[rows, P]`` trajectory: int8 ``codes``, ``[rows, slots]`` ``scales``."""
    rows, width = trajectory.shape
    ids = _slot_ids(sizes)
    codes = torch.empty((rows, width), dtype=torch.int8)
    scales = torch.empty((rows, len(sizes)), dtype=torch.float32)
    previous = torch.zeros(width, dtype=torch.float32)
    for r in range(rows):
        residual = trajectory[r] - previous
        peak = torch.zeros(len(sizes), dtype=torch.float32).scatter_reduce(
            0, ids, residual.abs(), "amax", include_self=True
        )
        scale = peak / _LEVELS
        divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes[r] = torch.round(residual / divisor[ids]).clamp_(-_LEVELS, _LEVELS).to(torch.int8)
        scales[r] = scale
        previous = _step(previous, codes[r], scale, ids)
    return {CODES: codes, SCALES: scales}


def decode(codes: torch.Tensor, scales: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Rows ``0..len(codes) - 1`` as float32 ``[rows, P]`` (each row needs all rows before it)."""
    ids = _slot_ids(sizes)
    out = torch.empty(codes.shape, dtype=torch.float32)
    previous = torch.zeros(codes.shape[1], dtype=torch.float32)
    for r in range(codes.shape[0]):
        previous = _step(previous, codes[r], scales[r], ids)
        out[r] = previous
    return out
