"""Datasets kept as their decoded integer pixels and normalised per access.

A float32 copy of a whole dataset is four times the size of its 8-bit pixels
(FashionMNIST's training set: 188 MB instead of 47 MB), and it sits in every
distillation process. :class:`NormalisedPixels` keeps the pixels and normalises
only what is indexed, with the very op sequence a whole-set normalisation uses,
so every element has the same bits as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import torch

from distillkit.errors import DataError


class NormalisedPixels:
    """Read-only stand-in for a float image tensor ``[N, C, H, W]`` built from integer pixels.

    ``x[index]`` (an int, a slice, an index tensor or a boolean mask along the first
    dimension) is a fresh float32 tensor ``(float32(pixels) / scale - mean) / std``
    (per channel) on the pixels' device; ``len``, ``shape``, ``dtype``, ``device`` and
    ``to(device)`` behave as for that tensor. Anything else a tensor offers is left
    out on purpose: ``x[:]`` materialises the whole set when that is really wanted.
    """

    def __init__(
        self, pixels: torch.Tensor, scale: float, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        if pixels.ndim != 4 or pixels.is_floating_point():
            raise DataError(
                f"pixels must be an integer [N, C, H, W] tensor, got {pixels.dtype} {tuple(pixels.shape)}."
            )
        if len(mean) != pixels.shape[1] or len(std) != pixels.shape[1]:
            raise DataError(
                f"mean/std need {pixels.shape[1]} values (one per channel), got {len(mean)} and {len(std)}."
            )
        self.pixels = pixels
        self._shape = pixels.shape
        self.released = False
        self.scale = float(scale)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # Tensors on the pixels' device, not Python floats: CUDA divides by a CPU
        # scalar through its reciprocal, which can change the last bit.
        self._scale = torch.tensor(self.scale, dtype=torch.float32, device=pixels.device)
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, tuple):
            raise TypeError("NormalisedPixels is indexed along the first (image) dimension only")
        if self.released:
            raise RuntimeError("these real images were released (see NormalisedPixels.release)")
        images = self.pixels[index].to(torch.float32)
        return images.div_(self._scale).sub_(self._mean).div_(self._std)

    def __len__(self) -> int:
        return self._shape[0]

    def __repr__(self) -> str:
        return f"NormalisedPixels({self.pixels.dtype} {tuple(self.shape)}, device={self.device})"

    @property
    def shape(self) -> torch.Size:
        return self._shape

    @property
    def dtype(self) -> torch.dtype:
        """What indexing yields."""
        return torch.float32

    @property
    def device(self) -> torch.device:
        return self.pixels.device

    def to(self, device: torch.device | str) -> NormalisedPixels:
        """The same images with the pixels on ``device`` (a quarter of the bytes a float copy moves)."""
        if self.released:
            raise RuntimeError("these real images were released (see NormalisedPixels.release)")
        return NormalisedPixels(self.pixels.to(device), self.scale, self.mean, self.std)

    def release(self) -> None:
        """Free the pixels for good; shape and length stay readable, indexing raises.

        A distillation reads real images only to draw its start set; releasing them
        afterwards keeps a long run's memory to what the loop itself needs.
        """
        self.pixels = self.pixels.new_empty((0, *self._shape[1:]))
        self.released = True


#: What holds a dataset's images: a float tensor (e.g. after ZCA) or lazily normalised pixels.
Images: TypeAlias = torch.Tensor | NormalisedPixels


def denormalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo a per-channel normalisation of ``[C,H,W]`` or ``[N,C,H,W]`` images into [0, 1] (pictures)."""
    mean_t = torch.tensor(tuple(mean), dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std_t = torch.tensor(tuple(std), dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images * std_t + mean_t).clamp(0.0, 1.0)
