"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021) in MTT's single-op mode.

Every op is differentiable with respect to the images, so gradients reach synthetic pixels
through the augmentation. Every random number comes from the caller's generator on the
images' device: a run is reproducible from its seed and never touches the global RNG.
Ops are vectorised over the batch, each sample drawing its own parameters.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from distillkit.errors import ConfigError

PROB_FLIP = 0.5
RATIO_SCALE = 1.2
RATIO_ROTATE = 15.0  # degrees
RATIO_CROP_PAD = 0.125
RATIO_CUTOUT = 0.5
BRIGHTNESS = 1.0
SATURATION = 2.0
CONTRAST = 0.5

Op = Callable[[Tensor, torch.Generator], Tensor]


def _uniform(x: Tensor, generator: torch.Generator, *shape: int) -> Tensor:
    """Per-sample U(0, 1) of shape ``[B, *shape]``, in ``x``'s dtype and on its device."""
    size = (x.shape[0], *shape)
    return torch.rand(size, generator=generator, device=x.device, dtype=x.dtype)


def brightness(x: Tensor, generator: torch.Generator) -> Tensor:
    """Add a per-image offset in [-0.5, 0.5)."""
    return x + (_uniform(x, generator, 1, 1, 1) - 0.5) * BRIGHTNESS


def saturation(x: Tensor, generator: torch.Generator) -> Tensor:
    """Scale each pixel's deviation from its channel mean by U(0, 2); a no-op for 1 channel."""
    mean = x.mean(dim=1, keepdim=True)
    return mean + (x - mean) * (_uniform(x, generator, 1, 1, 1) * SATURATION)


def contrast(x: Tensor, generator: torch.Generator) -> Tensor:
    """Scale each image's deviation from its mean by U(0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * (_uniform(x, generator, 1, 1, 1) + CONTRAST)


def crop(x: Tensor, generator: torch.Generator) -> Tensor:
    """Translate each image by whole pixels in [-s, s], s = int(0.125·side + 0.5); zeros fill in.

    Equivalent to padding then random-cropping, done as one gather (no ``grid_sample``).
    """
    batch, channels, height, width = x.shape
    rows, rows_inside = _shifted_positions(height, x, generator)
    cols, cols_inside = _shifted_positions(width, x, generator)
    index = (rows[:, :, None] * width + cols[:, None, :]).view(batch, 1, height * width)
    moved = x.flatten(2).gather(2, index.expand(batch, channels, -1)).view_as(x)
    inside = (rows_inside[:, :, None] & cols_inside[:, None, :])[:, None]
    return torch.where(inside, moved, 0.0)


def _shifted_positions(side: int, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per sample, the clamped source position of every output position and whether it is real."""
    shift = int(side * RATIO_CROP_PAD + 0.5)
    offset = torch.randint(-shift, shift + 1, (x.shape[0], 1), generator=generator, device=x.device)
    source = torch.arange(side, device=x.device) + offset
    return source.clamp(0, side - 1), (source >= 0) & (source < side)


def cutout(x: Tensor, generator: torch.Generator) -> Tensor:
    """Zero a square of side int(0.5·side + 0.5) at a random centre, clipped at the borders."""
    rows = _cutout_band(x.shape[2], x, generator)
    cols = _cutout_band(x.shape[3], x, generator)
    hole = (rows[:, :, None] & cols[:, None, :])[:, None]
    return torch.where(hole, 0.0, x)


def _cutout_band(side: int, x: Tensor, generator: torch.Generator) -> Tensor:
    """Per sample, which positions along one axis the cutout square covers."""
    length = int(side * RATIO_CUTOUT + 0.5)
    high = side + 1 - length % 2
    centre = torch.randint(0, high, (x.shape[0], 1), generator=generator, device=x.device)
    start = centre - length // 2
    position = torch.arange(side, device=x.device)
    return (position >= start) & (position < start + length)


def flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left–right with probability 0.5."""
    return torch.where(_uniform(x, generator, 1, 1, 1) < PROB_FLIP, x.flip(3), x)


def scale(x: Tensor, generator: torch.Generator) -> Tensor:
    """Stretch each axis independently by U(1/1.2, 1.2) about the centre."""
    low = 1.0 / RATIO_SCALE
    sx = _uniform(x, generator) * (RATIO_SCALE - low) + low
    sy = _uniform(x, generator) * (RATIO_SCALE - low) + low
    zero = torch.zeros_like(sx)
    return _warp(x, [[sx, zero, zero], [zero, sy, zero]])


def rotate(x: Tensor, generator: torch.Generator) -> Tensor:
    """Rotate each image by U(-15°, 15°) about the centre."""
    angle = (_uniform(x, generator) - 0.5) * 2.0 * math.radians(RATIO_ROTATE)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    return _warp(x, [[cos, sin, zero], [-sin, cos, zero]])


def _warp(x: Tensor, rows: list[list[Tensor]]) -> Tensor:
    """Resample ``x`` under per-sample 2×3 affine maps (bilinear, zero padding)."""
    theta = torch.stack([torch.stack(row, dim=1) for row in rows], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


# "color" is MTT's group; its three parts are also accepted alone (handy for tests).
GROUPS: dict[str, tuple[Op, ...]] = {
    "color": (brightness, saturation, contrast),
    "crop": (crop,),
    "cutout": (cutout,),
    "flip": (flip,),
    "scale": (scale,),
    "rotate": (rotate,),
    "brightness": (brightness,),
    "saturation": (saturation,),
    "contrast": (contrast,),
}


class DSA:
    """Augment a batch with one op group drawn uniformly from ``strategy`` per call (mode 'S').

    ``strategy`` joins groups with '_' (MTT's ``color_crop_cutout_flip_scale_rotate``);
    ``""`` or ``"none"`` is the identity. The generator must live on the images' device.
    """

    def __init__(self, strategy: str = "color_crop_cutout_flip_scale_rotate") -> None:
        self._strategy = strategy
        self._ops = _parse_strategy(strategy)

    @property
    def strategy(self) -> str:
        """The strategy string as configured (``data.augment``), e.g. for a store's key."""
        return self._strategy

    @property
    def ops(self) -> tuple[str, ...]:
        """The strategy's op groups in order; empty for the identity."""
        return self._ops

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if not self._ops:
            return x
        draw = torch.randint(len(self._ops), (1,), generator=generator, device=x.device)
        for op in GROUPS[self._ops[int(draw)]]:
            x = op(x, generator)
        return x

    def __repr__(self) -> str:
        return f"DSA({self._strategy!r})"


def _parse_strategy(strategy: str) -> tuple[str, ...]:
    """The op groups named in ``strategy``; an unknown name is a :class:`ConfigError`."""
    text = strategy.strip().lower()
    if text in ("", "none"):
        return ()
    names = tuple(text.split("_"))
    for name in names:
        if name not in GROUPS:
            close = difflib.get_close_matches(name, list(GROUPS), n=1)
            lead = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"Unknown augmentation op '{name}' in DSA strategy '{strategy}'.",
                hint=f"{lead}join ops with '_' from {', '.join(GROUPS)}, "
                "or use 'none' to switch augmentation off.",
            )
    return names
