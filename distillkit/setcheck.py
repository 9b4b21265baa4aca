"""Refusing a distilled set that cannot be evaluated, in one line, before any network is trained.

Used by ``distillkit evaluate`` (a set against the dataset named on the command line) and
``distillkit export`` (a set against its own recorded metadata).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from distillkit.artifacts import check_soft_labels
from distillkit.errors import StoreError
from distillkit.labels import is_soft
from distillkit.runtime import PreparedData


def check_synthetic_set(images: torch.Tensor, labels: torch.Tensor, lr: float, data: PreparedData) -> None:
    """Refuse a set that cannot be evaluated on ``data`` (shape, labels, finiteness, lr) in one line."""
    check_set_fits(
        images,
        labels,
        lr,
        data.dataset.name,
        data.dataset.image_shape,
        data.dataset.num_classes,
        hint="pass the dataset the set was distilled from (--dataset)",
    )


def check_set_fits(
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    dataset: str,
    image_shape: Sequence[int],
    num_classes: int,
    hint: str | None = None,
) -> None:
    """:func:`check_synthetic_set` against a shape and class count (e.g. a set's own metadata).

    ``labels`` are integer classes [N] or soft-label logits [N, classes].
    """
    shape, classes = tuple(image_shape), num_classes
    if images.dim() != 4 or tuple(images.shape[1:]) != shape or len(images) == 0:
        raise StoreError(
            f"the set's images have shape {tuple(images.shape)}, but {dataset} needs "
            f"[N, {shape[0]}, {shape[1]}, {shape[2]}] with N > 0",
            hint=hint,
        )
    if is_soft(labels):
        check_soft_labels(labels, len(images), classes, "the set's soft labels")
    elif labels.shape != (len(images),):
        raise StoreError(
            f"the set needs {len(images)} integer labels, got {labels.dtype} {tuple(labels.shape)}"
        )
    elif int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise StoreError(
            f"the set's labels span {int(labels.min())}..{int(labels.max())}, outside 0..{classes - 1}"
        )
    if not bool(torch.isfinite(images).all()):
        raise StoreError("the set's images hold NaN or infinite values")
    if not (math.isfinite(lr) and lr > 0):
        raise StoreError(f"the set's learning rate must be a positive finite number, got {lr}")
