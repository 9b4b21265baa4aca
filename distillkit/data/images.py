"""Decoding image files into uint8 ``[N, C, H, W]`` arrays, one file at a time (PIL).

Every image is opened, converted and copied into one preallocated array, then closed,
so a folder of any size never holds more than one decoded PIL image.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from distillkit.errors import DataError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
_GRAY_MODES = {"1", "L", "LA"}
_RESIZE_HINT = "Resize all images to one size first (e.g. `mogrify -resize 64x64! *.png`)."


def image_files(folder: Path) -> list[Path]:
    """Images anywhere below ``folder`` (Tiny ImageNet nests them in ``<class>/images/``)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def class_dirs(folder: Path) -> list[Path]:
    """The visible subfolders of ``folder``, sorted by name (ImageFolder's class order)."""
    return sorted(
        (d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.name,
    )


def open_image(path: Path) -> PILImage:
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
    except FileNotFoundError:
        raise DataError(f"Image {path} does not exist.", hint="Restore the file or its listing.") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"Cannot read image {path}: {exc}.", hint="Remove or replace the file.") from exc


def probe_images(paths: list[Path]) -> tuple[tuple[int, int], str]:
    """Read only headers: the one shared size, and L if every image is grayscale else RGB."""
    first = paths[0]
    with open_image(first) as image:
        size = image.size
    gray = True
    for path in paths:
        with open_image(path) as image:
            _check_size(path, image.size, size, first)
            gray = gray and image.mode in _GRAY_MODES
    return size, "L" if gray else "RGB"


def _check_size(path: Path, found: tuple[int, int], size: tuple[int, int], reference: Path | str) -> None:
    if found != size:
        raise DataError(
            f"Image {path} is {found[0]}×{found[1]} but {reference} is {size[0]}×{size[1]}; "
            "all images must share one size.",
            hint=_RESIZE_HINT,
        )


def _pixels(path: Path, image: PILImage, mode: str) -> np.ndarray:
    """The decoded pixels as ``[C, H, W]`` uint8; a truncated or corrupt file is one error line."""
    try:
        array = np.asarray(image.convert(mode))
    except OSError as exc:
        raise DataError(f"Cannot decode image {path}: {exc}.", hint="Remove or replace the file.") from exc
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode_images(
    paths: list[Path], size: tuple[int, int], mode: str, reference: str | None = None
) -> np.ndarray:
    """Decode images that all are ``size`` (width, height) into ``[N, C, H, W]`` in ``mode`` (L or RGB).

    ``reference`` names where the size comes from in the error about an image of another
    size (the first image, when the caller probed it).
    """
    channels = 1 if mode == "L" else 3
    pixels = np.empty((len(paths), channels, size[1], size[0]), dtype=np.uint8)
    for i, path in enumerate(paths):
        with open_image(path) as image:
            _check_size(path, image.size, size, reference or str(paths[0]))
            pixels[i] = _pixels(path, image, mode)
    return pixels


def decode_center_crops(paths: list[Path], side: int) -> np.ndarray:
    """RGB ``[N, 3, side, side]``: each image resized so its short side is ``side``, centre-cropped.

    JPEG files are decoded at the smallest DCT scale that still leaves ``side`` pixels on
    the short side (``draft``), which cuts decoding time several-fold for ImageNet-sized
    photos; the bilinear resize after it does the rest.
    """
    from PIL import Image

    pixels = np.empty((len(paths), 3, side, side), dtype=np.uint8)
    for i, path in enumerate(paths):
        with open_image(path) as image:
            try:
                image.draft("RGB", (side, side))
                width, height = image.size
                scale = side / min(width, height)
                new = (max(side, round(width * scale)), max(side, round(height * scale)))
                left, top = (new[0] - side) // 2, (new[1] - side) // 2
                box = (left, top, left + side, top + side)
                resized = image.convert("RGB").resize(new, Image.Resampling.BILINEAR).crop(box)
            except OSError as exc:
                raise DataError(
                    f"Cannot decode image {path}: {exc}.", hint="Remove or replace the file."
                ) from exc
            pixels[i] = np.asarray(resized).transpose(2, 0, 1)
    return pixels
