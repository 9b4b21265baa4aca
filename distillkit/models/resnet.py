"""MTT's ResNet18 and ResNet18_AP for cross-architecture evaluation (MTT's ``networks.py``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from distillkit.models.base import EmbedClassifier
from distillkit.models.convnet import Size, halving_pool, make_norm
from distillkit.models.pooling import AvgPool2x2

_STAGES = ((64, False), (128, True), (256, True), (512, True))  # (planes, downsamples)


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual shortcut.

    When the block downsamples, the strided variant uses stride-2 convs; the AP variant uses
    stride-1 convs followed by ``pool`` (a 2×2 average pool) on both paths.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        norm: str,
        *,
        stride: int = 1,
        pool: nn.Module | None = None,
    ) -> None:
        super().__init__()
        # The pool is stateless, so the same instance serves both paths.
        self.pool = nn.Identity() if pool is None else pool
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            projection = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            self.shortcut = nn.Sequential(projection, self.pool, make_norm(norm, planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool(F.relu(self.norm1(self.conv1(x))))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(EmbedClassifier):
    """ResNet18: 3×3 stride-1 stem, BasicBlocks [2, 2, 2, 2], Linear(512) head.

    Instance norm by default (``norm="bn"`` for ResNet18BN). The reference ends with
    ``avg_pool(4)``, which only fits the 4×4 map of 28–32 px inputs; global average pooling
    gives the same result there and works at any size. With ``avgpool=True`` (ResNet18_AP)
    downsampling is average pooling and the head sees the whole flattened final map, as in
    MTT (512·4·4 at 32 px, 512·3·3 at 28 px). On small images, downsampling that would leave
    a block a 1×1 map is skipped (see ``halving_pool``), so 8×8 digits end at 2×2.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: Size,
        *,
        norm: str = "in",
        avgpool: bool = False,
    ) -> None:
        super().__init__()
        self.avgpool = avgpool
        self.conv1 = nn.Conv2d(channels, 64, 3, padding=1, bias=False)
        self.norm1 = make_norm(norm, 64)
        size, in_planes = tuple(image_size), 64
        for i, (planes, downsamples) in enumerate(_STAGES, start=1):
            stride, pool = 1, None
            if downsamples:
                stride, pool, size = _downsampling(size, avgpool)
            first = BasicBlock(in_planes, planes, norm, stride=stride, pool=pool)
            self.add_module(f"layer{i}", nn.Sequential(first, BasicBlock(planes, planes, norm)))
            in_planes = planes
        features = in_planes * size[0] * size[1] if avgpool else in_planes
        self.classifier = nn.Linear(features, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Features right before the head, shape ``[B, F]``."""
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if not self.avgpool:
            out = F.adaptive_avg_pool2d(out, 1)
        return out.flatten(1)


def _downsampling(size: Size, avgpool: bool) -> tuple[int, nn.Module | None, Size]:
    """(conv stride, pool, map size after) for a block that halves ``size``, if it may."""
    if avgpool:
        pool, after = halving_pool(size, AvgPool2x2, floor=2)
        return 1, pool, after
    after = ((size[0] + 1) // 2, (size[1] + 1) // 2)  # 3×3 conv, stride 2, padding 1
    if min(after) < 2:
        return 1, None, size
    return 2, None, after
