"""Model registry: a model name such as ``convnet-w32-d2`` becomes a network.

A name is a family followed by dash-separated modifiers in any order (case-insensitive):

- ``convnet``: ``dN`` depth (3), ``wN`` width (128), norm ``in|bn|ln|gn|nn`` (in),
  pool ``ap|mp|np`` (ap);
- ``alexnet``: no modifiers;
- ``vgg11``: norm (in), e.g. ``vgg11-bn``;
- ``resnet18``: norm (in) and ``ap`` for ResNet18_AP, e.g. ``resnet18-bn-ap``.

Every model has ``embed(x) -> [B, F]`` (features before the head) and
``forward(x) == classifier(embed(x))``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

from torch import nn

from distillkit.errors import ConfigError
from distillkit.models.alexnet import AlexNet
from distillkit.models.convnet import NORMS, POOLS, ConvNet, Size
from distillkit.models.resnet import ResNet18
from distillkit.models.vgg import VGG11

__all__ = ["ModelSpec", "build_model", "model_names", "parse_model_name"]


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name; ``depth`` and ``width`` matter to the ConvNet only.

    ``pool`` is how maps shrink: ``ap``/``mp``/``np`` (ConvNet), ``mp`` (AlexNet, VGG11),
    ``stride`` or ``ap`` (ResNet18 / ResNet18_AP).
    """

    family: str
    norm: str
    pool: str
    depth: int = 3
    width: int = 128


Builder = Callable[[ModelSpec, int, int, Size], nn.Module]


class _Family(NamedTuple):
    default: ModelSpec
    modifiers: tuple[str, ...]  # accepted tokens; "dN"/"wN" stand for any positive integer N
    usage: str
    build: Builder


_NORM_TOKENS = "|".join(NORMS)
_FAMILIES = {
    "convnet": _Family(
        ModelSpec("convnet", norm="in", pool="ap"),
        ("dN", "wN", *NORMS, *POOLS),
        f"convnet accepts dN (depth), wN (width), a norm {_NORM_TOKENS} and a pool "
        f"{'|'.join(POOLS)}, joined with '-' in any order, e.g. 'convnet-w32-d2'.",
        lambda s, c, k, size: ConvNet(c, k, size, width=s.width, depth=s.depth, norm=s.norm, pool=s.pool),
    ),
    "alexnet": _Family(
        ModelSpec("alexnet", norm="nn", pool="mp"),
        (),
        "alexnet takes no modifiers.",
        lambda s, c, k, size: AlexNet(c, k, size),
    ),
    "vgg11": _Family(
        ModelSpec("vgg11", norm="in", pool="mp"),
        tuple(NORMS),
        f"vgg11 accepts a norm {_NORM_TOKENS}, e.g. 'vgg11-bn'.",
        lambda s, c, k, size: VGG11(c, k, size, norm=s.norm),
    ),
    "resnet18": _Family(
        ModelSpec("resnet18", norm="in", pool="stride"),
        (*NORMS, "ap"),
        f"resnet18 accepts a norm {_NORM_TOKENS} and 'ap' (ResNet18_AP), e.g. 'resnet18-bn-ap'.",
        lambda s, c, k, size: ResNet18(c, k, size, norm=s.norm, avgpool=s.pool == "ap"),
    ),
}


def model_names() -> list[str]:
    """Documented names and patterns, for help texts."""
    return [
        "convnet",
        "convnet-dN",
        "convnet-wN",
        "convnet-{in,bn,ln,gn,nn}",
        "convnet-{ap,mp,np}",
        "alexnet",
        "vgg11",
        "vgg11-bn",
        "resnet18",
        "resnet18-bn",
        "resnet18-ap",
        "resnet18-bn-ap",
    ]


def parse_model_name(name: str) -> ModelSpec:
    """Split ``name`` into family and modifiers; anything unknown is a :class:`ConfigError`."""
    family, *tokens = name.strip().lower().split("-")
    if family not in _FAMILIES:
        close = difflib.get_close_matches(family, list(_FAMILIES), n=1, cutoff=0.5)
        raise ConfigError(
            f"Unknown model '{name}'.",
            hint=_with_suggestion(
                ["-".join([c, *tokens]) for c in close],
                f"known models: {', '.join(model_names())}.",
            ),
        )
    changes: dict[str, str | int] = {}
    for token in tokens:
        field, value = _parse_modifier(name, family, token)
        if field in changes:
            raise ConfigError(
                f"Model '{name}' sets its {field} twice.",
                hint=f"keep a single {field} modifier, e.g. drop '{token}'.",
            )
        changes[field] = value
    return replace(_FAMILIES[family].default, **changes)


def build_model(name: str, channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """A freshly initialised network for ``channels``×H×W inputs and ``num_classes`` outputs."""
    spec = parse_model_name(name)
    height, width = image_size
    return _FAMILIES[spec.family].build(spec, channels, num_classes, (height, width))


def _parse_modifier(name: str, family: str, token: str) -> tuple[str, str | int]:
    """One modifier token as (ModelSpec field, value)."""
    allowed = _FAMILIES[family].modifiers
    number = re.fullmatch(r"([dw])(\d+)", token)
    if number and f"{number[1]}N" in allowed and int(number[2]) > 0:
        return ("depth" if number[1] == "d" else "width"), int(number[2])
    if token in allowed:
        return ("norm" if token in NORMS else "pool"), token
    close = difflib.get_close_matches(token, [t for t in allowed if "N" not in t], n=1, cutoff=0.5)
    raise ConfigError(
        f"Model '{name}' has an unknown modifier '{token}'.",
        hint=_with_suggestion([f"{family}-{c}" for c in close], _FAMILIES[family].usage),
    )


def _with_suggestion(close: list[str], rest: str) -> str:
    """``rest``, led by a "did you mean" when difflib found something close."""
    return f"did you mean '{close[0]}'? {rest}" if close else rest
