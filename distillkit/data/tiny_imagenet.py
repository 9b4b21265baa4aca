"""Tiny ImageNet (``tiny-imagenet-200``): 200 classes of 64×64 RGB photos, test split = val.

Classes are numbered in sorted WordNet-id order, as torchvision's ``ImageFolder`` (and
so MTT) numbers ``train/``; ``val/val_annotations.txt`` gives each val image's class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distillkit.data.imagedataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, build, looked_in
from distillkit.data.imagefolder import read_val_annotations
from distillkit.data.images import decode_images, image_files
from distillkit.errors import DataError

FOLDER = "tiny-imagenet-200"
NUM_CLASSES = 200
SIZE = (64, 64)
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_HINT = f"Download {URL} and unzip it into --data-path DIR (giving DIR/{FOLDER}/)."


def _find(root: Path) -> Path | None:
    return next((d for d in (root / FOLDER, root) if (d / "wnids.txt").is_file()), None)


def _read_wnids(path: Path) -> list[str]:
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(wnids) != NUM_CLASSES or len(set(wnids)) != NUM_CLASSES:
        raise DataError(
            f"{path} lists {len(set(wnids))} distinct WordNet ids, expected {NUM_CLASSES}.", hint=_HINT
        )
    return sorted(wnids)


def _class_names(path: Path, wnids: list[str]) -> tuple[str, ...]:
    """Each wnid's first synonym in ``words.txt`` (``n01443537<TAB>goldfish, Carassius…``), else the wnid."""
    words: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid.strip()] = text.split(",")[0].strip()
    return tuple(words.get(wnid) or wnid for wnid in wnids)


def _train_items(folder: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    items = []
    for label, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        if not images.is_dir():
            raise DataError(
                f"Tiny ImageNet has no folder {images} for the class {wnid} of wnids.txt.", hint=_HINT
            )
        files = image_files(images)
        if not files:
            raise DataError(f"Tiny ImageNet folder {images} holds no images.", hint=_HINT)
        items += [(path, label) for path in files]
    return items


def load_tiny_imagenet(root: Path | None, download: bool) -> ImageDataset:
    """``tiny-imagenet`` from ``root/tiny-imagenet-200/`` (or ``root`` itself); nothing is downloaded."""
    if root is None:
        raise DataError(f"tiny-imagenet needs a data directory holding {FOLDER}/.", hint=_HINT)
    folder = _find(root)
    if folder is None:
        looked = looked_in([root / FOLDER, root])
        raise DataError(
            f"Tiny ImageNet not found: looked for wnids.txt in {looked}.",
            hint=_HINT + (" distillkit cannot download it for you." if download else ""),
        )
    wnids = _read_wnids(folder / "wnids.txt")
    train = _train_items(folder, wnids)
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataError(f"Tiny ImageNet has no {annotations} (the labels of the test split).", hint=_HINT)
    test = read_val_annotations(annotations, {wnid: i for i, wnid in enumerate(wnids)})
    if not test:
        raise DataError(f"{annotations} lists no images.", hint=_HINT)
    splits = []
    for items in (train, test):
        pixels = decode_images([p for p, _ in items], SIZE, "RGB", reference="Tiny ImageNet")
        splits.append((pixels, np.array([label for _, label in items], dtype=np.int64)))
    names = _class_names(folder / "words.txt", wnids)
    return build("tiny-imagenet", splits[0], splits[1], names, IMAGENET_MEAN, IMAGENET_STD)
