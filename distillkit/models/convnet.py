"""The MTT ConvNet family, plus the layer helpers the evaluation models share.

Layout follows MTT (``networks.py`` of github.com/GeorgeCazenavette/mtt-distillation): blocks
of Conv3×3 → norm → ReLU → pool and one Linear head on the flattened map. Parameters are
registered in MTT's flattening order (conv1, norm1, conv2, norm2, …, classifier), so
``named_parameters()`` is the flat order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from distillkit.errors import ConfigError
from distillkit.models.base import EmbedClassifier
from distillkit.models.instancenorm import InstanceNorm
from distillkit.models.pooling import AvgPool2x2

Size = tuple[int, int]

NORMS: dict[str, Callable[[int], nn.Module]] = {
    # MTT's "instancenorm" (GroupNorm with a group per channel: per-sample, per-channel statistics,
    # no running buffers), with a double backward written out for trajectory matching.
    "in": InstanceNorm,
    "bn": nn.BatchNorm2d,
    # Layer norm over (C, H, W) as GroupNorm(1, C): independent of the map size.
    "ln": lambda c: nn.GroupNorm(1, c, affine=True),
    "gn": lambda c: nn.GroupNorm(4, c, affine=True),
    "nn": lambda c: nn.Identity(),
}

POOLS: dict[str, Callable[[], nn.Module]] = {
    "ap": AvgPool2x2,
    "mp": lambda: nn.MaxPool2d(2, 2),
    "np": nn.Identity,
}


def make_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation layer named by ``kind`` (one of :data:`NORMS`) for ``channels`` maps."""
    if kind == "gn" and channels % 4:
        raise ConfigError(
            f"Group norm uses 4 groups, which do not divide a width of {channels}.",
            hint="use a width divisible by 4 (wN) or another norm (in, bn, ln, nn).",
        )
    return NORMS[kind](channels)


def mtt_padding(channels: int, image_size: Size) -> int:
    """Extra first-conv padding: MTT treats single-channel 28×28 images as 32×32 (pad +2)."""
    return 2 if channels == 1 and tuple(image_size) == (28, 28) else 0


def halving_pool(size: Size, make: Callable[[], nn.Module], *, floor: int = 1) -> tuple[nn.Module, Size]:
    """A 2×2 pool and the map size after it, or ``Identity`` where that would go below ``floor``.

    The reference models assume 28–32 px inputs; skipping pools lets smaller images reach the
    head. Models with norms after a pool use ``floor=2``: instance norm on a 1×1 map outputs
    only its bias, which would cut the network off from its input. Where the reference
    works, no pool is skipped.
    """
    height, width = size
    if min(height, width) // 2 < floor:
        return nn.Identity(), size
    return make(), (height // 2, width // 2)


class ConvNet(EmbedClassifier):
    """MTT's ConvNet: ``depth`` blocks of ``width`` channels and a Linear head.

    The head sees ``width · (H/2^depth) · (W/2^depth)`` features (no pooling with ``np``);
    a 1×28×28 input is padded to 32×32 by the first conv as in MTT.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: Size,
        *,
        width: int = 128,
        depth: int = 3,
        norm: str = "in",
        pool: str = "ap",
    ) -> None:
        super().__init__()
        extra = mtt_padding(channels, image_size)
        height, wide = _feature_size(image_size, extra, depth, pool)
        self.depth = depth
        self.pool = POOLS[pool]()
        for i in range(1, depth + 1):
            first = i == 1
            in_channels = channels if first else width
            padding = 1 + (extra if first else 0)
            self.add_module(f"conv{i}", nn.Conv2d(in_channels, width, 3, padding=padding))
            self.add_module(f"norm{i}", make_norm(norm, width))
        self.classifier = nn.Linear(width * height * wide, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Flattened features right before the head, shape ``[B, F]``."""
        for i in range(1, self.depth + 1):
            conv, norm = getattr(self, f"conv{i}"), getattr(self, f"norm{i}")
            x = self.pool(F.relu(norm(conv(x))))
        return x.flatten(1)


def _feature_size(image_size: Size, extra: int, depth: int, pool: str) -> Size:
    """Map size at the head; an image that pools away to nothing is a configuration error."""
    height, width = (side + 2 * extra for side in image_size)
    if pool != "np":
        height, width = height >> depth, width >> depth
    if min(height, width) < 1:
        size = "×".join(map(str, image_size))
        raise ConfigError(
            f"Images of {size} px are too small for a depth-{depth} ConvNet: "
            f"{depth} poolings shrink its feature map to nothing.",
            hint="choose a smaller depth (e.g. 'convnet-d2') or no pooling ('convnet-np').",
        )
    return height, width
