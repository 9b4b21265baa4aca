"""CIFAR-10/100 in either of their distributed layouts: binary records, or the python version.

The binary version (``cifar-10-batches-bin``, ``cifar-100-binary``) is preferred when both
are present, since reading it involves no pickle at all; the python version
(``cifar-10-batches-py``, ``cifar-100-python``, what torchvision downloads) is read through
the restricted unpickler of :mod:`distillkit.data.cifar_python`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from distillkit.data.cifar_python import read_batch, read_label_names
from distillkit.data.imagedataset import (
    DOWNLOAD_HINT,
    ImageDataset,
    build,
    fetch,
    looked_in,
    require_root,
)
from distillkit.errors import DataError

_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2023, 0.1994, 0.2010)
_CIFAR_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class _Layout:
    """One distributed layout: its folder, the train and test files, and the class-name source."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    names_file: str

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files)


@dataclass(frozen=True)
class _CifarSpec:
    binary: _Layout
    python: _Layout
    label_bytes: int  # binary records: CIFAR-100 stores coarse then fine label
    label_key: str  # python batches: the key of the labels used
    names_key: str  # python meta file: the key of the class names
    num_classes: int
    url: str
    md5: str


CIFAR_SETS = {
    "cifar10": _CifarSpec(
        _Layout(
            "cifar-10-batches-bin",
            tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
            ("test_batch.bin",),
            "batches.meta.txt",
        ),
        _Layout(
            "cifar-10-batches-py",
            tuple(f"data_batch_{i}" for i in range(1, 6)),
            ("test_batch",),
            "batches.meta",
        ),
        1,
        "labels",
        "label_names",
        10,
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
    ),
    "cifar100": _CifarSpec(
        _Layout("cifar-100-binary", ("train.bin",), ("test.bin",), "fine_label_names.txt"),
        _Layout("cifar-100-python", ("train",), ("test",), "meta"),
        2,
        "fine_labels",
        "fine_label_names",
        100,
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        "03b5dce01913d631647c71ecec9e9cb8",
    ),
}


def _read_cifar_records(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-size records: label byte(s), then 3072 pixels (R, G, B planes); last label wins."""
    record = label_bytes + _CIFAR_PIXELS
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise DataError(
            f"CIFAR binary file {path} is truncated or corrupt: {raw.size} bytes is not a "
            f"multiple of the {record}-byte record.",
            hint="Re-download and extract the CIFAR binary archive.",
        )
    records = raw.reshape(-1, record)
    return records[:, label_bytes:].reshape(-1, 3, 32, 32), records[:, label_bytes - 1]


def _read_class_names(path: Path, count: int) -> tuple[str, ...]:
    """Class names, one a line; the numbers ``0..count-1`` if the file is absent."""
    if not path.is_file():
        return tuple(str(i) for i in range(count))
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(names) != count:
        raise DataError(f"{path} lists {len(names)} class names, expected {count}.")
    return names


def _dirs(layout: _Layout, name: str, root: Path) -> list[Path]:
    return [root / layout.folder, root, root / name / layout.folder]


def _find(layout: _Layout, name: str, root: Path) -> Path | None:
    for folder in _dirs(layout, name, root):
        if all((folder / f).is_file() for f in layout.files):
            return folder
    return None


def _not_found(name: str, spec: _CifarSpec, root: Path) -> DataError:
    """Which layouts were looked for where, naming the files missing from a folder that exists."""
    parts = []
    for kind, layout in (("binary", spec.binary), ("python", spec.python)):
        looked = looked_in(_dirs(layout, name, root))
        part = f"the {kind} version ({layout.folder}/: {', '.join(layout.files)}) in {looked}"
        present = root / layout.folder
        if present.is_dir():
            missing = [f for f in layout.files if not (present / f).is_file()]
            part += f" ({present} lacks {', '.join(missing)})"
        parts.append(part)
    return DataError(
        f"{name} files not found: looked for {' and for '.join(parts)}.",
        hint=f"Extract {spec.url} (or the python archive) into {root}, or {DOWNLOAD_HINT}.",
    )


def _splits(
    folder: Path, layout: _Layout, read: Callable[[Path], tuple[np.ndarray, np.ndarray]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(pixels, labels) of the train and the test split, each concatenated over its files."""
    splits = []
    for files in (layout.train_files, layout.test_files):
        parts = [read(folder / f) for f in files]
        splits.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
    return splits


def load_cifar(name: str, root: Path | None, download: bool) -> ImageDataset:
    """CIFAR ``name`` from whichever layout is under ``root`` (binary first), downloading if asked."""
    spec = CIFAR_SETS[name]
    root = require_root(name, root, f"{spec.binary.folder}/ or {spec.python.folder}/")
    folder = _find(spec.binary, name, root)
    if folder is None and _find(spec.python, name, root) is None and download:
        from torchvision.datasets.utils import download_and_extract_archive

        fetch(name, root, lambda: download_and_extract_archive(spec.url, root, md5=spec.md5))
        folder = _find(spec.binary, name, root)
    if folder is not None:
        train, test = _splits(folder, spec.binary, partial(_read_cifar_records, label_bytes=spec.label_bytes))
        names = _read_class_names(folder / spec.binary.names_file, spec.num_classes)
        return build(name, train, test, names, _CIFAR_MEAN, _CIFAR_STD)
    folder = _find(spec.python, name, root)
    if folder is None:
        raise _not_found(name, spec, root)
    train, test = _splits(folder, spec.python, partial(read_batch, label_key=spec.label_key))
    meta = folder / spec.python.names_file
    names = (
        read_label_names(meta, spec.names_key, spec.num_classes)
        if meta.is_file()
        else tuple(str(i) for i in range(spec.num_classes))
    )
    return build(name, train, test, names, _CIFAR_MEAN, _CIFAR_STD)
