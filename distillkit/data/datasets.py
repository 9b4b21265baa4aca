"""Dataset registry and loaders: each dataset becomes one normalised, in-memory ``ImageDataset``.

Images stay as their decoded 8-bit pixels and are normalised per access
(:class:`~distillkit.data.pixels.NormalisedPixels`), a quarter of a float32 copy.

All readers are our own (IDX, CIFAR binary records, SVHN ``.mat``, image folders), so nothing
is ever unpickled; torchvision is used only to fetch files when ``download=True``.

Longer than 400 lines because it holds every built-in format's reader (IDX, CIFAR
binary records, SVHN ``.mat``, image folders) beside the one validation path they
share; each reader is short.
"""

from __future__ import annotations

import difflib
import gzip
import math
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from distillkit.data.holdout import stratified_split
from distillkit.data.pixels import Images, NormalisedPixels, denormalise
from distillkit.errors import DataError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

IMAGEFOLDER_PREFIX = "imagefolder:"

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
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2023, 0.1994, 0.2010)
_CHUNK = 4096
_READ_CHUNK = 1 << 20
_DOWNLOAD_HINT = "add --download (with --data-path DIR) to fetch it"


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A whole labelled dataset in memory, normalised per channel with ``mean``/``std``.

    The images are float tensors or :class:`NormalisedPixels` (what the loaders
    make); either way ``images[index]`` is a normalised float tensor.
    ``eq=False`` because comparing tensor fields with ``==`` is ambiguous.
    """

    name: str
    train_images: Images
    train_labels: torch.Tensor
    test_images: Images
    test_labels: torch.Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        """Catch inconsistent tensors here rather than deep inside training."""
        for split in ("train", "test"):
            images: Images = getattr(self, f"{split}_images")
            labels: torch.Tensor = getattr(self, f"{split}_labels")
            if len(images.shape) != 4 or not images.dtype.is_floating_point:
                raise DataError(
                    f"{self.name}: {split} images must be a float [N, C, H, W] tensor, "
                    f"got {images.dtype} {tuple(images.shape)}."
                )
            if labels.ndim != 1 or labels.dtype != torch.int64 or len(labels) != len(images):
                raise DataError(
                    f"{self.name}: {split} labels must be an int64 vector of length {len(images)}, "
                    f"got {labels.dtype} {tuple(labels.shape)}."
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(
                f"{self.name}: train images are {tuple(self.train_images.shape[1:])} but test "
                f"images are {tuple(self.test_images.shape[1:])}."
            )
        channels = self.train_images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(
                f"{self.name}: mean/std need {channels} values (one per channel), "
                f"got {len(self.mean)} and {len(self.std)}."
            )
        if not self.class_names:
            raise DataError(f"{self.name}: the dataset has no classes.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.train_images.shape[1:]
        return (int(channels), int(height), int(width))

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation of ``[C,H,W]`` or ``[N,C,H,W]`` images into [0, 1] (pictures)."""
        return denormalise(images, self.mean, self.std)


Loader = Callable[[Path | None, bool], ImageDataset]


def dataset_names() -> list[str]:
    """Every name ``load_dataset`` accepts (``imagefolder:PATH`` stands for any folder)."""
    return sorted([*_LOADERS, f"{IMAGEFOLDER_PREFIX}PATH"])


def load_dataset(spec: str, data_path: str | Path | None = None, download: bool = False) -> ImageDataset:
    """Load the dataset named ``spec`` (see :func:`dataset_names`) fully into memory."""
    root = Path(data_path).expanduser() if data_path not in (None, "") else None
    key = spec.strip()
    if key.lower().startswith(IMAGEFOLDER_PREFIX):
        return _load_imagefolder(key, Path(key[len(IMAGEFOLDER_PREFIX) :]).expanduser())
    loader = _LOADERS.get(key.lower())
    if loader is None:
        close = difflib.get_close_matches(key.lower(), dataset_names(), n=1, cutoff=0.5)
        suggestion = f"; did you mean '{close[0]}'?" if close else "."
        raise DataError(
            f"Unknown dataset '{spec}'{suggestion}",
            hint=f"Known datasets: {', '.join(dataset_names())}.",
        )
    return loader(root, download)


# --- shared helpers -------------------------------------------------------------------------


def _build(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    class_names: tuple[str, ...],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    scale: float = 255.0,
) -> ImageDataset:
    """Turn integer pixels ``[N,C,H,W]`` (``0..scale``) and labels into a normalised dataset."""
    tensors = []
    for split, (pixels, labels) in (("train", train), ("test", test)):
        if len(pixels) == 0:
            raise DataError(f"{name}: the {split} split is empty.")
        if labels.min() < 0 or labels.max() >= len(class_names):
            raise DataError(
                f"{name}: {split} labels run from {labels.min()} to {labels.max()}, "
                f"but there are {len(class_names)} classes.",
                hint="The files are corrupt or belong to another dataset; re-download them.",
            )
        # No copy when the pixels are already C-ordered in native byte order (torch needs both).
        array = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("="))
        images = NormalisedPixels(torch.from_numpy(array), scale, mean, std)
        tensors += [images, torch.from_numpy(labels.astype(np.int64))]
    return ImageDataset(name, *tensors, class_names=class_names, mean=mean, std=std)


def _channel_stats(pixels: np.ndarray, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units, in float64 chunks so big sets don't blow memory."""
    total = np.zeros(pixels.shape[1])
    total_sq = np.zeros(pixels.shape[1])
    for start in range(0, len(pixels), _CHUNK):
        chunk = pixels[start : start + _CHUNK].astype(np.float64) / scale
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += np.square(chunk).sum(axis=(0, 2, 3))
    count = pixels.shape[0] * pixels.shape[2] * pixels.shape[3]
    mean = total / count
    # A constant channel has std 0; the floor keeps normalisation finite.
    std = np.maximum(np.sqrt(np.maximum(total_sq / count - mean**2, 0.0)), 1e-6)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _require_root(name: str, root: Path | None, expected: str) -> Path:
    if root is None:
        raise DataError(
            f"{name} needs a data directory holding {expected}.",
            hint=f"Pass --data-path DIR, or {_DOWNLOAD_HINT}.",
        )
    return root


def _fetch(name: str, root: Path, fetch: Callable[[], object]) -> None:
    """Run a torchvision download; any failure becomes one clear DataError."""
    try:
        fetch()
    except Exception as exc:
        raise DataError(
            f"Downloading {name} into {root} failed: {exc}.",
            hint=f"Check the network connection, or put the {name} files into {root} by hand.",
        ) from exc


def _looked_in(dirs: list[Path]) -> str:
    return ", ".join(str(d) for d in dict.fromkeys(dirs))


# --- digits (embedded) ----------------------------------------------------------------------


def _load_digits(root: Path | None, download: bool) -> ImageDataset:
    """scikit-learn's bundled 8×8 digits (values 0..16): needs no files and no network."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = bunch.images.astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, fraction=0.25, seed=0)
    mean, std = _channel_stats(pixels[train_idx], scale=16.0)
    return _build(
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
        f"Pass --data-path DIR holding the MNIST IDX files, or {_DOWNLOAD_HINT}.",
    ),
    "fashion-mnist": _IdxSpec(
        "FashionMNIST",
        _FASHION_NAMES,
        (0.2861,),
        (0.3530,),
        "apt-get install dataset-fashion-mnist, or pass --data-path DIR holding the IDX files "
        f"(or {_DOWNLOAD_HINT}).",
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

        target = _require_root(name, root, "the IDX files")
        cls = getattr(torchvision.datasets, spec.torchvision_name)
        _fetch(name, target, lambda: [cls(target, train=t, download=True) for t in (True, False)])
        files = _find_idx_files(dirs)
    if files is None:
        raise DataError(
            f"{name} IDX files ({', '.join(_IDX_STEMS)}, optionally .gz) not found; "
            f"looked in {_looked_in(dirs)}.",
            hint=spec.hint,
        )
    train_x, train_y, test_x, test_y = (_read_idx(path) for path in files)
    for images, labels, image_file in ((train_x, train_y, files[0]), (test_x, test_y, files[2])):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{image_file} holds {images.shape} images but its label file holds {labels.shape} labels.",
                hint="The IDX files do not belong together; re-download them.",
            )
    return _build(
        name,
        (train_x[:, None], train_y),
        (test_x[:, None], test_y),
        spec.class_names,
        spec.mean,
        spec.std,
    )


# --- CIFAR-10 / CIFAR-100 (binary version, never the pickled python version) ----------------


@dataclass(frozen=True)
class _CifarSpec:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_bytes: int
    names_file: str
    num_classes: int
    pickle_folder: str
    url: str
    md5: str


_CIFAR_SETS = {
    "cifar10": _CifarSpec(
        "cifar-10-batches-bin",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        ("test_batch.bin",),
        1,
        "batches.meta.txt",
        10,
        "cifar-10-batches-py",
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
    ),
    "cifar100": _CifarSpec(
        "cifar-100-binary",
        ("train.bin",),
        ("test.bin",),
        2,
        "fine_label_names.txt",
        100,
        "cifar-100-python",
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        "03b5dce01913d631647c71ecec9e9cb8",
    ),
}
_CIFAR_PIXELS = 3 * 32 * 32


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


def _cifar_dirs(spec: _CifarSpec, name: str, root: Path) -> list[Path]:
    return [root / spec.folder, root, root / name / spec.folder]


def _cifar_dir(spec: _CifarSpec, name: str, root: Path) -> Path | None:
    for folder in _cifar_dirs(spec, name, root):
        if all((folder / f).is_file() for f in spec.train_files + spec.test_files):
            return folder
    return None


def _load_cifar(name: str, root: Path | None, download: bool) -> ImageDataset:
    spec = _CIFAR_SETS[name]
    root = _require_root(name, root, f"{spec.folder}/ (the CIFAR binary version)")
    folder = _cifar_dir(spec, name, root)
    if folder is None and download:
        from torchvision.datasets.utils import download_and_extract_archive

        _fetch(name, root, lambda: download_and_extract_archive(spec.url, root, md5=spec.md5))
        folder = _cifar_dir(spec, name, root)
    if folder is None:
        if any((d / spec.pickle_folder).is_dir() for d in (root, root / name)):
            raise DataError(
                f"Only the python (pickle) version of {name} was found under {root}; "
                "distillkit never loads pickles, since unpickling can run arbitrary code.",
                hint=f"Download the binary version ({spec.url}) and extract it into {root}, "
                f"or {_DOWNLOAD_HINT}.",
            )
        looked = _looked_in(_cifar_dirs(spec, name, root))
        raise DataError(
            f"{name} binary files not found; looked in {looked}.",
            hint=f"Extract {spec.url} into {root}, or {_DOWNLOAD_HINT}.",
        )
    splits = []
    for files in (spec.train_files, spec.test_files):
        parts = [_read_cifar_records(folder / f, spec.label_bytes) for f in files]
        splits.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
    names = _read_class_names(folder / spec.names_file, spec.num_classes)
    return _build(name, splits[0], splits[1], names, _CIFAR_MEAN, _CIFAR_STD)


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
    root = _require_root("svhn", root, " and ".join(_SVHN_FILES))
    folder = _svhn_dir(root)
    if folder is None and download:
        from torchvision.datasets import SVHN

        _fetch("svhn", root, lambda: [SVHN(root, split=s, download=True) for s in ("train", "test")])
        folder = _svhn_dir(root)
    if folder is None:
        raise DataError(
            f"SVHN files {' and '.join(_SVHN_FILES)} not found; looked in "
            f"{_looked_in([root, root / 'svhn', root / 'SVHN'])}.",
            hint=f"Pass --data-path DIR holding them, or {_DOWNLOAD_HINT}.",
        )
    train, test = (_read_svhn_mat(folder / f) for f in _SVHN_FILES)
    return _build("svhn", train, test, _DIGIT_NAMES, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))


# --- image folders (incl. Tiny ImageNet's val layout) ---------------------------------------

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
_GRAY_MODES = {"1", "L", "LA"}
_RESIZE_HINT = "Resize all images to one size first (e.g. `mogrify -resize 64x64! *.png`)."


def _image_files(folder: Path) -> list[Path]:
    """Images anywhere below ``folder`` (Tiny ImageNet nests them in ``<class>/images/``)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(
        (d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.name,
    )


def _imagefolder_test(root: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    """Test items from ``val/val_annotations.txt`` (Tiny ImageNet), else ``test|val/<class>/``."""
    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file():
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
            items.append((root / "val" / "images" / fields[0], index[fields[1]]))
        return items
    for split in ("test", "val"):
        folder = root / split
        if folder.is_dir():
            dirs = _class_dirs(folder)
            unknown = [d.name for d in dirs if d.name not in index]
            if unknown:
                raise DataError(
                    f"{folder} has class folders that are not under {root / 'train'}: "
                    f"{', '.join(unknown[:5])}.",
                    hint="Test classes must be a subset of the training classes (same names).",
                )
            return [(path, index[d.name]) for d in dirs for path in _image_files(d)]
    raise DataError(
        f"{root} has no test/ or val/ folder.",
        hint="Lay the data out as PATH/train/<class>/*.png and PATH/test/<class>/*.png.",
    )


def _open_image(path: Path) -> PILImage:
    """Open an image's header; one that claims more pixels than PIL's bomb limit is bad input.

    PIL only warns between its limit and twice that; the warning is turned into the same
    error so that no warning text reaches the user before the error line.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise DataError(
            f"Image {path} is too large to decode safely ({exc})",
            hint="Remove the file or resize the images (distillation uses small images).",
        ) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"Cannot read image {path}: {exc}.", hint="Remove or replace the file.") from exc


def _probe_images(paths: list[Path]) -> tuple[tuple[int, int], str]:
    """Read only headers: the one shared size, and L if every image is grayscale else RGB."""
    first = paths[0]
    with _open_image(first) as image:
        size = image.size
    gray = True
    for path in paths:
        with _open_image(path) as image:
            if image.size != size:
                raise DataError(
                    f"Image {path} is {image.size[0]}×{image.size[1]} but {first} is "
                    f"{size[0]}×{size[1]}; all images must share one size.",
                    hint=_RESIZE_HINT,
                )
            gray = gray and image.mode in _GRAY_MODES
    return size, "L" if gray else "RGB"


def _decode_images(paths: list[Path], size: tuple[int, int], mode: str) -> np.ndarray:
    channels = 1 if mode == "L" else 3
    pixels = np.empty((len(paths), channels, size[1], size[0]), dtype=np.uint8)
    for i, path in enumerate(paths):
        with _open_image(path) as image:
            try:
                array = np.asarray(image.convert(mode))
            except OSError as exc:
                raise DataError(
                    f"Cannot decode image {path}: {exc}.", hint="Remove or replace the file."
                ) from exc
        pixels[i] = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return pixels


def _load_imagefolder(name: str, root: Path) -> ImageDataset:
    """``PATH/train/<class>/…`` plus ``PATH/test|val/<class>/…`` or Tiny ImageNet's ``val/``."""
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(
            f"Image folder {root} has no train/ subfolder.",
            hint="Lay the data out as PATH/train/<class>/*.png and PATH/test/<class>/*.png.",
        )
    class_dirs = _class_dirs(train_dir)
    files = [_image_files(d) for d in class_dirs]
    train_items = [(path, i) for i, paths in enumerate(files) for path in paths]
    empty = [d.name for d, paths in zip(class_dirs, files, strict=True) if not paths]
    suffixes = ", ".join(sorted(_IMAGE_SUFFIXES))
    layout_hint = f"Put each class's images ({suffixes}) in train/<class>/."
    if not class_dirs:
        raise DataError(f"{train_dir} has no class folders.", hint=layout_hint)
    if empty:
        raise DataError(
            f"{train_dir} has class folders without images: {', '.join(empty[:5])}.",
            hint=layout_hint,
        )
    class_names = tuple(d.name for d in class_dirs)
    test_items = _imagefolder_test(root, {c: i for i, c in enumerate(class_names)})
    if not test_items:
        raise DataError(f"The test split of {root} holds no images.")
    paths = [path for path, _ in train_items + test_items]
    size, mode = _probe_images(paths)
    train_pixels = _decode_images([p for p, _ in train_items], size, mode)
    test_pixels = _decode_images([p for p, _ in test_items], size, mode)
    mean, std = _channel_stats(train_pixels, 255.0)
    return _build(
        name,
        (train_pixels, np.array([label for _, label in train_items], dtype=np.int64)),
        (test_pixels, np.array([label for _, label in test_items], dtype=np.int64)),
        class_names,
        mean,
        std,
    )


_LOADERS: dict[str, Loader] = {
    "digits": _load_digits,
    "mnist": partial(_load_idx_dataset, "mnist"),
    "fashion-mnist": partial(_load_idx_dataset, "fashion-mnist"),
    "cifar10": partial(_load_cifar, "cifar10"),
    "cifar100": partial(_load_cifar, "cifar100"),
    "svhn": _load_svhn,
}
