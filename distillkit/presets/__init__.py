"""Named presets (``*.toml`` beside this file) and the default preset of each dataset.

A preset declares its ``kind``: ``dataset`` presets hold data, model and budget
keys only, ``method`` presets hold method choices only (see
:func:`distillkit.config.is_dataset_key`), so presets of the two kinds compose
in either order. A ``paper`` preset holds a published setting whole (data, model,
budget and method, plugins included) and must name its ``source``; its keys are
split by the same rule into a dataset part and a method part. Where each part sits
among the layers of a run's config is written in :mod:`distillkit.resolve`.

Besides config keys a preset may carry metadata: ``source`` (the table or script it
follows), ``purpose``, ``deviations`` (every way it differs from the source) and
``includes`` (dataset or method presets whose keys it takes, under its own).
Every key is checked when a preset is read. Torch-free.
"""

from __future__ import annotations

import math
import tomllib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from distillkit.config import (
    TOP_LEVEL,
    RunConfig,
    apply_overrides,
    flatten_table,
    is_dataset_key,
    suggest,
)
from distillkit.errors import ConfigError

KINDS = ("dataset", "method", "paper")
#: Top-level preset fields that describe the preset rather than set config keys.
METADATA = ("kind", "source", "purpose", "deviations", "includes")

#: Image side and class count of the built-in datasets (an image folder is looked at instead).
KNOWN_SHAPES: dict[str, tuple[int, int]] = {
    "digits": (8, 10),
    "mnist": (28, 10),
    "fashion-mnist": (28, 10),
    "cifar10": (32, 10),
    "svhn": (32, 10),
    "cifar100": (32, 100),
    "tiny-imagenet": (64, 200),
    **{
        name: (128, 10)
        for name in ("imagenette", "imagewoof", "imagefruit", "imagemeow", "imagesquawk", "imageyellow")
    },
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Preset:
    """One preset's dotted keys, its kind and metadata, and how the config sources name it."""

    name: str
    kind: str
    values: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    source: str = ""
    purpose: str = ""
    deviations: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"preset {self.name}" + (f" ({self.note})" if self.note else "")

    @property
    def dataset_values(self) -> dict[str, Any]:
        """The keys that go to the dataset-preset layer (all of a dataset preset's, none of a method's)."""
        return {k: v for k, v in self.values.items() if is_dataset_key(k)}

    @property
    def method_values(self) -> dict[str, Any]:
        """The keys that go to the method-preset layer."""
        return {k: v for k, v in self.values.items() if not is_dataset_key(k)}


def preset_names() -> list[str]:
    """Names of the presets shipped in ``distillkit/presets``."""
    folder = resources.files("distillkit") / "presets"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def parse_preset_list(preset: str | Sequence[str] | None) -> list[str]:
    """``"a,b"``, ``["a", "b"]`` or ``["a,b", "c"]`` → ``["a", "b", "c"]`` (repeated ``--preset``)."""
    if preset is None:
        return []
    items = [preset] if isinstance(preset, str) else list(preset)
    return [name.strip() for item in items for name in item.split(",") if name.strip()]


def read_preset(name: str) -> Preset:
    """The preset ``name``; unknown names are a ``ConfigError`` with a suggestion."""
    names = preset_names()
    if name not in names:
        raise ConfigError(
            f"unknown preset '{name}'",
            hint=suggest(name, names) or f"available presets: {', '.join(names)}",
        )
    return parse_preset(name, (resources.files("distillkit") / "presets" / f"{name}.toml").read_text())


def parse_preset(name: str, text: str) -> Preset:
    """A preset from its TOML text, every key checked; anything wrong is a one-line ``ConfigError``.

    Refused: invalid TOML (a key set twice, also ``a.b = 1`` beside ``[a] b = 2``), a
    missing or unknown kind, an unknown core key or a wrong value type (with the near
    key as hint), a key of the other kind, a paper preset without ``source``, and
    malformed metadata. Plugin options are checked when the plugin is selected.
    """
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"preset {name} is not valid TOML (is a key set twice?): {exc}") from None
    meta = {key: table.pop(key) for key in METADATA if key in table}
    kind = meta.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"preset {name} must declare kind = {' or '.join(map(repr, KINDS))}, got {kind!r}")
    source, purpose = (_text(name, meta, key) for key in ("source", "purpose"))
    deviations, includes = (_texts(name, meta, key) for key in ("deviations", "includes"))
    values = {**_included(name, includes), **flatten_table(table)}
    _check_keys(name, values)
    if kind == "paper" and not source:
        raise ConfigError(
            f"paper preset {name} must name its source", hint='e.g. source = "MTT (CVPR 2022) README table"'
        )
    if kind != "paper":
        misplaced = [k for k in values if is_dataset_key(k) != (kind == "dataset")]
        if misplaced:
            other = "method" if kind == "dataset" else "dataset"
            raise ConfigError(f"{kind} preset {name} sets {other} keys: {', '.join(sorted(misplaced))}")
    return Preset(
        name, kind, values, source=source, purpose=purpose, deviations=deviations, includes=includes
    )


def _text(name: str, meta: dict[str, Any], key: str) -> str:
    value = meta.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"preset {name}: {key} must be a string, got {value!r}")
    return value.strip()


def _texts(name: str, meta: dict[str, Any], key: str) -> tuple[str, ...]:
    value = meta.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"preset {name}: {key} must be a list of non-empty strings, got {value!r}")
    return tuple(v.strip() for v in value)


def _included(name: str, includes: tuple[str, ...]) -> dict[str, Any]:
    """The keys of the presets ``name`` includes, later ones winning (only dataset or method presets)."""
    values: dict[str, Any] = {}
    for other in includes:
        included = read_preset(other)
        if included.kind == "paper":
            raise ConfigError(
                f"preset {name} includes paper preset {other}; only dataset or method presets can be included"
            )
        values.update(included.values)
    return values


def _check_keys(name: str, values: dict[str, Any]) -> None:
    """Core keys must exist and parse (``plugins`` too); ``<plugin>.<key>`` waits for the plugin."""
    for key in values:
        if "." not in key and key not in TOP_LEVEL:  # neither metadata nor a top-level key
            raise ConfigError(
                f"preset {name}: unknown key '{key}'", hint=suggest(key, [*METADATA, *TOP_LEVEL])
            )
    try:
        apply_overrides(RunConfig(), values)
    except ConfigError as exc:
        raise ConfigError(f"preset {name}: {exc}", hint=exc.hint) from None


def default_for(dataset: str) -> Preset:
    """The dataset preset a dataset gets when none is named, chosen by its image size.

    Sides up to 16 pixels get ``digits`` (a depth-2 ConvNet for 8×8 inputs); larger
    ones get ``fmnist-cpu`` (depth 3, as MTT uses up to 32×32) with one more
    conv/pool block per doubling beyond 32 (64 → depth 4, 128 → depth 5, as MTT
    uses for Tiny ImageNet and ImageNet subsets). The class count is reported in
    the layer's name; the budget does not change with it.
    """
    side, classes = _shape_of(dataset)
    name = "digits" if side <= 16 else "fmnist-cpu"
    preset = read_preset(name)
    values = dict(preset.values)
    if side > 32:
        values["model.name"] = f"convnet-w32-d{3 + math.ceil(math.log2(side / 32))}"
    shape = f"{side}×{side}" if side else "unknown size"
    note = f"default for {dataset}: {shape}, {classes or '?'} classes"
    return Preset(name, "dataset", values, note)


def _shape_of(dataset: str) -> tuple[int, int]:
    """(image side, classes) of a built-in dataset or an ``imagefolder:PATH`` (0 = unknown)."""
    spec = dataset.strip()
    if spec.lower() in KNOWN_SHAPES:
        return KNOWN_SHAPES[spec.lower()]
    head, sep, rest = spec.partition(":")
    if not sep or head.lower() != "imagefolder":
        return (0, 0)
    train = Path(rest).expanduser() / "train"
    try:
        classes = sorted(p for p in train.iterdir() if p.is_dir())
        first = next(f for c in classes for f in sorted(c.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES)
        from PIL import Image

        with warnings.catch_warnings():  # a too-large image is reported by loading, once
            warnings.simplefilter("ignore")
            with Image.open(first) as image:
                return (max(image.size), len(classes))
    except Exception:
        return (0, 0)  # loading reports what is wrong with the folder


__all__ = [
    "KINDS",
    "METADATA",
    "Preset",
    "default_for",
    "parse_preset",
    "parse_preset_list",
    "preset_names",
    "read_preset",
]
