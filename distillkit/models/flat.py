"""The flat-parameter convention of trajectories: ``named_parameters()`` order, one vector.

Experts store their snapshots in it and the student unrolls in it, so both sides
import it from here (the expert stage does not depend on the distillation engine).
"""

from __future__ import annotations

import torch
from torch import nn

from distillkit.context import ParamSlot


def param_layout(model: nn.Module) -> tuple[ParamSlot, ...]:
    """Slots of ``model.named_parameters()`` in flattening order (the MTT order)."""
    slots, offset = [], 0
    for name, p in model.named_parameters():
        slots.append(ParamSlot(name, tuple(p.shape), offset, p.numel()))
        offset += p.numel()
    return tuple(slots)


def flatten_params(model: nn.Module) -> torch.Tensor:
    """A detached *copy* of the model's parameters as one flat vector."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def load_flat(model: nn.Module, theta: torch.Tensor) -> None:
    """Copy a flat vector into the model's parameters (in place)."""
    with torch.no_grad():
        offset = 0
        for p in model.parameters():
            n = p.numel()
            p.copy_(theta[offset : offset + n].view_as(p))
            offset += n
