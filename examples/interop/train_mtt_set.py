"""Train fresh networks on an MTT-layout distilled set with plain torch and report test accuracy.

No distillkit import: this is what another tool sees of ``distillkit export RUN --format mtt --out
DIR`` (``images_best.pt``, ``labels_best.pt``, ``lr_best.pt``, read with ``weights_only=True``).
The protocol is ``distillkit evaluate``'s (docs/config.md): K networks, MTT's ConvNet (Conv3×3 →
instance norm → ReLU → 2×2 average pool per block, a Linear head; 1×28×28 inputs padded to 32×32
by the first conv), SGD with momentum 0.9 and weight decay 5e-4 at lr = the set's learned α,
lr × 0.1 at epoch epochs // 2, batches of 256, DSA on every batch (one op group per batch, as
MTT), accuracy on the real test set after the last epoch. Soft labels (``labels_best.pt`` holding
float [N, classes] logits, as DATM saves them) train with cross-entropy against their softmax.
Network k is seeded ``--seed`` + k (its initialisation, shuffling and augmentation);
``--distillkit-seed RUN_SEED`` uses the seeds ``distillkit evaluate`` uses instead, and then gives
its networks (docs/interop.md).

Usage:
    python examples/interop/train_mtt_set.py DIR --test fashion-mnist --model convnet-w32
    python examples/interop/train_mtt_set.py DIR --test digits-test.npz --model convnet-w32-d2 \\
        --augment color_crop_cutout_scale_rotate

``--test fashion-mnist`` (or ``mnist``) reads the IDX test files from ``--data-dir``
(default /usr/share/datasets/<name>) and normalises them with the dataset's mean/std, as the
exported images are. ``--test FILE.npz`` takes normalised test images (``images``, float
[N, C, H, W]) and ``labels``; distillkit's digits test split is written by

    python -c "import numpy as np; from distillkit.data import load_dataset; d = load_dataset('digits');
    np.savez('digits-test.npz', images=d.test_images[:].numpy(), labels=d.test_labels.numpy())"
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import pickle
import re
import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Per-channel mean and std of the IDX datasets, as the exported images were normalised.
IDX_STATS = {"fashion-mnist": (0.2861, 0.3530), "mnist": (0.1307, 0.3081)}


class AvgPool2x2(nn.Module):
    """``nn.AvgPool2d(2, 2)`` summed in distillkit's order (row pairs, then column pairs, × 1/4).

    ``nn.AvgPool2d`` gives the same averages up to the last float bit; this order makes the
    networks' numbers equal distillkit's bit for bit (its own kernels are faster, the values the same).
    """

    def forward(self, x: Tensor) -> Tensor:
        x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
        rows = x[..., 0::2, :] + x[..., 1::2, :]
        return (rows[..., 0::2] + rows[..., 1::2]) * 0.25


class ConvNet(nn.Module):
    """MTT's ConvNet with instance norm (GroupNorm with one group per channel) and average pooling."""

    def __init__(self, channels: int, classes: int, size: tuple[int, int], width: int, depth: int) -> None:
        super().__init__()
        pad = 2 if channels == 1 and size == (28, 28) else 0  # MTT's 28 → 32
        blocks: list[nn.Module] = []
        for i in range(depth):
            blocks += [
                nn.Conv2d(channels if i == 0 else width, width, 3, padding=1 + (pad if i == 0 else 0)),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(),
                AvgPool2x2(),
            ]
        self.features = nn.Sequential(*blocks)
        side_h, side_w = ((s + 2 * pad) >> depth for s in size)
        self.classifier = nn.Linear(width * side_h * side_w, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def parse_model(name: str) -> tuple[int, int]:
    """``convnet[-wN][-dN]`` → (width, depth); MTT's defaults are width 128, depth 3."""
    family, *mods = name.lower().split("-")
    sizes = {"w": 128, "d": 3}
    for mod in mods:
        found = re.fullmatch(r"([wd])(\d+)", mod)
        if family != "convnet" or found is None or int(found[2]) < 1:
            raise SystemExit(f"error: only convnet[-wN][-dN] models are supported, got {name!r}")
        sizes[found[1]] = int(found[2])
    if family != "convnet":
        raise SystemExit(f"error: only convnet[-wN][-dN] models are supported, got {name!r}")
    return sizes["w"], sizes["d"]


# -- DSA (Zhao & Bilen, 2021), MTT's parameters ------------------------------------------------


def _u(x: Tensor, g: torch.Generator, *shape: int) -> Tensor:
    return torch.rand((x.shape[0], *shape), generator=g, device=x.device, dtype=x.dtype)


def brightness(x: Tensor, g: torch.Generator) -> Tensor:
    return x + (_u(x, g, 1, 1, 1) - 0.5)


def saturation(x: Tensor, g: torch.Generator) -> Tensor:
    mean = x.mean(1, keepdim=True)
    return mean + (x - mean) * 2.0 * _u(x, g, 1, 1, 1)


def contrast(x: Tensor, g: torch.Generator) -> Tensor:
    mean = x.mean((1, 2, 3), keepdim=True)
    return mean + (x - mean) * (_u(x, g, 1, 1, 1) + 0.5)


def crop(x: Tensor, g: torch.Generator) -> Tensor:
    """Shift by whole pixels in [-s, s] per axis (s = 1/8 of the side, rounded), zero-filled."""
    b, _, h, w = x.shape
    sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    padded = F.pad(x, (sw, sw, sh, sh)).permute(0, 2, 3, 1)  # B, H', W', C
    dy = torch.randint(-sh, sh + 1, (b, 1, 1), generator=g, device=x.device)
    dx = torch.randint(-sw, sw + 1, (b, 1, 1), generator=g, device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy + sh
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx + sw
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    # Copied to standard strides: with one channel the permuted view also looks channels-last,
    # which sends the convolutions down other kernels (other rounding) than a plain batch.
    return padded[batch, rows, cols].permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


def cutout(x: Tensor, g: torch.Generator) -> Tensor:
    """Zero a square of half the side at a random centre (clipped at the borders)."""
    b, _, h, w = x.shape
    lh, lw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    cy = torch.randint(0, h + 1 - lh % 2, (b,), generator=g, device=x.device)
    cx = torch.randint(0, w + 1 - lw % 2, (b,), generator=g, device=x.device)
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_y = (ys[None] >= (cy - lh // 2)[:, None]) & (ys[None] < (cy - lh // 2 + lh)[:, None])
    in_x = (xs[None] >= (cx - lw // 2)[:, None]) & (xs[None] < (cx - lw // 2 + lw)[:, None])
    return x.masked_fill((in_y[:, :, None] & in_x[:, None, :])[:, None], 0.0)


def flip(x: Tensor, g: torch.Generator) -> Tensor:
    return torch.where(_u(x, g, 1, 1, 1) < 0.5, x.flip(3), x)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def scale(x: Tensor, g: torch.Generator) -> Tensor:
    sx, sy = (_u(x, g) * (1.2 - 1 / 1.2) + 1 / 1.2 for _ in range(2))
    zero = torch.zeros_like(sx)
    return _affine(x, torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1))


def rotate(x: Tensor, g: torch.Generator) -> Tensor:
    angle = (_u(x, g) - 0.5) * 2 * math.radians(15.0)
    c, s, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    return _affine(x, torch.stack([torch.stack([c, s, zero], 1), torch.stack([-s, c, zero], 1)], 1))


OPS = {
    "color": (brightness, saturation, contrast),
    "crop": (crop,),
    "cutout": (cutout,),
    "flip": (flip,),
    "scale": (scale,),
    "rotate": (rotate,),
}


def augment(x: Tensor, groups: list[str], g: torch.Generator) -> Tensor:
    """One op group drawn uniformly per batch (MTT's single mode)."""
    if not groups:
        return x
    for op in OPS[groups[int(torch.randint(len(groups), (1,), generator=g, device=x.device))]]:
        x = op(x, g)
    return x


# -- data --------------------------------------------------------------------------------------


def load_set(folder: Path) -> tuple[Tensor, Tensor, float]:
    """``images_best.pt``, ``labels_best.pt``, ``lr_best.pt``: tensors only (nothing is unpickled).

    ``labels_best.pt`` holds class indices [N], or soft-label logits [N, classes] (DATM's layout).
    """
    tensors = []
    for name in ("images", "labels", "lr"):
        path = folder / f"{name}_best.pt"
        if not path.is_file():
            raise SystemExit(f"error: {path} is missing (write it with `distillkit export RUN --format mtt`)")
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise SystemExit(f"error: {path} is not a tensor-only file ({type(exc).__name__})") from None
        if not isinstance(value, Tensor):
            raise SystemExit(f"error: {path} holds a {type(value).__name__}, not a tensor")
        tensors.append(value)
    images, labels, lr = tensors
    soft = labels.is_floating_point() and labels.dim() == 2  # DATM's learned soft-label logits
    return images.float(), labels.float() if soft else labels.long(), float(lr)


def label_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy against class indices, or against softmax(labels) for soft-label logits [b, classes]."""
    if labels.is_floating_point():
        return F.cross_entropy(logits, labels.softmax(dim=1))
    return F.cross_entropy(logits, labels)


def _idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_test(spec: str, data_dir: Path | None) -> tuple[Tensor, Tensor]:
    """The normalised real test set: IDX files of ``fashion-mnist``/``mnist``, or a ``.npz``."""
    if spec.endswith(".npz"):
        if not Path(spec).is_file():
            raise SystemExit(f"error: {spec} is missing")
        try:
            with np.load(spec) as arrays:  # arrays only: allow_pickle stays off
                images, labels = arrays["images"], arrays["labels"]
        except (OSError, ValueError, EOFError, KeyError) as exc:
            raise SystemExit(f"error: {spec} is not an .npz of 'images' and 'labels' ({exc})") from None
        return torch.from_numpy(images).float(), torch.from_numpy(labels).long()
    if spec not in IDX_STATS:
        raise SystemExit(f"error: --test takes {', '.join(IDX_STATS)} or a FILE.npz, got {spec!r}")
    folder = data_dir or Path("/usr/share/datasets") / spec

    def read(stem: str) -> np.ndarray:
        for path in (folder / f"{stem}.gz", folder / stem):
            if path.exists():
                return _idx(path)
        raise SystemExit(f"error: {folder} holds no {stem}(.gz); pass --data-dir")

    pixels = torch.from_numpy(read("t10k-images-idx3-ubyte").copy()).float()[:, None] / 255.0
    mean, std = IDX_STATS[spec]
    return (pixels - mean) / std, torch.from_numpy(read("t10k-labels-idx1-ubyte").astype(np.int64))


# -- the protocol ------------------------------------------------------------------------------


def train_and_test(args: argparse.Namespace, k: int, data: tuple[Tensor, ...], lr: float) -> float:
    """Network ``k``: seeded init, ``args.epochs`` epochs of SGD on the set, final test accuracy."""
    images, labels, test_x, test_y = data
    device = images.device
    torch.manual_seed(args.seed + k)
    width, depth = parse_model(args.model)
    classes = labels.shape[1] if labels.dim() == 2 else int(max(labels.max(), test_y.max())) + 1
    net = ConvNet(images.shape[1], classes, tuple(images.shape[2:]), width, depth).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=args.weight_decay)
    g = torch.Generator(device=device).manual_seed(args.seed + k)
    groups = [] if args.augment in ("", "none") else args.augment.split("_")
    net.train()
    for epoch in range(args.epochs):
        if epoch == args.epochs // 2:
            for group in opt.param_groups:
                group["lr"] = lr * 0.1
        order = torch.randperm(len(images), generator=g, device=device)
        for idx in order.split(args.batch_size):
            loss = label_loss(net(augment(images[idx], groups, g)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        correct = sum(
            int((net(test_x[i : i + 1024]).argmax(1) == test_y[i : i + 1024]).sum())
            for i in range(0, len(test_x), 1024)
        )
    return correct / len(test_x)


def evaluation_seed(run_seed: int, model: str) -> int:
    """The first network's seed in ``distillkit evaluate``: 63 bits of sha256 of (seed, "evaluate", model)."""
    digest = hashlib.sha256(repr((run_seed, "evaluate", model)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder holding images/labels/lr_best.pt")
    parser.add_argument("--test", required=True, help="fashion-mnist, mnist, or FILE.npz")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of the IDX test files")
    parser.add_argument("--model", default="convnet", help="convnet[-wN][-dN] (default convnet)")
    parser.add_argument("--augment", default="color_crop_cutout_flip_scale_rotate", help="DSA groups")
    parser.add_argument("--runs", type=int, default=5, help="networks to train (default 5)")
    parser.add_argument("--epochs", type=int, default=300, help="epochs per network (default 300)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0, help="network k is seeded seed + k")
    parser.add_argument(
        "--distillkit-seed",
        type=int,
        default=None,
        metavar="RUN_SEED",
        help="seed the networks as `distillkit evaluate` does for a run seeded RUN_SEED and this --model "
        "(spelt as distillkit spells it), which reproduces its networks",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    unknown = set(args.augment.split("_")) - set(OPS) if args.augment not in ("", "none") else set()
    if unknown:
        raise SystemExit(f"error: unknown DSA group(s) {sorted(unknown)}; known: {'_'.join(OPS)}")
    if args.distillkit_seed is not None:
        args.seed = evaluation_seed(args.distillkit_seed, args.model)
    test_x, test_y = load_test(args.test, args.data_dir)
    images, labels, lr = load_set(args.folder)
    if test_x.shape[1:] != images.shape[1:]:
        shapes = f"{tuple(images.shape[1:])} vs {tuple(test_x.shape[1:])}"
        raise SystemExit(f"error: the set's images and the test images differ in shape: {shapes}")
    data = tuple(t.to(args.device) for t in (images, labels, test_x, test_y))
    accs = [train_and_test(args, k, data, lr) for k in range(args.runs)]
    mean, std = statistics.fmean(accs), statistics.pstdev(accs) if len(accs) > 1 else 0.0
    if args.json:
        print(json.dumps({"mean": mean, "std": std, "runs": accs, "lr": lr, "images": len(images)}))
    else:
        runs = ", ".join(f"{100 * a:.2f}" for a in accs)
        print(f"{len(images)} images, lr {lr:.4g}: {100 * mean:.2f} ± {100 * std:.2f} % ({runs})")


if __name__ == "__main__":
    main()
