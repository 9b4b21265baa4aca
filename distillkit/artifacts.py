"""Files a run leaves behind: the synthetic set, image grids, and atomic writes.

Every write goes to a temporary file in the destination directory and is then
renamed over the target, so an interrupted run never leaves a half-written file
that a later run would trust. The synthetic set is stored as safetensors (no
pickle) beside a JSON sidecar that carries its metadata and sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from distillkit.errors import DistillkitError, StoreError

FORMAT_VERSION = 1
SYNTHETIC_TENSORS = "synthetic.safetensors"
SYNTHETIC_JSON = "synthetic.json"
#: The extra tensor of a set with soft labels: float logits [n, classes] (``labels`` stays the classes).
SOFT_LABELS = "soft_labels"
_RESERVED_TENSORS = ("images", "labels", "lr")
_RESERVED_META = ("sha256", "format_version")
GRID_MIN_CELL = 64
GRID_PAD = 2
GRID_LABEL_PAD = 6
GRID_FONT_SIZE = 14


# --------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success fsync it and rename it onto ``path``.

    The temporary file lives in the same directory so ``os.replace`` is atomic.
    On any error it is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "r+b") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a failed write() names no file; the user needs to know which
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX only; Windows cannot open directories)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_tensor_file(tensors: dict[str, Tensor], path: Path) -> None:
    """``safetensors`` ``save_file``, with its I/O failures (a full disk) raised as ``OSError``.

    safetensors reports them as a ``SafetensorError`` whose text ends in ``(os error N)``;
    as an ``OSError`` naming ``path`` they get the same one-line message as every other write.
    """
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path))
    except SafetensorError as exc:
        found = re.search(r"os error (\d+)", str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_json(path: Path, error: type[DistillkitError], missing: str, hint: str | None = None) -> Any:
    """``path``'s JSON data, or ``error`` in one line: ``missing`` when absent, the reason when unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(missing, hint=hint) from None
    except (OSError, ValueError) as exc:
        raise error(f"{path} cannot be read as JSON ({exc})") from None


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (key order kept, so files read top-down) atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, streamed so large trajectories are not held in memory."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# --------------------------------------------------------------------- synthetic set


def cpu_copy(tensor: Tensor) -> Tensor:
    """A contiguous CPU tensor that owns its memory (safetensors refuses shared storage)."""
    return tensor.detach().to("cpu", copy=True).contiguous()


def save_synthetic(
    out_dir: Path,
    images: Tensor,
    labels: Tensor,
    lr: float,
    meta: dict,
    extra_tensors: dict[str, Tensor] | None = None,
    stem: str = "synthetic",
) -> None:
    """Write ``synthetic.safetensors`` and ``synthetic.json`` (meta + checksum) atomically.

    ``extra_tensors`` carries state needed to use the images, e.g. the ZCA
    transform as ``zca.mean`` / ``zca.basis`` / ``zca.eigenvalues`` / ``zca.eps``. ``stem`` names
    other sets in the same format (``snapshots/iter-000200``).
    """
    out_dir = Path(out_dir)
    extra = dict(extra_tensors or {})
    clash = sorted(set(extra) & set(_RESERVED_TENSORS))
    if clash:
        raise ValueError(f"extra_tensors may not use the reserved names {clash}")
    tensors = {
        "images": cpu_copy(images),
        "labels": cpu_copy(labels),
        "lr": torch.tensor(float(lr), dtype=torch.float32),
        **{name: cpu_copy(value) for name, value in extra.items()},
    }
    data = save_safetensors(tensors)
    atomic_write_bytes(out_dir / f"{stem}.safetensors", data)
    sidecar = {
        **{k: v for k, v in meta.items() if k not in _RESERVED_META},
        "sha256": hashlib.sha256(data).hexdigest(),
        "format_version": FORMAT_VERSION,
    }
    atomic_write_json(out_dir / f"{stem}.json", sidecar)


def load_synthetic(
    out_dir: Path, stem: str = "synthetic"
) -> tuple[Tensor, Tensor, float, dict, dict[str, Tensor]]:
    """Read a synthetic set written by :func:`save_synthetic`, refusing corrupt files.

    Returns ``(images, labels, lr, meta, extra_tensors)``; ``meta`` is what was
    saved, without the checksum and format version.
    """
    out_dir = Path(out_dir)
    json_path = out_dir / f"{stem}.json"
    tensor_path = out_dir / f"{stem}.safetensors"
    hint = "Re-run `distillkit distill` to write the synthetic set again."
    try:
        sidecar = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{json_path} is missing.", hint=hint) from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{json_path} cannot be read as JSON ({exc}).", hint=hint) from exc
    if not isinstance(sidecar, dict) or sidecar.get("format_version") != FORMAT_VERSION:
        version = sidecar.get("format_version") if isinstance(sidecar, dict) else None
        raise StoreError(
            f"{json_path} has format_version {version!r} but this distillkit reads {FORMAT_VERSION}.",
            hint="Use the distillkit version that wrote it, or re-run the distillation.",
        )
    try:
        data = tensor_path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{tensor_path} is missing.", hint=hint) from None
    if hashlib.sha256(data).hexdigest() != sidecar.get("sha256"):
        raise StoreError(
            f"{tensor_path}: checksum mismatch with {json_path.name} (file corrupt or truncated).",
            hint=hint,
        )
    try:
        tensors = load_safetensors(data)
    except SafetensorError as exc:
        raise StoreError(f"{tensor_path} is not a valid safetensors file ({exc}).") from exc
    missing = [name for name in _RESERVED_TENSORS if name not in tensors]
    if missing:
        raise StoreError(f"{tensor_path} lacks the tensors {missing}.", hint=hint)
    images, labels, lr = (tensors.pop(name) for name in _RESERVED_TENSORS)
    meta = {k: v for k, v in sidecar.items() if k not in _RESERVED_META}
    return images, labels, float(lr), meta, tensors


def training_labels(
    labels: Tensor, extra_tensors: dict[str, Tensor], num_classes: int | None = None
) -> Tensor:
    """What networks train on: the set's soft-label logits (:data:`SOFT_LABELS`) when saved, else ``labels``.

    Sets saved before soft labels existed have none and train on their class indices as before.
    """
    soft = extra_tensors.get(SOFT_LABELS)
    if soft is None:
        return labels
    check_soft_labels(soft, len(labels), num_classes, f"{SYNTHETIC_TENSORS}: {SOFT_LABELS}")
    return soft


def check_soft_labels(soft: Tensor, count: int, num_classes: int | None, where: str) -> None:
    """Refuse soft labels that are not finite float logits [count, classes] (``where`` names them)."""
    classes = "classes" if num_classes is None else str(num_classes)
    if (
        not soft.is_floating_point()
        or soft.dim() != 2
        or len(soft) != count
        or (num_classes is not None and soft.shape[1] != num_classes)
    ):
        raise StoreError(
            f"{where}: expected float soft-label logits [{count}, {classes}], "
            f"got {soft.dtype} {tuple(soft.shape)}"
        )
    if not bool(torch.isfinite(soft).all()):
        raise StoreError(f"{where}: the soft-label logits hold NaN or infinite values")


# --------------------------------------------------------------------- pictures


def to_uint8(pixels: Tensor) -> Tensor:
    """[n, C, H, W] floats in [0, 1] → [n, H, W, C] uint8 on the CPU."""
    if pixels.dim() != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError(f"expected pixels [n, 1|3, H, W], got {tuple(pixels.shape)}")
    scaled = pixels.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def to_image(hwc: Tensor) -> Image.Image:
    """A PIL image from an [H, W, C] uint8 tensor (grey for one channel)."""
    array = hwc.numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def save_png(path: Path, image: Image.Image) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def grid_image(
    pixels: Tensor, labels: Tensor, num_classes: int, class_names: Sequence[str] | None = None
) -> Image.Image:
    """One row per class, one column per image of that class, the class name left of each row.

    Tiny images (MNIST, digits) are enlarged by an integer nearest-neighbour factor so
    each cell is at least 64 px; cells are separated by a 2 px border. Names are drawn
    with Pillow's built-in font (no font file); without ``class_names`` rows are numbered.
    """
    images = to_uint8(pixels)
    label_list = [int(v) for v in labels.reshape(-1).tolist()]
    n, height, width, channels = images.shape
    if len(label_list) != n:
        raise ValueError(f"{n} images but {len(label_list)} labels")
    names = [str(c) for c in range(num_classes)] if class_names is None else [str(c) for c in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    scale = max(1, math.ceil(GRID_MIN_CELL / min(height, width)))
    cell_h, cell_w = height * scale, width * scale
    font = _label_font()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    label_w = max(measure.textbbox((0, 0), name, font=font)[2] for name in names) + 2 * GRID_LABEL_PAD
    per_class = [label_list.count(c) for c in range(num_classes)]
    cols = max([1, *per_class])
    canvas = torch.zeros(
        num_classes * (cell_h + GRID_PAD) + GRID_PAD,
        label_w + cols * (cell_w + GRID_PAD) + GRID_PAD,
        channels,
        dtype=torch.uint8,
    )
    column = [0] * num_classes
    for image, label in zip(images, label_list, strict=True):
        if not 0 <= label < num_classes:
            raise ValueError(f"label {label} outside 0..{num_classes - 1}")
        top = GRID_PAD + label * (cell_h + GRID_PAD)
        left = label_w + GRID_PAD + column[label] * (cell_w + GRID_PAD)
        big = image.repeat_interleave(scale, dim=0).repeat_interleave(scale, dim=1)
        canvas[top : top + cell_h, left : left + cell_w] = big
        column[label] += 1
    grid = to_image(canvas)
    draw = ImageDraw.Draw(grid)
    white = 255 if channels == 1 else (255, 255, 255)
    for row, name in enumerate(names):
        _, text_top, _, text_bottom = draw.textbbox((0, 0), name, font=font)
        middle = GRID_PAD + row * (cell_h + GRID_PAD) + cell_h // 2
        draw.text((GRID_LABEL_PAD, middle - (text_top + text_bottom) // 2), name, fill=white, font=font)
    return grid


def _label_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own default font (built in, nothing read from disk or the network), 14 px where it scales."""
    try:
        return ImageFont.load_default(size=GRID_FONT_SIZE)
    except (TypeError, ValueError, ImportError, OSError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def save_grid(
    path: Path, pixels: Tensor, labels: Tensor, num_classes: int, class_names: Sequence[str] | None = None
) -> None:
    """Save :func:`grid_image` as a PNG, atomically."""
    save_png(Path(path), grid_image(pixels, labels, num_classes, class_names))


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG in memory (for embedding in a page)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_pixels(images: Tensor, meta: dict, extra_tensors: dict[str, Tensor]) -> Tensor:
    """A saved set's images as [0, 1] pixels from its own metadata (no dataset needed).

    The inverse of what the networks see: the ZCA transform saved beside the images
    (``zca.*``) is inverted first when the set was whitened, then the per-channel
    normalisation (``meta["normalisation"]``) is undone, as ``grid.png`` was drawn.
    """
    from distillkit.data.pixels import denormalise
    from distillkit.data.zca import ZCA

    norm = meta.get("normalisation")
    mean, std = (norm.get(k) if isinstance(norm, dict) else None for k in ("mean", "std"))
    channels = images.shape[1] if images.dim() == 4 else -1
    if not all(
        isinstance(v, list) and len(v) == channels and all(isinstance(x, int | float) for x in v)
        for v in (mean, std)
    ):
        raise StoreError(
            f"{SYNTHETIC_JSON} lacks the per-channel normalisation of the {channels}-channel images.",
            hint="The run directory was altered or not written by distillkit; re-run the distillation.",
        )
    images = images.detach().to("cpu", torch.float32)
    if meta.get("zca"):
        state = {k[len("zca.") :]: v for k, v in extra_tensors.items() if k.startswith("zca.")}
        if not state:
            raise StoreError(
                f"the set was ZCA-whitened but {SYNTHETIC_TENSORS} holds no ZCA state (zca.*), "
                "so its pixels cannot be recovered.",
                hint="Export it with --format mtt (the whitened images), or re-run the distillation.",
            )
        images = ZCA.from_state_dict(state).inverse(images)
    return denormalise(images, mean, std)
