"""``imagefolder:PATH``: any folder of images in ImageFolder's layout, at its own size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distillkit.data.imagedataset import ImageDataset, build, channel_stats
from distillkit.data.images import IMAGE_SUFFIXES, class_dirs, decode_images, image_files, probe_images
from distillkit.errors import DataError

IMAGEFOLDER_PREFIX = "imagefolder:"


def _imagefolder_test(root: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    """Test items from ``val/val_annotations.txt`` (Tiny ImageNet), else ``test|val/<class>/``."""
    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file():
        return read_val_annotations(annotations, index)
    for split in ("test", "val"):
        folder = root / split
        if folder.is_dir():
            dirs = class_dirs(folder)
            unknown = [d.name for d in dirs if d.name not in index]
            if unknown:
                raise DataError(
                    f"{folder} has class folders that are not under {root / 'train'}: "
                    f"{', '.join(unknown[:5])}.",
                    hint="Test classes must be a subset of the training classes (same names).",
                )
            return [(path, index[d.name]) for d in dirs for path in image_files(d)]
    raise DataError(
        f"{root} has no test/ or val/ folder.",
        hint="Lay the data out as PATH/train/<class>/*.png and PATH/test/<class>/*.png.",
    )


def read_val_annotations(annotations: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    """Tiny ImageNet's ``<file>\\t<wnid>\\t<box>`` lines as (``val/images/<file>``, label) pairs."""
    items = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(
                f"{annotations} line {number} does not name a training class: {line!r}.",
                hint="Each line must be '<file>\\t<class>' with a class folder under train/.",
            )
        items.append((annotations.parent / "images" / fields[0], index[fields[1]]))
    return items


def load_imagefolder(name: str, root: Path) -> ImageDataset:
    """``PATH/train/<class>/…`` plus ``PATH/test|val/<class>/…`` or Tiny ImageNet's ``val/``."""
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(
            f"Image folder {root} has no train/ subfolder.",
            hint="Lay the data out as PATH/train/<class>/*.png and PATH/test/<class>/*.png.",
        )
    dirs = class_dirs(train_dir)
    files = [image_files(d) for d in dirs]
    train_items = [(path, i) for i, paths in enumerate(files) for path in paths]
    empty = [d.name for d, paths in zip(dirs, files, strict=True) if not paths]
    suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
    layout_hint = f"Put each class's images ({suffixes}) in train/<class>/."
    if not dirs:
        raise DataError(f"{train_dir} has no class folders.", hint=layout_hint)
    if empty:
        raise DataError(
            f"{train_dir} has class folders without images: {', '.join(empty[:5])}.",
            hint=layout_hint,
        )
    class_names = tuple(d.name for d in dirs)
    test_items = _imagefolder_test(root, {c: i for i, c in enumerate(class_names)})
    if not test_items:
        raise DataError(f"The test split of {root} holds no images.")
    paths = [path for path, _ in train_items + test_items]
    size, mode = probe_images(paths)
    train_pixels = decode_images([p for p, _ in train_items], size, mode, reference=str(paths[0]))
    test_pixels = decode_images([p for p, _ in test_items], size, mode, reference=str(paths[0]))
    mean, std = channel_stats(train_pixels, 255.0)
    return build(
        name,
        (train_pixels, np.array([label for _, label in train_items], dtype=np.int64)),
        (test_pixels, np.array([label for _, label in test_items], dtype=np.int64)),
        class_names,
        mean,
        std,
    )
