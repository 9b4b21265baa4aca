"""Other tools' files: MTT's ``images/labels/lr_<tag>.pt`` sets and PNG class folders (ImageFolder).

Reading is tensor-only (``torch.load(weights_only=True)``): nothing is ever unpickled.
Writing goes through :func:`distillkit.artifacts.atomic_path`, like every file of a run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from distillkit.artifacts import atomic_path, check_soft_labels, cpu_copy, save_png, to_image, to_uint8
from distillkit.errors import StoreError


def export_mtt(out_dir: Path, images: Tensor, labels: Tensor, lr: Tensor | float) -> None:
    """Write ``images_best.pt``, ``labels_best.pt`` and ``lr_best.pt`` as MTT's evaluators expect.

    ``labels`` are class indices [n], or soft-label logits [n, classes] (the layout in which
    label-learning codes save their labels). Plain tensors only, so the files load with
    ``torch.load(weights_only=True)``.
    """
    out_dir = Path(out_dir)
    lr_tensor = torch.as_tensor(lr, dtype=torch.float32)
    for name, tensor in (("images", images), ("labels", labels), ("lr", lr_tensor)):
        with atomic_path(out_dir / f"{name}_best.pt") as tmp:
            torch.save(cpu_copy(tensor), tmp)


#: The words Hugging Face ``datasets`` reads as split names in a path (``data_files.py``).
_HF_SPLIT_WORDS = (
    "train",
    "training",
    "validation",
    "valid",
    "dev",
    "val",
    "test",
    "testing",
    "eval",
    "evaluation",
)


def class_dirname(name: str) -> str:
    """A class name usable as one directory level (no separators, never empty or dots)."""
    cleaned = re.sub(r"[^\w.\- ]+", "_", name).strip(" .")
    return cleaned or "_"


def class_folders(class_names: Sequence[str]) -> list[str]:
    """The folder of each class, ``[label] -> name``, such that sorting the names gives label order.

    torchvision's ``ImageFolder`` and Hugging Face's ``imagefolder`` both number classes by their
    sorted folder names. The class names are used as they are where they already sort in label
    order and stay distinct (digits, CIFAR-10); otherwise (FashionMNIST: "T-shirt/top", "Trouser",
    ...) each gets its zero-padded label in front ("0-T-shirt_top"), so a loader's labels are the
    dataset's, and those of its real test set.
    """
    names = [class_dirname(name) for name in class_names]
    if names == sorted(names) and len(set(names)) == len(names):
        return names
    digits = len(str(len(names) - 1))
    return [f"{label:0{digits}d}-{name}" for label, name in enumerate(names)]


def hf_split_words(folders: Sequence[str]) -> list[str]:
    """Folders whose names Hugging Face ``datasets`` would also read as a split (train, test, val...).

    Its ``imagefolder`` builder takes a split word in any path part, set off by ``-._``, a space
    or digits, for a split of that name (case-sensitive), so such a class also shows up as an
    extra split beside ``train``.
    """
    pattern = re.compile(rf"(?:^|[-._ 0-9])(?:{'|'.join(_HF_SPLIT_WORDS)})(?:$|[-._ 0-9])")
    return [name for name in folders if pattern.search(name)]


def export_png_folder(out_dir: Path, pixels: Tensor, labels: Tensor, folders: Sequence[str]) -> None:
    """Write ``out_dir/<folder of the class>/<i>.png`` (``i`` counts within a class): ImageFolder's layout."""
    out_dir = Path(out_dir)
    images = to_uint8(pixels)
    label_list = [int(v) for v in labels.reshape(-1).tolist()]
    if len(label_list) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(label_list)} labels")
    counts: dict[int, int] = {}
    for image, label in zip(images, label_list, strict=True):
        index = counts.get(label, 0)
        counts[label] = index + 1
        save_png(out_dir / folders[label] / f"{index}.png", to_image(image))


def load_mtt_set(folder: Path, tag: str | None = None) -> tuple[Tensor, Tensor, float, str]:
    """Read another tool's ``images_<tag>.pt``, ``labels_<tag>.pt`` and ``lr_<tag>.pt`` (MTT-layout files).

    Loaded with ``torch.load(weights_only=True)``, so only tensors are accepted and
    nothing is unpickled. ``tag`` defaults to ``best`` when present, otherwise the
    only (or highest numbered) tag in the folder. Returns ``(images, labels, lr, tag)``; ``labels``
    are class indices, or soft-label logits [N, classes] where the file holds them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StoreError(f"{folder} is not a folder", hint="--mtt takes the folder holding images_<tag>.pt")
    tags = sorted(p.name[len("images_") : -len(".pt")] for p in folder.glob("images_*.pt"))
    if tag is None:
        if not tags:
            raise StoreError(
                f"{folder} holds no images_<tag>.pt", hint="MTT saves images_best.pt and friends"
            )
        numbered = sorted((int(t), t) for t in tags if t.isdigit())
        tag = "best" if "best" in tags else numbered[-1][1] if numbered else tags[0] if len(tags) == 1 else ""
        if not tag:
            raise StoreError(f"{folder} holds several sets ({', '.join(tags)})", hint="pick one with --tag")
    images, labels, lr = (_load_tensor(folder / f"{name}_{tag}.pt") for name in ("images", "labels", "lr"))
    if images.dim() != 4 or not images.is_floating_point():
        raise StoreError(
            f"{folder / f'images_{tag}.pt'}: expected float images [N, C, H, W], got "
            f"{images.dtype} {tuple(images.shape)}"
        )
    labels = _mtt_labels(labels, len(images), folder / f"labels_{tag}.pt")
    if lr.numel() != 1:
        raise StoreError(
            f"{folder / f'lr_{tag}.pt'}: expected one learning rate, got shape {tuple(lr.shape)}"
        )
    return images.detach().float(), labels, float(lr.detach().reshape(())), tag


def _mtt_labels(labels: Tensor, count: int, path: Path) -> Tensor:
    """Integer class labels [count] as long, or float soft-label logits [count, classes] as float32."""
    if labels.is_floating_point() and labels.dim() == 2:
        check_soft_labels(labels, count, None, str(path))
        return labels.detach().float()
    if labels.dim() != 1 or labels.is_floating_point() or len(labels) != count:
        raise StoreError(
            f"{path}: expected {count} integer labels or float soft-label logits [{count}, classes], "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    return labels.long()


def _load_tensor(path: Path) -> Tensor:
    """One tensor from a ``.pt`` file, refusing anything that is not a plain tensor."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not for the user
            warnings.simplefilter("ignore")
            value = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StoreError(f"{path} is missing") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise StoreError(
            f"{path} is not a tensor-only file ({describe_load_failure(exc)})",
            hint="only tensors are loaded (torch.load weights_only=True)",
        ) from None
    if not isinstance(value, Tensor):
        raise StoreError(f"{path} holds a {type(value).__name__}, not a tensor")
    return value


def describe_load_failure(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words on one line.

    torch's own text runs over several lines and suggests ``weights_only=False``, which
    distillkit never does; the object that was refused (a pickled class) is what matters.
    """
    import pickle

    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds a pickled {found.group(1)} object, which is never unpickled"
    if isinstance(exc, pickle.UnpicklingError):
        return "not a tensor file torch can read without unpickling objects"
    if isinstance(exc, EOFError):
        return "the file is empty or truncated"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    return first.split(". ")[0][:160]
