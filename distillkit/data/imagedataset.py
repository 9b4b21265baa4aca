"""What every dataset reader shares: the in-memory ``ImageDataset`` and the steps to build one.

Images stay as their decoded 8-bit pixels and are normalised per access
(:class:`~distillkit.data.pixels.NormalisedPixels`), a quarter of a float32 copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distillkit.data.pixels import Images, NormalisedPixels, denormalise
from distillkit.errors import DataError

_CHUNK = 4096
DOWNLOAD_HINT = "add --download (with --data-path DIR) to fetch it"
#: The per-channel statistics MTT uses for every ImageNet-derived set (Tiny ImageNet, the subsets).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A whole labelled dataset in memory, normalised per channel with ``mean``/``std``.

    The images are float tensors or :class:`NormalisedPixels` (what the loaders
    make); either way ``images[index]`` is a normalised float tensor.
    ``eq=False`` because comparing tensor fields with ``==`` is ambiguous.
    """

    name: str
    train_images: Images
    train_labels: torch.Tensor
    test_images: Images
    test_labels: torch.Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        """Catch inconsistent tensors here rather than deep inside training."""
        for split in ("train", "test"):
            images: Images = getattr(self, f"{split}_images")
            labels: torch.Tensor = getattr(self, f"{split}_labels")
            if len(images.shape) != 4 or not images.dtype.is_floating_point:
                raise DataError(
                    f"{self.name}: {split} images must be a float [N, C, H, W] tensor, "
                    f"got {images.dtype} {tuple(images.shape)}."
                )
            if labels.ndim != 1 or labels.dtype != torch.int64 or len(labels) != len(images):
                raise DataError(
                    f"{self.name}: {split} labels must be an int64 vector of length {len(images)}, "
                    f"got {labels.dtype} {tuple(labels.shape)}."
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(
                f"{self.name}: train images are {tuple(self.train_images.shape[1:])} but test "
                f"images are {tuple(self.test_images.shape[1:])}."
            )
        channels = self.train_images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(
                f"{self.name}: mean/std need {channels} values (one per channel), "
                f"got {len(self.mean)} and {len(self.std)}."
            )
        if not self.class_names:
            raise DataError(f"{self.name}: the dataset has no classes.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.train_images.shape[1:]
        return (int(channels), int(height), int(width))

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation of ``[C,H,W]`` or ``[N,C,H,W]`` images into [0, 1] (pictures)."""
        return denormalise(images, self.mean, self.std)


def build(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    class_names: tuple[str, ...],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    scale: float = 255.0,
) -> ImageDataset:
    """Turn integer pixels ``[N,C,H,W]`` (``0..scale``) and labels into a normalised dataset."""
    tensors = []
    for split, (pixels, labels) in (("train", train), ("test", test)):
        if len(pixels) == 0:
            raise DataError(f"{name}: the {split} split is empty.")
        if labels.min() < 0 or labels.max() >= len(class_names):
            raise DataError(
                f"{name}: {split} labels run from {labels.min()} to {labels.max()}, "
                f"but there are {len(class_names)} classes.",
                hint="The files are corrupt or belong to another dataset; re-download them.",
            )
        # No copy when the pixels are already C-ordered in native byte order (torch needs both).
        array = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("="))
        images = NormalisedPixels(torch.from_numpy(array), scale, mean, std)
        tensors += [images, torch.from_numpy(labels.astype(np.int64))]
    return ImageDataset(name, *tensors, class_names=class_names, mean=mean, std=std)


def channel_stats(pixels: np.ndarray, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units, in float64 chunks so big sets don't blow memory."""
    total = np.zeros(pixels.shape[1])
    total_sq = np.zeros(pixels.shape[1])
    for start in range(0, len(pixels), _CHUNK):
        chunk = pixels[start : start + _CHUNK].astype(np.float64) / scale
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += np.square(chunk).sum(axis=(0, 2, 3))
    count = pixels.shape[0] * pixels.shape[2] * pixels.shape[3]
    mean = total / count
    # A constant channel has std 0; the floor keeps normalisation finite.
    std = np.maximum(np.sqrt(np.maximum(total_sq / count - mean**2, 0.0)), 1e-6)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def require_root(name: str, root: Path | None, expected: str) -> Path:
    """``root``, or the error saying which files the dataset needs when none was given."""
    if root is None:
        raise DataError(
            f"{name} needs a data directory holding {expected}.",
            hint=f"Pass --data-path DIR, or {DOWNLOAD_HINT}.",
        )
    return root


def fetch(name: str, root: Path, download: Callable[[], object]) -> None:
    """Run a torchvision download; any failure becomes one clear DataError."""
    try:
        download()
    except Exception as exc:
        raise DataError(
            f"Downloading {name} into {root} failed: {exc}.",
            hint=f"Check the network connection, or put the {name} files into {root} by hand.",
        ) from exc


def looked_in(dirs: list[Path]) -> str:
    """The folders searched, each once, in order: the tail of a "not found" message."""
    return ", ".join(str(d) for d in dict.fromkeys(dirs))
