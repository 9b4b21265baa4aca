"""MTT's AlexNet for cross-architecture evaluation (MTT's ``networks.py``); no normalisation."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from distillkit.models.base import SequentialFeatures
from distillkit.models.convnet import Size, halving_pool, mtt_padding

_CONVS = ((128, 5), (192, 5), (256, 3), (192, 3), (192, 3))  # (out channels, kernel)
_POOL_AFTER = (1, 2, 5)  # max-pool after these convs


class AlexNet(SequentialFeatures):
    """Five ReLU convs with three 2×2 max-pools and a Linear head on the flattened map.

    At 32 px (and 1×28×28, padded to 32 as in MTT) the head sees 192·4·4 features. Other
    sizes get a head sized to their map, and pools on a 1 px map are skipped, so small
    images such as 8×8 digits work too.
    """

    def __init__(self, channels: int, num_classes: int, image_size: Size) -> None:
        super().__init__()
        extra = mtt_padding(channels, image_size)
        size: Size = (image_size[0] + 2 * extra, image_size[1] + 2 * extra)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = channels
        for i, (out_channels, kernel) in enumerate(_CONVS, start=1):
            padding = kernel // 2 + (extra if i == 1 else 0)
            layers[f"conv{i}"] = nn.Conv2d(in_channels, out_channels, kernel, padding=padding)
            layers[f"relu{i}"] = nn.ReLU()
            if i in _POOL_AFTER:
                layers[f"pool{i}"], size = halving_pool(size, lambda: nn.MaxPool2d(2, 2))
            in_channels = out_channels
        self.features = nn.Sequential(layers)
        self.classifier = nn.Linear(in_channels * size[0] * size[1], num_classes)
