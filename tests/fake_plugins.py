"""Plugins used by the host tests (registered through synthetic entry points)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from distillkit.context import SyntheticInit
from distillkit.hookspecs import hookimpl


class ZeroInit:
    """Replaces the init with zeros (a stand-in third-party init sampler)."""

    name: ClassVar[str] = "zero-init"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        value: float = 0.0

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def init_synthetic(self, run, ctx):
        n = ctx.num_classes * ctx.ipc
        images = torch.full((n, *ctx.train_images.shape[1:]), self.config.value)
        labels = torch.arange(ctx.num_classes).repeat_interleave(ctx.ipc)
        return SyntheticInit(images, labels, source="zero-init")


class OtherInit(ZeroInit):
    name: ClassVar[str] = "other-init"


class HalfWeight:
    name: ClassVar[str] = "half"

    @hookimpl
    def inner_loss_weight(self, run, ctx):
        return 0.5


class Misnamed:
    name: ClassVar[str] = "something-else"


class TypoHook:
    name: ClassVar[str] = "typo"

    @hookimpl
    def inner_los_weight(self, run, ctx):
        return 2.0


class WantsMomentum:
    name: ClassVar[str] = "wants-momentum"
    config_defaults: ClassVar[dict] = {"experts.momentum": 0.9}


class WantsNoMomentum:
    name: ClassVar[str] = "wants-no-momentum"
    config_defaults: ClassVar[dict] = {"experts.momentum": 0.0}
