"""Stratified, seeded splits: the embedded digits' test split and a run's validation split.

The validation split is cut from the *training* split when the data is prepared, so every
later stage (experts, the start set, distillation, the random-real baseline) sees only the
rest; the test split is never touched.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from distillkit.data.pixels import Images, NormalisedPixels
from distillkit.errors import DataError

if TYPE_CHECKING:
    from distillkit.data.datasets import ImageDataset


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) sorted indices, ``round(fraction × n)`` per class held out, on any machine."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_held = round(len(members) * fraction)
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def _take(images: Images, index: torch.Tensor) -> Images:
    """Rows ``index`` of a float tensor or of lazily normalised pixels (kept lazy)."""
    if isinstance(images, NormalisedPixels):
        return NormalisedPixels(images.pixels[index], images.scale, images.mean, images.std)
    return images[index]


def hold_out(
    dataset: ImageDataset, fraction: float, seed: int
) -> tuple[ImageDataset, tuple[Images, torch.Tensor]]:
    """``dataset`` without its validation split, and that split (images, labels).

    The normalisation constants stay the loader's (they are part of the dataset's definition).
    """
    labels = dataset.train_labels.numpy()
    kept, held = (torch.from_numpy(i) for i in stratified_split(labels, fraction, seed))
    counts = torch.bincount(dataset.train_labels[kept], minlength=dataset.num_classes)
    if len(held) == 0 or int(counts.min()) == 0:
        problem = "no validation images" if len(held) == 0 else "a class without training images"
        raise DataError(
            f"data.val_fraction={fraction} leaves {problem} in the {len(labels)} training images",
            hint="choose a data.val_fraction that holds out at least one image and keeps one per class",
        )
    train = replace(
        dataset, train_images=_take(dataset.train_images, kept), train_labels=dataset.train_labels[kept]
    )
    return train, (_take(dataset.train_images, held), dataset.train_labels[held])
