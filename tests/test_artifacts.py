"""Synthetic-set files, image grids, exports and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from distillkit.artifacts import (
    SYNTHETIC_JSON,
    SYNTHETIC_TENSORS,
    atomic_path,
    atomic_write_json,
    load_synthetic,
    save_grid,
    save_synthetic,
)
from distillkit.errors import StoreError
from distillkit.interop import class_folders, export_mtt, export_png_folder


def _synthetic(n_classes: int = 3, ipc: int = 2, channels: int = 1, size: int = 8):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n_classes * ipc, channels, size, size, generator=generator)
    labels = torch.arange(n_classes).repeat_interleave(ipc)
    return images, labels


def test_synthetic_round_trip(tmp_path: Path) -> None:
    images, labels = _synthetic()
    zca = {"zca.mean": torch.randn(64), "zca.components": torch.randn(64, 64)}
    meta = {"dataset": "digits", "class_names": ["0", "1", "2"], "metrics": {"acc": 0.9}}
    save_synthetic(tmp_path, images, labels, 0.0123, meta, extra_tensors=zca)
    sidecar = json.loads((tmp_path / SYNTHETIC_JSON).read_text())
    assert sidecar["format_version"] == 1
    assert len(sidecar["sha256"]) == 64

    got_images, got_labels, lr, got_meta, extra = load_synthetic(tmp_path)
    assert torch.equal(got_images, images)
    assert torch.equal(got_labels, labels)
    assert lr == pytest.approx(0.0123)
    assert got_meta == meta
    assert set(extra) == set(zca)
    for name, tensor in zca.items():
        assert torch.equal(extra[name], tensor)


def test_reserved_extra_tensor_name_is_refused(tmp_path: Path) -> None:
    images, labels = _synthetic()
    with pytest.raises(ValueError, match="reserved"):
        save_synthetic(tmp_path, images, labels, 0.01, {}, extra_tensors={"lr": torch.ones(1)})


def test_corrupt_synthetic_file(tmp_path: Path) -> None:
    images, labels = _synthetic()
    save_synthetic(tmp_path, images, labels, 0.01, {"dataset": "digits"})
    path = tmp_path / SYNTHETIC_TENSORS
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"synthetic\.safetensors: checksum mismatch"):
        load_synthetic(tmp_path)


def test_missing_synthetic_files(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"synthetic\.json is missing"):
        load_synthetic(tmp_path)
    images, labels = _synthetic()
    save_synthetic(tmp_path, images, labels, 0.01, {})
    (tmp_path / SYNTHETIC_TENSORS).unlink()
    with pytest.raises(StoreError, match=r"synthetic\.safetensors is missing"):
        load_synthetic(tmp_path)


@pytest.mark.parametrize(("channels", "size", "mode"), [(1, 8, "L"), (3, 40, "RGB")])
def test_grid_png_size(tmp_path: Path, channels: int, size: int, mode: str) -> None:
    n_classes, ipc = 3, 2
    images, labels = _synthetic(n_classes, ipc, channels, size)
    path = tmp_path / "grid.png"
    save_grid(path, images, labels, n_classes, ["zero", "one", "two"])
    cell = size * 8 if size == 8 else size * 2  # enlarged by an integer factor to reach 64 px
    with Image.open(path) as grid:
        assert grid.mode == mode
        label_w = grid.width - (ipc * (cell + 2) + 2)
        assert 20 < label_w < 200  # a column for the names, as wide as the longest one
        assert grid.height == n_classes * (cell + 2) + 2
        # The top-left cell holds the first image, enlarged by nearest-neighbour.
        expected = round(float(images[0, 0, 0, 0]) * 255)
        scale = cell // size
        for x, y in [(label_w + 2, 2), (label_w + 2 + scale - 1, 2 + scale - 1)]:
            first = grid.getpixel((x, y))
            assert (first if mode == "L" else first[0]) == expected


def test_digits_ipc1_grid_is_readable(tmp_path: Path) -> None:
    """The default run's grid: 8×8 images become 64 px cells, ten labelled rows."""
    images, labels = _synthetic(10, 1, 1, 8)
    save_grid(tmp_path / "grid.png", images, labels, 10, [str(c) for c in range(10)])
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.height == 10 * 66 + 2 and grid.width >= 64 + 4


def test_grid_labels_change_pixels(tmp_path: Path) -> None:
    """The names are drawn: their column differs between two name lists and is not blank."""
    images, labels = _synthetic(2, 1, 1, 8)
    columns = []
    for names in (["cat", "dog"], ["sneaker", "bag"]):
        save_grid(tmp_path / "grid.png", images, labels, 2, names)
        with Image.open(tmp_path / "grid.png") as grid:
            strip = grid.crop((0, 0, 24, grid.height))  # the names' first letters
            columns.append(strip.tobytes())
    assert columns[0] != columns[1]
    assert all(max(column) > 128 for column in columns)  # white text on the black border


def test_grid_refuses_a_wrong_number_of_names(tmp_path: Path) -> None:
    images, labels = _synthetic(3, 1, 1, 8)
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        save_grid(tmp_path / "grid.png", images, labels, 3, ["a", "b"])


def test_atomic_path_leaves_target_on_error(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_export_mtt_loads_with_weights_only(tmp_path: Path) -> None:
    images, labels = _synthetic()
    export_mtt(tmp_path, images, labels, torch.tensor(0.02))
    loaded = {
        name: torch.load(tmp_path / f"{name}_best.pt", weights_only=True)
        for name in ("images", "labels", "lr")
    }
    assert torch.equal(loaded["images"], images)
    assert torch.equal(loaded["labels"], labels)
    assert float(loaded["lr"]) == pytest.approx(0.02)


def test_export_png_folder(tmp_path: Path) -> None:
    images, labels = _synthetic(n_classes=3, ipc=2, channels=3)
    folders = class_folders(["cat", "dog", "a/b"])
    assert folders == ["0-cat", "1-dog", "2-a_b"]  # "a_b" would sort first: labels go in front
    export_png_folder(tmp_path, images, labels, folders)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert files == ["0-cat/0.png", "0-cat/1.png", "1-dog/0.png", "1-dog/1.png", "2-a_b/0.png", "2-a_b/1.png"]
    with Image.open(tmp_path / "1-dog" / "1.png") as picture:
        assert picture.size == (8, 8)
        assert picture.mode == "RGB"
