"""MTT's VGG11 for cross-architecture evaluation (MTT's ``networks.py``)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from distillkit.models.base import SequentialFeatures
from distillkit.models.convnet import Size, halving_pool, make_norm, mtt_padding

_M = 0  # a 2×2 max-pool; other entries are conv widths
_CFG = (64, _M, 128, _M, 256, 256, _M, 512, 512, _M, 512, 512, _M)


class VGG11(SequentialFeatures):
    """VGG11: Conv3×3 → norm → ReLU blocks, five 2×2 max-pools, one Linear head.

    Instance norm by default (``norm="bn"`` for VGG11BN). At 32 px (and 1×28×28, padded to
    32 as in MTT) the map ends at 1×1 and the head is Linear(512). On smaller images, pools
    that would leave the following convs a 1×1 map are skipped (see ``halving_pool``), so
    8×8 digits also end at 1×1; larger images get a head sized to their final map.
    """

    def __init__(self, channels: int, num_classes: int, image_size: Size, *, norm: str = "in"):
        super().__init__()
        extra = mtt_padding(channels, image_size)
        size: Size = (image_size[0] + 2 * extra, image_size[1] + 2 * extra)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels, conv, pool = channels, 0, 0
        for index, item in enumerate(_CFG):
            if item == _M:
                pool += 1
                floor = 1 if index == len(_CFG) - 1 else 2  # only the head follows the last
                layers[f"pool{pool}"], size = halving_pool(size, lambda: nn.MaxPool2d(2, 2), floor=floor)
                continue
            conv += 1
            padding = 1 + (extra if conv == 1 else 0)
            layers[f"conv{conv}"] = nn.Conv2d(in_channels, item, 3, padding=padding)
            layers[f"norm{conv}"] = make_norm(norm, item)
            layers[f"relu{conv}"] = nn.ReLU()
            in_channels = item
        self.features = nn.Sequential(layers)
        self.classifier = nn.Linear(in_channels * size[0] * size[1], num_classes)
