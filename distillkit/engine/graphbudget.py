"""How many unrolled steps' graphs fit in a memory budget (``distill.graph_memory_mb``).

Constant memory keeps the graph of the last K inner steps and recomputes the others
(:mod:`distillkit.engine.backprop`); each kept step saves a recomputation. The right K
depends on the model, the batch and the device's memory, so a user can name the memory
instead: one step is unrolled once, before the first iteration, and the tensors autograd
saves for its forward and its create-graph backward are counted. K is the budget divided
by that size, at most N.

The count is a function of shapes alone: the probe draws its augmentation from a fixed
seed (the run's generator is restored afterwards), so a resumed run finds the same K. It
counts what a kept step holds, not the process's peak, which adds one step's working
memory and the allocator's slack (measured: ≈ 70 MiB counted per step against ≈ 90 MiB of
RSS for ``fmnist-cpu`` at ipc 10).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.graph import saved_tensors_hooks

from distillkit.engine.backprop import UnrollSetup
from distillkit.engine.unroll import sgd_step

MIB = 2**20
#: The probe's augmentation seed: any fixed value, so every run with one setup counts the same bytes.
PROBE_SEED = 0


@dataclass(frozen=True)
class GraphFit:
    """K, the step graphs kept, and what decided it."""

    graph_steps: int
    step_bytes: int
    budget_bytes: int

    def describe(self, steps: int) -> str:
        return (
            f"constant memory keeps the graphs of {self.graph_steps} of {steps} inner steps "
            f"({self.step_bytes / MIB:.1f} MiB each, distill.graph_memory_mb "
            f"{self.budget_bytes / MIB:g})"
        )


def step_graph_bytes(setup: UnrollSetup, theta: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for one unrolled student step (its own storages only).

    The step runs on the first ``batch_syn`` images; the synthetic set, the labels, α and the
    starting parameters are not counted, since every mode holds them anyway.
    """
    held = {t.untyped_storage().data_ptr() for t in (setup.images, setup.labels, setup.alpha)}
    saved: dict[int, int] = {}

    def count(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in held:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch = torch.arange(setup.sampler.batch, device=setup.images.device)
    state = setup.generator.get_state()
    setup.generator.manual_seed(PROBE_SEED)
    try:
        start = theta.detach().clone().requires_grad_(True)
        held.add(start.untyped_storage().data_ptr())
        with saved_tensors_hooks(count, lambda tensor: tensor):
            x = setup.augment(setup.images[batch])
            sgd_step(
                setup.student,
                start,
                None,
                x,
                setup.labels[batch],
                setup.alpha,
                1.0,
                setup.momentum,
                create_graph=True,
            )
    finally:
        setup.generator.set_state(state)
    return sum(saved.values())


def fit_graph_steps(setup: UnrollSetup, theta: torch.Tensor, budget_mb: float) -> GraphFit:
    """The most step graphs (at most N) whose counted bytes fit in ``budget_mb`` MiB."""
    step_bytes = step_graph_bytes(setup, theta)
    budget = int(budget_mb * MIB)
    kept = setup.steps if step_bytes == 0 else min(setup.steps, budget // step_bytes)
    return GraphFit(kept, step_bytes, budget)
