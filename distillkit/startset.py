"""The set distillation starts from: ``init_synthetic``'s images and ``init_labels``' soft labels.

Both hooks are asked here, once per run (``init_labels`` again on a resume, for the labels'
learning rate and momentum), and their answers checked (:mod:`distillkit.hookcalls`).
"""

from __future__ import annotations

from typing import Any

import torch

from distillkit.context import LabelInitContext, RunContext, SoftLabels
from distillkit.engine.loop import Distiller
from distillkit.engine.student import FlatStudent
from distillkit.errors import DataError
from distillkit.experts.store import TrajectoryStore
from distillkit.hookcalls import call_each, first_init, first_labels
from distillkit.models.flat import load_flat
from distillkit.runtime import PreparedData, RunScope, model_factory


def check_ipc(ipc: int, data: PreparedData) -> None:
    """ipc must not exceed the smallest class (checked before any expert is trained)."""
    counts = torch.bincount(data.dataset.train_labels, minlength=data.dataset.num_classes)
    smallest = int(counts.min())
    if ipc > smallest:
        raise DataError(
            f"ipc={ipc} is larger than the smallest class ({smallest} images)",
            hint=f"use --ipc {smallest} or less",
        )


def initial_set(
    ipc: int, scope: RunScope, data: PreparedData, store: TrajectoryStore, run: RunContext
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Ask ``init_synthetic`` (first non-None answer; the core default is last) for the start set."""
    first = store.finished()[0]
    make = model_factory(data)
    check_ipc(ipc, data)
    ctx = data.init_context(
        ipc,
        expert_params=lambda e: store.load(first, [e if e >= 0 else store.num_epochs(first)])[0],
        expert_epochs_available=store.num_epochs(first),
        make_model=lambda: make(scope.model, scope.seed_for("init-model")),
        load_flat=load_flat,
    )
    count = ipc * data.dataset.num_classes
    init = first_init(
        call_each(scope.host.hook, "init_synthetic", run=run, ctx=ctx),
        count,
        data.dataset.image_shape,
        data.dataset.num_classes,
    )
    return init.images, init.labels, init.source


def label_context(
    images: torch.Tensor,
    labels: torch.Tensor,
    data: PreparedData,
    store: TrajectoryStore,
    student: FlatStudent,
) -> LabelInitContext:
    """The ``init_labels`` context: the start set on the student's device, every finished expert."""
    device = images.device
    finished = store.finished()
    held = tuple(store.num_epochs(i) for i in finished)

    def expert_params(expert: int, epoch: int) -> torch.Tensor:
        index = finished[expert]
        return store.load(index, [held[expert] if epoch < 0 else epoch], device=device)[0]

    @torch.no_grad()
    def predict(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([student(theta, chunk) for chunk in x.split(256)])

    return LabelInitContext(
        images=images.detach(),
        labels=labels,
        num_classes=data.dataset.num_classes,
        experts=len(finished),
        epochs_held=held,
        expert_params=expert_params,
        predict=predict,
    )


def initial_labels(
    images: torch.Tensor,
    labels: torch.Tensor,
    scope: RunScope,
    data: PreparedData,
    store: TrajectoryStore,
    student: FlatStudent,
    run: RunContext,
) -> SoftLabels | None:
    """Ask ``init_labels`` (exclusive, no core default) for soft labels; None keeps the hard ones."""
    device = scope.device
    ctx = label_context(images.to(device), labels.to(device), data, store, student)
    answer = first_labels(
        call_each(scope.host.hook, "init_labels", run=run, ctx=ctx), len(labels), data.dataset.num_classes
    )
    return None if answer is None else answer[1]


def label_parts(distiller: Distiller) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    """The soft-label logits and their description for ``synthetic.json`` (both None for hard labels)."""
    soft = distiller.soft
    if soft is None or distiller.soft_labels is None:
        return None, None
    meta = {"kind": "soft", "source": soft.source, "learned": soft.lr > 0}
    return distiller.soft_labels.detach().cpu(), meta
