"""Datasets held as 8-bit pixels: the same bits as a whole-set float32 normalisation, less memory."""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import distillkit
from distillkit import api
from distillkit.context import RunContext
from distillkit.data import ImageDataset, NormalisedPixels, load_dataset
from distillkit.data import datasets as ds
from distillkit.data.holdout import stratified_split
from distillkit.engine import defaults
from distillkit.errors import DataError
from distillkit_plugins.kmeans_init import KMeansInit

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
needs_fashion = pytest.mark.skipif(
    not all((SYSTEM_FASHION / name).is_file() for name in FASHION_FILES),
    reason="FashionMNIST not installed: apt-get install dataset-fashion-mnist",
)


def whole_set(
    pixels: np.ndarray, scale: float, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """The normalisation the loaders used before: one float32 copy of the whole set, in place."""
    images = torch.from_numpy(np.array(pixels, dtype=np.float32, order="C"))
    shape = (1, -1, 1, 1)
    images.div_(scale).sub_(torch.tensor(mean).view(shape)).div_(torch.tensor(std).view(shape))
    return images


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (``torch.equal`` would let -0.0 match 0.0)."""
    return a.dtype == b.dtype == torch.float32 and torch.equal(a.view(torch.int32), b.view(torch.int32))


def check_every_index_form(lazy: NormalisedPixels, reference: torch.Tensor) -> None:
    generator = torch.Generator().manual_seed(0)
    n = len(reference)
    assert same_bits(lazy[:], reference)
    assert same_bits(lazy[3 : n - 2 : 3], reference[3 : n - 2 : 3])
    index = torch.randint(n, (257,), generator=generator)
    assert same_bits(lazy[index], reference[index])
    mask = torch.rand(n, generator=generator) < 0.3
    assert same_bits(lazy[mask], reference[mask])
    assert same_bits(lazy[n - 1], reference[n - 1])
    assert same_bits(lazy[torch.tensor(5)], reference[5])


def digits_pixels() -> tuple[np.ndarray, np.ndarray]:
    """The digits train/test pixels as the loader splits them, read straight from scikit-learn."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, test = stratified_split(bunch.target, fraction=0.25, seed=0)
    pixels = bunch.images.astype(np.uint8)[:, None]
    return pixels[train], pixels[test]


def test_digits_match_the_whole_set_normalisation_bit_for_bit() -> None:
    data = load_dataset("digits")
    for lazy, pixels in zip((data.train_images, data.test_images), digits_pixels(), strict=True):
        assert isinstance(lazy, NormalisedPixels) and lazy.pixels.dtype == torch.uint8
        check_every_index_form(lazy, whole_set(pixels, 16.0, data.mean, data.std))


@needs_fashion
def test_fashion_mnist_matches_the_whole_set_normalisation_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ds, "SYSTEM_DATA_DIRS", {"fashion-mnist": (SYSTEM_FASHION,)})
    data = load_dataset("fashion-mnist")
    for lazy, name in zip((data.train_images, data.test_images), FASHION_FILES, strict=True):
        raw = gzip.decompress((SYSTEM_FASHION / name).read_bytes())
        pixels = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
        assert isinstance(lazy, NormalisedPixels) and lazy.pixels.dtype == torch.uint8
        check_every_index_form(lazy, whole_set(pixels, 255.0, data.mean, data.std))


def test_three_channels_and_every_pixel_value() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    values = np.arange(256, dtype=np.uint8)
    pixels = np.stack([np.roll(values, 7 * c) for c in range(3)], axis=1).reshape(8, 3, 4, 8)
    lazy = NormalisedPixels(torch.from_numpy(pixels), 255.0, mean, std)
    check_every_index_form(lazy, whole_set(pixels, 255.0, mean, std))


def test_tensor_like_surface() -> None:
    pixels = torch.randint(
        0, 256, (10, 3, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    lazy = NormalisedPixels(pixels, 255.0, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert len(lazy) == 10 and lazy.shape == (10, 3, 5, 6)
    assert lazy.dtype == torch.float32 and lazy.device == torch.device("cpu")
    assert lazy[2].shape == (3, 5, 6) and lazy[2:4].shape == (2, 3, 5, 6)
    first = lazy[:3]
    first.add_(1.0)  # a fresh tensor: writing to it leaves the set alone
    assert torch.equal(lazy.pixels, pixels) and not torch.equal(lazy[:3], first)
    with pytest.raises(TypeError, match="first"):
        lazy[:, 0]


def test_to_moves_the_pixels_and_keeps_the_bits() -> None:
    pixels = torch.randint(
        0, 256, (20, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    lazy = NormalisedPixels(pixels, 255.0, (0.2861,), (0.3530,))
    moved = lazy.to("cpu")
    assert isinstance(moved, NormalisedPixels) and moved.pixels.dtype == torch.uint8
    assert same_bits(moved[:], lazy[:])
    if torch.cuda.is_available():
        # On CUDA a division by a CPU scalar is a multiplication by its reciprocal; ours must not be.
        on_gpu = lazy.to("cuda")
        assert on_gpu.device.type == "cuda" and on_gpu.pixels.dtype == torch.uint8
        index = torch.arange(0, 20, 3)
        assert same_bits(on_gpu[index.cuda()].cpu(), lazy[index])


def test_bad_pixels_are_data_errors() -> None:
    with pytest.raises(DataError, match="integer"):
        NormalisedPixels(torch.zeros(2, 1, 4, 4), 255.0, (0.5,), (0.2,))
    with pytest.raises(DataError, match="integer"):
        NormalisedPixels(torch.zeros(2, 4, 4, dtype=torch.uint8), 255.0, (0.5,), (0.2,))
    with pytest.raises(DataError, match="one per channel"):
        NormalisedPixels(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), 255.0, (0.5,), (0.2,))


def dataset(train: Any, test: Any) -> ImageDataset:
    labels = torch.zeros(4, dtype=torch.int64)
    return ImageDataset("t", train, labels, test, labels, class_names=("a",), mean=(0.5,), std=(0.2,))


def test_image_dataset_takes_pixels_or_floats_but_not_raw_integers() -> None:
    lazy = NormalisedPixels(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), 255.0, (0.5,), (0.2,))
    floats = torch.zeros(4, 1, 8, 8)
    assert dataset(lazy, floats).image_shape == (1, 8, 8)
    with pytest.raises(
        DataError, match=r"train images must be a float \[N, C, H, W\] tensor, got torch.uint8"
    ):
        dataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), floats)
    with pytest.raises(DataError, match=r"test images must be a float \[N, C, H, W\].*\(4, 8, 8\)"):
        dataset(lazy, torch.zeros(4, 8, 8))


# -- consumers: the pixels train, evaluate and initialise exactly like the float copy ---------

TINY = {
    "device": "cpu",
    "model.name": "convnet-w8-d1",
    "experts.count": 1,
    "experts.epochs": 2,
    "distill.ipc": 2,
    "distill.max_start_epoch": 1,
    "distill.expert_epochs": 1,
    "distill.iterations": 20,
    "evaluate.runs": 1,
    "evaluate.epochs": 2,
}


def as_floats(data: api.PreparedData) -> api.PreparedData:
    return api.PreparedData(data.dataset, data.train_images[:], data.test_images[:], None)


def test_experts_and_evaluation_match_the_float_copy(tmp_path: Path) -> None:
    config, host = distillkit.resolve_config(preset="digits", overrides=TINY)
    lazy = api.prepare_data(config.data)
    assert isinstance(lazy.train_images, NormalisedPixels)
    floats = as_floats(lazy)
    stores = [
        api.train_experts(config, host, data, tmp_path / name) for name, data in (("a", lazy), ("b", floats))
    ]
    assert torch.equal(stores[0].load(0), stores[1].load(0))
    assert stores[0].manifest.experts[0]["test_acc"] == stores[1].manifest.experts[0]["test_acc"]
    sets = [api.random_real_set(config, data, torch.device("cpu")) for data in (lazy, floats)]
    assert same_bits(sets[0][0], sets[1][0]) and torch.equal(sets[0][1], sets[1][1])
    results = [api.evaluate(config, data, *sets[0], lr=0.01) for data in (lazy, floats)]
    assert results[0][config.model.name].runs == results[1][config.model.name].runs


@pytest.mark.parametrize("name", ["kmeans-init", "herding-init"])
def test_init_plugins_pick_the_same_images_from_pixels(name: str) -> None:
    if name == "kmeans-init":
        plugin: Any = KMeansInit(KMeansInit.Config())
    else:
        herding = pytest.importorskip("distillkit_herding")
        plugin = herding.HerdingInit(herding.HerdingInit.Config())
    config, _ = distillkit.resolve_config(preset="digits", overrides=TINY)
    lazy = api.prepare_data(config.data)
    make = api.model_factory(lazy)
    flat = parameters_to_vector(make(config.model.name, 0).parameters()).detach()
    chosen = {}
    for kind, data in (("lazy", lazy), ("floats", as_floats(lazy))):
        ctx = data.init_context(
            2,
            expert_params=lambda e: flat.clone(),
            expert_epochs_available=1,
            make_model=lambda: make(config.model.name, 1),
            load_flat=lambda model, theta: vector_to_parameters(theta, model.parameters()),
        )
        for init in (plugin, defaults):
            run = RunContext(config, torch.device("cpu"), torch.Generator().manual_seed(0), out_dir=None)
            chosen[kind, init] = init.init_synthetic(run=run, ctx=ctx).images
    for init in (plugin, defaults):
        assert same_bits(chosen["lazy", init], chosen["floats", init])


@needs_fashion
def test_prepare_data_peak_memory_stays_near_the_pixel_size() -> None:
    """FashionMNIST as float32 is 219 MiB; as pixels 55 MiB. Measured in a fresh process."""
    script = textwrap.dedent(
        """
        import torch

        def peak_kib():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])

        before = peak_kib()
        from distillkit.resolve import resolve_config
        from distillkit.runtime import prepare_data

        config, _ = resolve_config("fmnist-cpu", None, {}, [])
        data = prepare_data(config.data)
        assert len(data.train_images) == 60000
        print((peak_kib() - before) / 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    growth_mib = float(out.stdout.split()[-1])
    assert growth_mib < 120, f"prepare_data raised the peak RSS by {growth_mib:.0f} MiB"


def test_release_frees_the_pixels_but_keeps_the_metadata() -> None:
    config, _ = distillkit.resolve_config(preset="digits")
    data = api.prepare_data(config.data)
    shape, count = data.dataset.image_shape, len(data.train_images)
    data.release_images()
    assert data.train_images.pixels.numel() == 0 and data.test_images.pixels.numel() == 0
    assert data.dataset.image_shape == shape and len(data.train_images) == count
    assert data.to_pixels(torch.zeros(1, *shape)).shape == (1, *shape)
    with pytest.raises(RuntimeError, match="released"):
        data.train_images[0]


def test_distill_with_released_data_gives_the_same_set(tmp_path: Path) -> None:
    """``distillkit distill`` frees the real images after init; the loop never reads them."""
    config, host = distillkit.resolve_config(preset="digits", overrides=TINY)
    data = api.prepare_data(config.data)
    store = api.train_experts(config, host, data, tmp_path / "store")
    kept = api.distill(api.distill_job(config, host, data, store))
    released = api.distill(api.distill_job(config, host, data, store), release_data=True)
    assert data.train_images.released
    assert torch.equal(kept.images, released.images) and kept.lr == released.lr
