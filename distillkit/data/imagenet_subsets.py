"""MTT's ten-class ImageNet subsets (ImageNette, ImageWoof, …) read from an ImageNet folder.

``data_path`` is ImageNet in ImageFolder's layout, ``train/<wnid>/*.JPEG`` and
``val/<wnid>/*.JPEG``; only the subset's ten class folders are read. Each photo is resized
so that its short side is 128 pixels and centre-cropped to 128×128 while it is decoded.
Labels follow the order of the subset's list (MTT's), so experts and sets exchanged with
MTT agree on what each class index means.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from distillkit.data.imagedataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, build
from distillkit.data.images import decode_center_crops, image_files
from distillkit.errors import DataError

SIDE = 128
SUBSET_PREFIX = "imagenet-subset:"
_HINT = (
    "Pass --data-path DIR with ImageNet as DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG "
    "(val sorted into class folders, as torchvision's ImageFolder reads it)."
)


@dataclass(frozen=True)
class Subset:
    """A named list of WordNet ids; ``names`` are the class names shown (the wnids when unknown)."""

    name: str
    wnids: tuple[str, ...]
    names: tuple[str, ...]


@cache
def subsets() -> dict[str, Subset]:
    """The subsets shipped in ``imagenet_subsets.toml``, by dataset name."""
    text = (resources.files("distillkit.data") / "imagenet_subsets.toml").read_text(encoding="utf-8")
    return {
        name: Subset(name, tuple(table["wnids"]), tuple(table["names"]))
        for name, table in tomllib.loads(text).items()
    }


def read_subset_file(path: Path) -> Subset:
    """A user's class list: WordNet ids separated by white space, ``#`` starting a comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read the ImageNet class list {path}: {exc}.") from None
    wnids = tuple(word for line in text.splitlines() for word in line.partition("#")[0].split())
    if not wnids:
        raise DataError(f"The ImageNet class list {path} names no WordNet ids.", hint="One id a line.")
    repeated = sorted({w for w in wnids if wnids.count(w) > 1})
    if repeated:
        raise DataError(f"The ImageNet class list {path} repeats {', '.join(repeated)}.")
    return Subset(f"{SUBSET_PREFIX}{path}", wnids, wnids)


def _split(root: Path, split: str, subset: Subset) -> tuple[list[Path], np.ndarray]:
    paths: list[Path] = []
    labels: list[int] = []
    for label, (wnid, name) in enumerate(zip(subset.wnids, subset.names, strict=True)):
        folder = root / split / wnid
        if not folder.is_dir():
            raise DataError(
                f"ImageNet folder {root} has no {split}/{wnid}/ (class '{name}' of {subset.name}).",
                hint=_HINT,
            )
        files = image_files(folder)
        if not files:
            raise DataError(f"ImageNet folder {folder} holds no images.", hint=_HINT)
        paths += files
        labels += [label] * len(files)
    return paths, np.array(labels, dtype=np.int64)


def load_subset(subset: Subset, root: Path | None) -> ImageDataset:
    """Decode the subset's train and val images from the ImageNet folder ``root``."""
    if root is None:
        raise DataError(f"{subset.name} needs the ImageNet folder as its data directory.", hint=_HINT)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"ImageNet folder {root} has no {split}/ folder.", hint=_HINT)
    # Every folder is checked before the first (slow) decode.
    items = [_split(root, split, subset) for split in ("train", "val")]
    splits = [(decode_center_crops(paths, SIDE), labels) for paths, labels in items]
    return build(subset.name, splits[0], splits[1], subset.names, IMAGENET_MEAN, IMAGENET_STD)


def load_named_subset(name: str, root: Path | None, download: bool) -> ImageDataset:
    """A shipped subset; ImageNet cannot be downloaded automatically (it needs a licence)."""
    return load_subset(subsets()[name], root)
