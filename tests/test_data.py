"""Dataset loaders: embedded digits, IDX, CIFAR binary, SVHN .mat and image folders (tiny files)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distillkit.data import ImageDataset, dataset_names, load_dataset
from distillkit.data import datasets as ds
from distillkit.errors import DataError

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _no_system_datasets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep installed system datasets out of the way so lookups only see tmp files."""
    monkeypatch.setattr(ds, "SYSTEM_DATA_DIRS", {"fashion-mnist": (tmp_path / "no-system",)})


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_set(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = False) -> dict:
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) + 3) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = _idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


def test_dataset_names() -> None:
    assert dataset_names() == [
        "cifar10",
        "cifar100",
        "digits",
        "fashion-mnist",
        "imagefolder:PATH",
        "imagefruit",
        "imagemeow",
        "imagenet-subset:PATH",
        "imagenette",
        "imagesquawk",
        "imagewoof",
        "imageyellow",
        "mnist",
        "svhn",
        "tiny-imagenet",
    ]


def test_digits_shapes_and_normalisation() -> None:
    data = load_dataset("digits")
    assert data.image_shape == (1, 8, 8)
    assert data.num_classes == 10
    assert data.class_names == tuple(str(i) for i in range(10))
    assert len(data.train_images) + len(data.test_images) == 1797
    assert data.train_images.dtype == torch.float32
    assert data.train_labels.dtype == torch.int64
    train = data.train_images[:]
    assert train.dtype == torch.float32
    assert abs(train.mean().item()) < 1e-4
    assert abs(train.std().item() - 1.0) < 1e-3
    # Stratified: every class has about a quarter of its images in the test split.
    test_counts = torch.bincount(data.test_labels, minlength=10)
    all_counts = test_counts + torch.bincount(data.train_labels, minlength=10)
    assert torch.all((test_counts.float() / all_counts.float() - 0.25).abs() < 0.01)


def test_digits_split_is_deterministic() -> None:
    first, second = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(first.train_images[:], second.train_images[:])
    assert torch.equal(first.train_labels, second.train_labels)
    assert torch.equal(first.test_labels, second.test_labels)
    assert first.mean == second.mean and first.std == second.std


def test_digits_to_pixels_recovers_raw_values() -> None:
    from sklearn.datasets import load_digits

    data = load_dataset("digits")
    pixels = data.to_pixels(data.train_images[:]) * 16
    assert pixels.min() >= 0 and pixels.max() <= 16
    assert torch.allclose(pixels, pixels.round(), atol=1e-4)
    raw = {tuple(img.ravel()) for img in load_digits().images.astype(int)}
    assert tuple(pixels[0].round().int().ravel().tolist()) in raw


@pytest.mark.parametrize("gz", [False, True])
def test_idx_set_loads(tmp_path: Path, gz: bool) -> None:
    arrays = _write_idx_set(tmp_path / "idx", gz=gz)
    data = load_dataset("mnist", tmp_path / "idx")
    assert data.image_shape == (1, 28, 28)
    assert len(data.train_images) == 6 and len(data.test_images) == 4
    assert data.train_labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert data.test_labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    pixels = (data.to_pixels(data.train_images[:]) * 255).round().to(torch.uint8)
    assert np.array_equal(pixels[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert data.mean == (0.1307,) and data.std == (0.3081,)


def test_idx_torchvision_raw_layout(tmp_path: Path) -> None:
    _write_idx_set(tmp_path / "FashionMNIST" / "raw", gz=True)
    data = load_dataset("fashion-mnist", tmp_path)
    assert data.class_names[0] == "T-shirt/top" and data.num_classes == 10
    assert data.mean == (0.2861,)


def test_truncated_idx_is_a_data_error(tmp_path: Path) -> None:
    _write_idx_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", tmp_path)


def test_corrupt_gzip_idx_is_a_data_error(tmp_path: Path) -> None:
    _write_idx_set(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz"):
        load_dataset("mnist", tmp_path)


def test_bad_idx_magic_is_a_data_error(tmp_path: Path) -> None:
    _write_idx_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="magic"):
        load_dataset("mnist", tmp_path)


def test_missing_idx_dir_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="looked in") as info:
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    assert "apt-get install dataset-fashion-mnist" in (info.value.hint or "")
    assert "--data-path" in (info.value.hint or "")


def test_installed_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (SYSTEM_FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("FashionMNIST not installed: apt-get install dataset-fashion-mnist")
    monkeypatch.setattr(ds, "SYSTEM_DATA_DIRS", {"fashion-mnist": (SYSTEM_FASHION,)})
    data = load_dataset("fashion-mnist")
    assert len(data.train_images) == 60000 and len(data.test_images) == 10000
    assert data.image_shape == (1, 28, 28)
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10


def _cifar_records(labels: list[tuple[int, ...]], seed: int) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    records = np.concatenate([np.array(labels, dtype=np.uint8), pixels], axis=1)
    return records.tobytes(), pixels.reshape(-1, 3, 32, 32)


def _write_cifar10(folder: Path) -> tuple[list[int], np.ndarray]:
    folder.mkdir(parents=True)
    train_labels: list[int] = []
    for i in range(1, 6):
        labels = [(i + j) % 10 for j in range(2)]
        data, _ = _cifar_records([(label,) for label in labels], seed=i)
        (folder / f"data_batch_{i}.bin").write_bytes(data)
        train_labels += labels
    data, test_pixels = _cifar_records([(7,), (2,), (9,)], seed=99)
    (folder / "test_batch.bin").write_bytes(data)
    names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n"
    (folder / "batches.meta.txt").write_text(names)
    return train_labels, test_pixels


def test_cifar10_binary_loads(tmp_path: Path) -> None:
    train_labels, test_pixels = _write_cifar10(tmp_path / "cifar-10-batches-bin")
    data = load_dataset("cifar10", tmp_path)
    assert data.image_shape == (3, 32, 32)
    assert data.train_labels.tolist() == train_labels
    assert data.test_labels.tolist() == [7, 2, 9]
    assert data.class_names[0] == "airplane" and data.class_names[-1] == "truck"
    pixels = (data.to_pixels(data.test_images[:]) * 255).round().to(torch.uint8)
    assert np.array_equal(pixels.numpy(), test_pixels)


def test_cifar100_binary_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    train, _ = _cifar_records([(1, 42), (19, 99), (0, 5)], seed=0)
    test, _ = _cifar_records([(3, 77)], seed=1)
    (folder / "train.bin").write_bytes(train)
    (folder / "test.bin").write_bytes(test)
    data = load_dataset("cifar100", tmp_path)
    assert data.train_labels.tolist() == [42, 99, 5]
    assert data.test_labels.tolist() == [77]
    assert data.num_classes == 100


def test_cifar_truncated_batch_is_a_data_error(tmp_path: Path) -> None:
    _write_cifar10(tmp_path / "cifar-10-batches-bin")
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"data_batch_3\.bin"):
        load_dataset("cifar10", tmp_path)


def test_cifar_partial_python_layout_names_the_missing_files(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x04not read")
    with pytest.raises(DataError, match=r"binary version .* python version .* lacks data_batch_2"):
        load_dataset("cifar10", tmp_path)


def test_cifar_needs_a_data_path() -> None:
    with pytest.raises(DataError, match="data directory") as info:
        load_dataset("cifar10")
    assert "--data-path" in (info.value.hint or "")


def test_svhn_mat_loads(tmp_path: Path) -> None:
    savemat = pytest.importorskip("scipy.io").savemat
    rng = np.random.default_rng(0)
    for split, labels in (("train", [10, 1, 5]), ("test", [3, 10])):
        images = rng.integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": images, "y": np.array(labels)[:, None]})
        if split == "test":
            test_images = images
    data = load_dataset("svhn", tmp_path)
    assert data.train_labels.tolist() == [0, 1, 5]
    assert data.test_labels.tolist() == [3, 0]
    assert data.image_shape == (3, 32, 32)
    pixels = (data.to_pixels(data.test_images[:]) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(pixels[1, :, 4, 7], test_images[4, 7, :, 1])


def _png(path: Path, size: tuple[int, int] = (6, 5), mode: str = "RGB", value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = (value, 255 - value, value // 2) if mode == "RGB" else value
    Image.new(mode, size, color).save(path)


def test_imagefolder_loads(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "train" / "dog" / f"{i}.png", value=10 * i)
        _png(tmp_path / "train" / "cat" / f"{i}.png", value=100 + i)
    _png(tmp_path / "val" / "dog" / "a.PNG", value=50)
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.class_names == ("cat", "dog")
    assert data.image_shape == (3, 5, 6)
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.test_labels.tolist() == [1]
    pixels = (data.to_pixels(data.test_images[:]) * 255).round()
    assert pixels[0, :, 0, 0].tolist() == [50, 205, 25]
    assert abs(data.train_images[:].mean().item()) < 1e-4


def test_imagefolder_grayscale_gives_one_channel(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "a" / "0.png", mode="L", value=3)
    _png(tmp_path / "train" / "b" / "0.png", mode="L", value=200)
    _png(tmp_path / "test" / "b" / "0.png", mode="L", value=90)
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.image_shape == (1, 5, 6)


def test_imagefolder_mismatched_sizes(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "a" / "0.png", size=(6, 5))
    _png(tmp_path / "train" / "a" / "1.png", size=(7, 5))
    _png(tmp_path / "test" / "a" / "0.png", size=(6, 5))
    with pytest.raises(DataError, match=r"1\.png is 7×5 .* 6×5") as info:
        load_dataset(f"imagefolder:{tmp_path}")
    assert "Resize" in (info.value.hint or "")


def test_imagefolder_unknown_test_class(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "a" / "0.png")
    _png(tmp_path / "test" / "zebra" / "0.png")
    with pytest.raises(DataError, match="zebra"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_imagefolder_tiny_imagenet_layout(tmp_path: Path) -> None:
    for wnid in ("n01", "n02"):
        _png(tmp_path / "train" / wnid / "images" / f"{wnid}_0.JPEG", size=(8, 8))
    _png(tmp_path / "val" / "images" / "val_0.JPEG", size=(8, 8))
    _png(tmp_path / "val" / "images" / "val_1.JPEG", size=(8, 8))
    (tmp_path / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn02\t0\t0\t7\t7\nval_1.JPEG\tn01\t1\t1\t6\t6\n"
    )
    _png(tmp_path / "test" / "images" / "test_0.JPEG", size=(8, 8))  # unlabelled: ignored
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.class_names == ("n01", "n02")
    assert data.test_labels.tolist() == [1, 0]


def test_imagefolder_without_train_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train/"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_unknown_dataset_suggests_a_name() -> None:
    with pytest.raises(DataError, match="did you mean 'cifar10'") as info:
        load_dataset("cifar-10")
    assert "fashion-mnist" in (info.value.hint or "")


def test_dataset_names_are_case_insensitive() -> None:
    assert load_dataset("DIGITS").name == "digits"


def test_image_dataset_rejects_inconsistent_tensors() -> None:
    images = torch.zeros(4, 1, 8, 8)
    with pytest.raises(DataError, match="labels"):
        ImageDataset(
            "bad",
            images,
            torch.zeros(4, dtype=torch.int32),
            images,
            torch.zeros(4, dtype=torch.int64),
            class_names=("a",),
            mean=(0.0,),
            std=(1.0,),
        )
