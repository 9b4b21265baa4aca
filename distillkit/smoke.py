"""``--smoke``: any setting shrunk to a run of seconds, as one more config layer.

A smoke run keeps what a setting is about (dataset, image shape, class count, model,
plugins and every method choice, the preset's M) and shrinks only the budget, so a
paper preset can be checked end to end on a laptop before it is launched on a GPU.
The layer sits just below the command line (:mod:`distillkit.resolve`), so
``--smoke --set distill.iterations=5`` still runs 5 iterations. Torch-free.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from distillkit.config import RunConfig, last_needed_epoch

#: How the per-key sources name the layer.
SMOKE_LABEL = "smoke"
#: At most this many synthetic images per class, and per student step.
MAX_IPC = 1
MAX_BATCH_SYN = 20
#: At most this many real images per expert step: on the few images a smoke run is usually given,
#: a paper's batch of 256 makes an epoch one step, and an expert that barely moves makes the
#: normalised matching loss (divided by its movement) explode.
MAX_EXPERT_BATCH = 4
#: At most this many expert steps per epoch: on a full dataset (CIFAR's 50 000 images) batches of 4
#: would make every epoch thousands of steps.
MAX_EXPERT_STEPS = 10


def smoke_values(config: RunConfig) -> dict[str, Any]:
    """The keys ``--smoke`` sets, given the config of the layers below it.

    One expert trained just long enough for start epoch 0 and the setting's M
    (T⁺ = 1) in at most 10 batches of at most 4 per epoch, tested only after its last epoch;
    2 iterations of 2 student steps; ipc and batch_syn capped; one network × 1 epoch, no
    cross-architecture models.
    """
    distill = config.distill
    return {
        "experts.count": 1,
        "experts.epochs": last_needed_epoch(replace(distill, max_start_epoch=1)),
        "experts.eval_every": 0,
        "experts.batch_size": min(config.experts.batch_size, MAX_EXPERT_BATCH),
        "experts.max_steps_per_epoch": min(
            config.experts.max_steps_per_epoch or MAX_EXPERT_STEPS, MAX_EXPERT_STEPS
        ),
        "distill.max_start_epoch": 1,
        "distill.iterations": 2,
        "distill.syn_steps": 2,
        "distill.ipc": min(distill.ipc, MAX_IPC),
        "distill.batch_syn": min(distill.batch_syn or MAX_BATCH_SYN, MAX_BATCH_SYN),
        "evaluate.runs": 1,
        "evaluate.epochs": 1,
        "evaluate.models": (),
    }


__all__ = ["MAX_BATCH_SYN", "MAX_EXPERT_BATCH", "MAX_EXPERT_STEPS", "MAX_IPC", "SMOKE_LABEL", "smoke_values"]
