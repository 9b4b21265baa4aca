"""Tiny fake copies of every dataset's files, in the real layout, for tests of the whole pipeline.

``write_fake_dataset(name, root)`` writes a few random images per class exactly where and
how the real distribution lays them out (CIFAR's Python 2 pickles, Tiny ImageNet's
``wnids.txt``/``val_annotations.txt``, an ImageNet folder holding a subset's classes, IDX
and ``.mat`` files) and returns the folder to pass as ``data_path``. Each class gets its
own base colour under the noise, so a network can learn something from them.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distillkit.data.imagenet_subsets import subsets
from distillkit.data.tiny_imagenet import FOLDER as TINY_FOLDER
from distillkit.data.tiny_imagenet import NUM_CLASSES as TINY_CLASSES

_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: Module names as numpy 1.x (which wrote the original CIFAR files) spelled them.
_PY2_MODULES = {"numpy._core.multiarray": "numpy.core.multiarray"}


class _Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's ``cPickle`` did (protocol 2): every string a byte string, numpy 1 names."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_byte_string(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_byte_string
    dispatch[bytes] = _save_byte_string

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = _PY2_MODULES.get(obj.__module__, obj.__module__)
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def write_python2_pickle(path: Path, obj: object) -> None:
    """``obj`` as the original CIFAR python files store theirs."""
    with path.open("wb") as file:
        _Python2Pickler(file, protocol=2).dump(obj)


def _pixels(rng: np.random.Generator, labels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 ``[N, *shape]`` (C, H, W): a per-class colour plus noise."""
    channels = shape[0]
    base = (np.arange(max(labels.max(initial=0) + 1, 1))[:, None] * np.array([37, 91, 151])[:channels]) % 200
    noise = rng.integers(0, 56, (len(labels), *shape))
    return (base[labels][:, :, None, None] + noise).astype(np.uint8)


def _labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def _save_jpeg(path: Path, chw: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(chw.transpose(1, 2, 0)).save(path, quality=90)


def _cifar10(root: Path, train: int, test: int, rng: np.random.Generator) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    labels = _labels(10, train, rng)
    for number, part in enumerate(np.array_split(labels, 5), start=1):
        data = _pixels(rng, part, (3, 32, 32)).reshape(len(part), -1)
        batch = {"batch_label": f"training batch {number} of 5", "labels": part.tolist(), "data": data}
        batch["filenames"] = [f"fake_{number}_{i}.png" for i in range(len(part))]
        write_python2_pickle(folder / f"data_batch_{number}", batch)
    labels = _labels(10, test, rng)
    data = _pixels(rng, labels, (3, 32, 32)).reshape(len(labels), -1)
    write_python2_pickle(
        folder / "test_batch",
        {"batch_label": "testing batch 1 of 1", "labels": labels.tolist(), "data": data},
    )
    meta = {"num_cases_per_batch": len(labels), "label_names": list(_CIFAR10_NAMES), "num_vis": 3072}
    write_python2_pickle(folder / "batches.meta", meta)
    return root


def _cifar100(root: Path, train: int, test: int, rng: np.random.Generator) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train), ("test", test)):
        labels = _labels(100, per_class, rng)
        batch = {
            "filenames": [f"fake_{i}.png" for i in range(len(labels))],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": _pixels(rng, labels, (3, 32, 32)).reshape(len(labels), -1),
        }
        write_python2_pickle(folder / split, batch)
    meta = {
        "fine_label_names": [f"fine_{i:02d}" for i in range(100)],
        "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)],
    }
    write_python2_pickle(folder / "meta", meta)
    return root


def _tiny_imagenet(root: Path, train: int, test: int, rng: np.random.Generator) -> Path:
    folder = root / TINY_FOLDER
    wnids = [f"n{10_000_000 + 7919 * i:08d}" for i in range(TINY_CLASSES)]
    order = rng.permutation(TINY_CLASSES)  # wnids.txt is not sorted in the real archive
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{wnids[i]}\n" for i in order))
    words = [f"{wnid}\tfake class {i}, synonym {i}" for i, wnid in enumerate(wnids)]
    (folder / "words.txt").write_text("n00001740\tentity\n" + "\n".join(words) + "\n")
    labels = np.repeat(np.arange(TINY_CLASSES), train)
    for index, (label, chw) in enumerate(zip(labels, _pixels(rng, labels, (3, 64, 64)), strict=True)):
        wnid = wnids[label]
        _save_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{index % train}.JPEG", chw)
        with (folder / "train" / wnid / f"{wnid}_boxes.txt").open("a") as boxes:
            boxes.write(f"{wnid}_{index % train}.JPEG\t0\t0\t63\t63\n")
    labels = _labels(TINY_CLASSES, test, rng)
    lines = []
    for index, (label, chw) in enumerate(zip(labels, _pixels(rng, labels, (3, 64, 64)), strict=True)):
        _save_jpeg(folder / "val" / "images" / f"val_{index}.JPEG", chw)
        lines.append(f"val_{index}.JPEG\t{wnids[label]}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    return root


def _imagenet_subset(name: str) -> Callable[[Path, int, int, np.random.Generator], Path]:
    def write(root: Path, train: int, test: int, rng: np.random.Generator) -> Path:
        folder = root / "imagenet"
        wnids = subsets()[name].wnids
        # Photos of several sizes and aspect ratios, like ImageNet's, to exercise resize and crop.
        sizes = ((3, 150, 200), (3, 200, 140), (3, 128, 128))
        for split, per_class in (("train", train), ("val", test)):
            for label, wnid in enumerate(wnids):
                for i in range(per_class):
                    shape = sizes[(label + i) % len(sizes)]
                    stem = (
                        f"{wnid}_{i}" if split == "train" else f"ILSVRC2012_val_{label * per_class + i:08d}"
                    )
                    _save_jpeg(
                        folder / split / wnid / f"{stem}.JPEG", _pixels(rng, np.array([label]), shape)[0]
                    )
        return folder

    return write


def _idx(stem: str) -> Callable[[Path, int, int, np.random.Generator], Path]:
    def write(root: Path, train: int, test: int, rng: np.random.Generator) -> Path:
        folder = root / stem
        folder.mkdir(parents=True, exist_ok=True)
        for prefix, per_class in (("train", train), ("t10k", test)):
            labels = _labels(10, per_class, rng)
            images = _pixels(rng, labels, (1, 28, 28))[:, 0]
            for kind, array in (("images-idx3", images), ("labels-idx1", labels.astype(np.uint8))):
                header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
                (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))
        return folder

    return write


def _svhn(root: Path, train: int, test: int, rng: np.random.Generator) -> Path:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train), ("test", test)):
        labels = _labels(10, per_class, rng)
        images = _pixels(rng, labels, (3, 32, 32)).transpose(2, 3, 1, 0)  # H, W, C, N
        stored = np.where(labels == 0, 10, labels)  # SVHN stores the digit 0 as 10
        savemat(root / f"{split}_32x32.mat", {"X": images, "y": stored[:, None]})
    return root


def _digits(root: Path, train: int, test: int, rng: np.random.Generator) -> Path:
    return root  # embedded in scikit-learn: needs no files


_WRITERS: dict[str, Callable[[Path, int, int, np.random.Generator], Path]] = {
    "digits": _digits,
    "mnist": _idx("mnist"),
    "fashion-mnist": _idx("fashion-mnist"),
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "svhn": _svhn,
    "tiny-imagenet": _tiny_imagenet,
    **{name: _imagenet_subset(name) for name in subsets()},
}


def fake_dataset_names() -> list[str]:
    """The datasets :func:`write_fake_dataset` can write."""
    return sorted(_WRITERS)


def write_fake_dataset(
    dataset: str, root: Path, *, train_per_class: int = 2, test_per_class: int = 1, seed: int = 0
) -> Path:
    """Write a tiny random copy of ``dataset``'s files under ``root``; returns the ``data_path`` to use."""
    writer = _WRITERS.get(dataset.lower())
    if writer is None:
        raise ValueError(f"no fake layout for {dataset!r}; known: {', '.join(fake_dataset_names())}")
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError("train_per_class and test_per_class must be at least 1")
    return writer(Path(root), train_per_class, test_per_class, np.random.default_rng(seed))
