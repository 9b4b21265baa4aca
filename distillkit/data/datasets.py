"""The dataset registry (``load_dataset``) and the small built-in readers (digits, IDX, SVHN).

Every reader is our own; nothing is unpickled except CIFAR's python version, through a
restricted unpickler that admits only numpy arrays and plain containers
(:mod:`distillkit.data.cifar_python`). torchvision is used only to fetch files when
``download=True``. Larger readers live in their own modules: :mod:`~distillkit.data.cifar`,
:mod:`~distillkit.data.tiny_imagenet`, :mod:`~distillkit.data.imagenet_subsets`,
:mod:`~distillkit.data.imagefolder`.
"""

from __future__ import annotations

import difflib
import gzip
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from distillkit.data.cifar import load_cifar
from distillkit.data.imagedataset import (
    DOWNLOAD_HINT,
    ImageDataset,
    build,
    channel_stats,
    fetch,
    looked_in,
    require_root,
)
from distillkit.data.imagefolder import IMAGEFOLDER_PREFIX, load_imagefolder
from distillkit.data.imagenet_subsets import (
    SUBSET_PREFIX,
    load_named_subset,
    load_subset,
    read_subset_file,
    subsets,
)
from distillkit.data.tiny_imagenet import load_tiny_imagenet
from distillkit.errors import DataError

#: Names that carry a path: ``imagefolder:PATH`` (a folder), ``imagenet-subset:PATH`` (a class list).
PATH_PREFIXES = (IMAGEFOLDER_PREFIX, SUBSET_PREFIX)

# Where distribution packages install datasets; a module constant so tests can redirect it.
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "mnist": (Path("/usr/share/datasets/mnist"),),
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

_DIGIT_NAMES = tuple(str(i) for i in range(10))
_FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_READ_CHUNK = 1 << 20

Loader = Callable[[Path | None, bool], ImageDataset]


def dataset_names() -> list[str]:
    """Every name ``load_dataset`` accepts (``imagefolder:PATH`` stands for any folder, and so on)."""
    return sorted([*_LOADERS, *(f"{prefix}PATH" for prefix in PATH_PREFIXES)])


def load_dataset(spec: str, data_path: str | Path | None = None, download: bool = False) -> ImageDataset:
    """Load the dataset named ``spec`` (see :func:`dataset_names`) fully into memory."""
    root = Path(data_path).expanduser() if data_path not in (None, "") else None
    key = spec.strip()
    if key.lower().startswith(IMAGEFOLDER_PREFIX):
        return load_imagefolder(key, Path(key[len(IMAGEFOLDER_PREFIX) :]).expanduser())
    if key.lower().startswith(SUBSET_PREFIX):
        return load_subset(read_subset_file(Path(key[len(SUBSET_PREFIX) :]).expanduser()), root)
    loader = _LOADERS.get(key.lower())
    if loader is None:
        close = difflib.get_close_matches(key.lower(), dataset_names(), n=1, cutoff=0.5)
        suggestion = f"; did you mean '{close[0]}'?" if close else "."
        raise DataError(
            f"Unknown dataset '{spec}'{suggestion}",
            hint=f"Known datasets: {', '.join(dataset_names())}.",
        )
    return loader(root, download)


# --- digits (embedded) ----------------------------------------------------------------------


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed per-class split, identical on every machine, so runs are comparable everywhere."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(len(members) * test_fraction)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _load_digits(root: Path | None, download: bool) -> ImageDataset:
    """scikit-learn's bundled 8×8 digits (values 0..16): needs no files and no network."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = bunch.images.astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = _stratified_split(labels, test_fraction=0.25, seed=0)
    mean, std = channel_stats(pixels[train_idx], scale=16.0)
    return build(
        "digits",
        (pixels[train_idx], labels[train_idx]),
        (pixels[test_idx], labels[test_idx]),
        _DIGIT_NAMES,
        mean,
        std,
        scale=16.0,
    )


# --- MNIST / FashionMNIST (IDX files) -------------------------------------------------------

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class _IdxSpec:
    torchvision_name: str
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hint: str


_IDX_SETS = {
    "mnist": _IdxSpec(
        "MNIST",
        _DIGIT_NAMES,
        (0.1307,),
        (0.3081,),
        f"Pass --data-path DIR holding the MNIST IDX files, or {DOWNLOAD_HINT}.",
    ),
    "fashion-mnist": _IdxSpec(
        "FashionMNIST",
        _FASHION_NAMES,
        (0.2861,),
        (0.3530,),
        "apt-get install dataset-fashion-mnist, or pass --data-path DIR holding the IDX files "
        f"(or {DOWNLOAD_HINT}).",
    ),
}


def _read_bytes(path: Path) -> bytearray:
    """The (gunzipped) file in one writable buffer, grown chunk by chunk.

    The image array is a view of this buffer, so the pixels are never held twice
    (reading whole then copying would double the peak, and bytes are read-only).
    """
    buffer = bytearray()
    with gzip.open(path) if path.suffix == ".gz" else path.open("rb") as file:
        while chunk := file.read(_READ_CHUNK):
            buffer += chunk
    return buffer


def _read_idx(path: Path) -> np.ndarray:
    """Parse one (optionally gzipped) IDX file, checking magic number, dims and size."""
    hint = f"Replace {path.name} with an intact copy (re-download it)."
    try:
        raw = _read_bytes(path)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"Cannot read IDX file {path}: {exc}.", hint=hint) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number).", hint=hint)
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataError(f"IDX file {path} is truncated inside its header.", hint=hint)
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = offset + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"IDX file {path} is truncated or corrupt: shape {dims} needs {expected} bytes, "
            f"found {len(raw)}.",
            hint=hint,
        )
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)


def _idx_dirs(name: str, root: Path | None) -> list[Path]:
    """Folders to search, the user's first: ``DIR``, ``DIR/<name>``, ``DIR/<Name>/raw``."""
    dirs: list[Path] = []
    if root is not None:
        for sub in (name, _IDX_SETS[name].torchvision_name):
            dirs += [root / sub / "raw", root / sub]
        dirs.insert(0, root)
    return dirs + list(SYSTEM_DATA_DIRS.get(name, ()))


def _find_idx_files(dirs: list[Path]) -> list[Path] | None:
    for folder in dirs:
        found = [_first_existing(folder / stem, folder / f"{stem}.gz") for stem in _IDX_STEMS]
        if all(found):
            return [path for path in found if path is not None]
    return None


def _first_existing(*paths: Path) -> Path | None:
    return next((path for path in paths if path.is_file()), None)


def _load_idx_dataset(name: str, root: Path | None, download: bool) -> ImageDataset:
    spec = _IDX_SETS[name]
    dirs = _idx_dirs(name, root)
    files = _find_idx_files(dirs)
    if files is None and download:
        import torchvision.datasets

        target = require_root(name, root, "the IDX files")
        cls = getattr(torchvision.datasets, spec.torchvision_name)
        fetch(name, target, lambda: [cls(target, train=t, download=True) for t in (True, False)])
        files = _find_idx_files(dirs)
    if files is None:
        raise DataError(
            f"{name} IDX files ({', '.join(_IDX_STEMS)}, optionally .gz) not found; "
            f"looked in {looked_in(dirs)}.",
            hint=spec.hint,
        )
    train_x, train_y, test_x, test_y = (_read_idx(path) for path in files)
    for images, labels, image_file in ((train_x, train_y, files[0]), (test_x, test_y, files[2])):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{image_file} holds {images.shape} images but its label file holds {labels.shape} labels.",
                hint="The IDX files do not belong together; re-download them.",
            )
    return build(
        name,
        (train_x[:, None], train_y),
        (test_x[:, None], test_y),
        spec.class_names,
        spec.mean,
        spec.std,
    )


# --- SVHN (torchvision's .mat files) --------------------------------------------------------

_SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def _svhn_dir(root: Path) -> Path | None:
    for folder in (root, root / "svhn", root / "SVHN"):
        if all((folder / f).is_file() for f in _SVHN_FILES):
            return folder
    return None


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise DataError(
            "Reading SVHN needs scipy, which is not installed.", hint="pip install scipy"
        ) from exc
    try:
        mat = loadmat(path, variable_names=["X", "y"])
        images, labels = mat["X"], mat["y"].reshape(-1).astype(np.int64)
    except Exception as exc:
        raise DataError(
            f"Cannot read SVHN file {path}: {exc}.", hint="Re-download the SVHN .mat files."
        ) from exc
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(labels):
        raise DataError(
            f"SVHN file {path} holds images of shape {images.shape} and {len(labels)} labels; "
            "expected 32×32×3×N with N labels.",
            hint="Re-download the SVHN .mat files.",
        )
    labels[labels == 10] = 0  # SVHN stores the digit 0 as class 10
    return images.transpose(3, 2, 0, 1), labels


def _load_svhn(root: Path | None, download: bool) -> ImageDataset:
    root = require_root("svhn", root, " and ".join(_SVHN_FILES))
    folder = _svhn_dir(root)
    if folder is None and download:
        from torchvision.datasets import SVHN

        fetch("svhn", root, lambda: [SVHN(root, split=s, download=True) for s in ("train", "test")])
        folder = _svhn_dir(root)
    if folder is None:
        raise DataError(
            f"SVHN files {' and '.join(_SVHN_FILES)} not found; looked in "
            f"{looked_in([root, root / 'svhn', root / 'SVHN'])}.",
            hint=f"Pass --data-path DIR holding them, or {DOWNLOAD_HINT}.",
        )
    train, test = (_read_svhn_mat(folder / f) for f in _SVHN_FILES)
    return build("svhn", train, test, _DIGIT_NAMES, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))


_LOADERS: dict[str, Loader] = {
    "digits": _load_digits,
    "mnist": partial(_load_idx_dataset, "mnist"),
    "fashion-mnist": partial(_load_idx_dataset, "fashion-mnist"),
    "cifar10": partial(load_cifar, "cifar10"),
    "cifar100": partial(load_cifar, "cifar100"),
    "svhn": _load_svhn,
    "tiny-imagenet": load_tiny_imagenet,
    **{name: partial(load_named_subset, name) for name in subsets()},
}
