"""`export` and `import-experts`: round trips through MTT's file formats, and what is refused."""

from __future__ import annotations

import collections
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, invoke, one_line_error
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms.functional import pil_to_tensor

from distillkit.artifacts import load_synthetic, save_synthetic, synthetic_pixels
from distillkit.config import from_dict
from distillkit.data.datasets import _FASHION_NAMES
from distillkit.data.zca import ZCA
from distillkit.experts.store import TrajectoryStore
from distillkit.interop import load_mtt_set
from distillkit.runtime import prepare_data


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class Sneaky(collections.OrderedDict):
    """A pickled object of this class must never be unpickled by an import."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A finished tiny digits run and the expert store it trained (given explicitly, not cached)."""
    root = tmp_path_factory.mktemp("interop")
    run_dir, store = root / "run", root / "store"
    result = invoke("run", *TINY, "--out", run_dir, "--experts", store, "--quiet")
    assert result.exit_code == 0, result.output
    return run_dir, store


@pytest.fixture
def run_dir(tiny, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny[0], copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        array = np.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array


# -- (a) export --format mtt, then evaluate --mtt ---------------------------------------------


def test_mtt_export_evaluates_like_the_run(run_dir, tmp_path):
    out = tmp_path / "mtt"
    result = invoke("export", run_dir, "--format", "mtt", "--out", out)
    assert result.exit_code == 0, result.output
    assert "evaluate --mtt" in result.output and "--dataset digits" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["images_best.pt", "labels_best.pt", "lr_best.pt"]

    images, labels, lr, _meta, _extra = load_synthetic(run_dir)
    raw = {n: torch.load(out / f"{n}_best.pt", weights_only=True) for n in ("images", "labels", "lr")}
    assert torch.equal(raw["images"], images) and raw["images"].dtype == torch.float32  # normalised
    assert torch.equal(raw["labels"], labels) and raw["labels"].dtype == torch.int64
    assert raw["lr"].dim() == 0 and raw["lr"].dtype == torch.float32 and float(raw["lr"]) == lr
    again = load_mtt_set(out)
    assert torch.equal(again[0], images) and torch.equal(again[1], labels) and again[2] == lr

    # The same protocol: the run's config is TINY on the digits preset; evaluation is seeded by
    # config.seed and the model name alone, so both paths train the same networks.
    from_run = invoke("evaluate", run_dir, "--json", "--quiet")
    from_mtt = invoke("evaluate", "--mtt", out, "--dataset", "digits", *TINY, "--json", "--quiet")
    assert from_run.exit_code == 0, from_run.output
    assert from_mtt.exit_code == 0, from_mtt.output
    a, b = json.loads(from_run.output), json.loads(from_mtt.output)
    model = json.loads((run_dir / "config.json").read_text())["model"]["name"]
    assert a.keys() == b.keys() == {model}
    assert len(a[model]["runs"]) == 2
    assert a[model]["runs"] == pytest.approx(b[model]["runs"], abs=1e-9)
    assert math.isclose(a[model]["mean"], b[model]["mean"], abs_tol=1e-9)


# -- (b) export --format png ------------------------------------------------------------------


def test_png_export_holds_the_denormalised_pixels(run_dir, tmp_path):
    out = tmp_path / "png"
    result = invoke("export", run_dir, "--format", "png", "--out", out)
    assert result.exit_code == 0, result.output
    images, labels, _lr, meta, _extra = load_synthetic(run_dir)
    config = from_dict(json.loads((run_dir / "config.json").read_text()))
    data = prepare_data(config.data)
    ncls, ipc = data.dataset.num_classes, config.distill.ipc
    files = sorted(out.rglob("*.png"))
    assert len(files) == ncls * ipc == len(images)
    expected = data.to_pixels(images).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    counts: dict[int, int] = {}
    for image, label in zip(expected, labels.tolist(), strict=True):
        index = counts.get(label, 0)
        counts[label] = index + 1
        decoded = read_png(out / meta["class_names"][label] / f"{index}.png")
        assert decoded.shape == image.shape
        assert np.abs(decoded.astype(int) - image.astype(int)).max() <= 1


def _zca_run(folder: Path, with_state: bool) -> tuple[torch.Tensor, ZCA, dict]:
    """A run folder holding a ZCA-whitened set (as `distillkit run --set data.zca=true` leaves)."""
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(64, 1, 8, 8, generator=generator)
    zca = ZCA.fit((real - 0.5) / 0.25)
    images = zca.transform((torch.rand(4, 1, 8, 8, generator=generator) - 0.5) / 0.25)
    meta = {
        "dataset": "digits",
        "image_shape": [1, 8, 8],
        "class_names": ["a", "b"],
        "normalisation": {"mean": [0.5], "std": [0.25]},
        "zca": True,
    }
    extra = {f"zca.{k}": v for k, v in zca.state_dict().items()} if with_state else {}
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    save_synthetic(folder, images, torch.tensor([0, 0, 1, 1]), 0.01, meta, extra)
    return images, zca, meta


def test_png_export_of_a_zca_set_inverts_the_whitening(tmp_path):
    images, zca, _meta = _zca_run(tmp_path / "run", with_state=True)
    out = tmp_path / "png"
    result = invoke("export", tmp_path / "run", "--format", "png", "--out", out)
    assert result.exit_code == 0, result.output
    assert "ZCA-inverted" in result.output
    pixels = (zca.inverse(images) * 0.25 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    for n, (label, index) in enumerate([("a", 0), ("a", 1), ("b", 0), ("b", 1)]):
        decoded = read_png(out / label / f"{index}.png")[:, :, 0]
        assert np.abs(decoded.astype(int) - pixels[n, 0].numpy().astype(int)).max() <= 1


def test_png_export_of_a_zca_set_without_its_transform_is_refused(tmp_path):
    _zca_run(tmp_path / "run", with_state=False)
    out = tmp_path / "png"
    one_line_error(invoke("export", tmp_path / "run", "--format", "png", "--out", out), 2, "ZCA")
    assert not out.exists()
    # The whitened images themselves still export (as MTT stores them).
    assert invoke("export", tmp_path / "run", "--format", "mtt", "--out", out).exit_code == 0


# -- (b2) export --format imagefolder: what torchvision and Hugging Face load -------------------


def exported_pixels(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The set's [0, 1] pixels (as the export draws them), its labels and class names."""
    images, labels, _lr, meta, extra = load_synthetic(run_dir)
    return synthetic_pixels(images, meta, extra).clamp(0, 1), labels, meta["class_names"]


def assert_loaded_as_exported(loaded: list[tuple[torch.Tensor, int]], run_dir: Path) -> None:
    """Every exported image comes back once, under its own label, within 8-bit quantisation."""
    pixels, labels, _names = exported_pixels(run_dir)
    assert sorted(label for _, label in loaded) == sorted(labels.tolist())
    unmatched = list(range(len(pixels)))
    for image, label in loaded:
        close = [
            n for n in unmatched if labels[n] == label and (image - pixels[n]).abs().max() <= 0.5 / 255 + 1e-6
        ]
        assert close, f"an image of label {label} matches no exported image of that label"
        unmatched.remove(close[0])
    assert unmatched == []


def test_imagefolder_export_loads_in_torchvision(run_dir, tmp_path):
    out = tmp_path / "folder"
    result = invoke("export", run_dir, "--format", "imagefolder", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"ImageFolder('{out / 'train'}')" in result.output and "note:" not in result.output
    folder = ImageFolder(str(out / "train"), loader=lambda path: Image.open(path).convert("L"))
    names = exported_pixels(run_dir)[2]
    assert folder.classes == names  # digits: "0".."9" already sort in label order
    loaded = [(pil_to_tensor(image).float() / 255, label) for image, label in folder]
    assert_loaded_as_exported(loaded, run_dir)


def test_imagefolder_export_loads_in_hugging_face_datasets(run_dir, tmp_path):
    datasets = pytest.importorskip(
        "datasets", reason="Hugging Face datasets is optional (pip install datasets)"
    )
    from torchvision.transforms.functional import pil_to_tensor

    out = tmp_path / "folder"
    assert invoke("export", run_dir, "--format", "imagefolder", "--out", out).exit_code == 0
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "hf"))
    assert list(loaded) == ["train"]
    train = loaded["train"]
    assert train.features["label"].names == exported_pixels(run_dir)[2]
    assert_loaded_as_exported([(pil_to_tensor(r["image"]).float() / 255, r["label"]) for r in train], run_dir)


def test_imagefolder_classes_that_do_not_sort_get_their_label_in_front(tmp_path):
    """FashionMNIST's names sort as "Ankle boot", "Bag", ...: a loader would renumber the classes."""
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(20, 3, 6, 6, generator=generator), torch.arange(20) % 10
    meta = {
        "dataset": "fashion-like",
        "image_shape": [3, 6, 6],
        "class_names": list(_FASHION_NAMES),
        "normalisation": {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]},
    }
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    save_synthetic(run, images, labels, 0.01, meta)
    out = tmp_path / "folder"
    result = invoke("export", run, "--format", "imagefolder", "--out", out)
    assert result.exit_code == 0, result.output
    folder = ImageFolder(str(out / "train"))
    assert folder.classes[:2] == ["0-T-shirt_top", "1-Trouser"] and folder.classes[9] == "9-Ankle boot"
    assert_loaded_as_exported([(pil_to_tensor(im).float() / 255, label) for im, label in folder], run)


def test_imagefolder_export_names_a_class_hugging_face_would_read_as_a_split(tmp_path):
    meta = {
        "dataset": "tiny",
        "image_shape": [1, 4, 4],
        "class_names": ["cat", "test"],
        "normalisation": {"mean": [0.5], "std": [0.25]},
    }
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    save_synthetic(run, torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), 0.01, meta)
    result = invoke("export", run, "--format", "imagefolder", "--out", tmp_path / "folder")
    assert result.exit_code == 0, result.output
    assert "note: Hugging Face also reads the class folder 'test' as a split name" in result.output
    assert "data_files={'train':" in result.output


# -- (c) an MTT buffer made from a real store, imported, then distilled from -------------------


def mtt_buffer(store: TrajectoryStore) -> list[list[list[torch.Tensor]]]:
    """The store's experts as MTT saves them: per expert, per epoch, the parameters in order."""
    shapes = [shape for _name, shape in store.key["param_layout"]]
    sizes = [math.prod(shape) for shape in shapes]
    buffer = []
    for index in store.finished():
        rows = store.load(index)
        buffer.append(
            [
                [part.reshape(shape).clone() for part, shape in zip(row.split(sizes), shapes, strict=True)]
                for row in rows
            ]
        )
    return buffer


def test_imported_mtt_buffer_is_accepted_by_distill(tiny, tmp_path):
    source = TrajectoryStore.open(tiny[1])
    pt_file = tmp_path / "replay_buffer_0.pt"
    torch.save(mtt_buffer(source), pt_file)
    store_dir = tmp_path / "imported"
    result = invoke("import-experts", pt_file, "--out", store_dir, *TINY)
    assert result.exit_code == 0, result.output
    assert "imported 1 expert (4 epochs each) from 1 file (1 trajectory)" in result.output
    imported = TrajectoryStore.open(store_dir)
    assert imported.key == source.key  # the key `distillkit run` built with the same options
    assert torch.equal(imported.load(0), source.load(0))
    assert imported.manifest.experts[0]["source"] == "mtt:replay_buffer_0.pt[0]"
    again = invoke("import-experts", pt_file, "--out", store_dir, *TINY)
    assert again.exit_code == 0 and "imported 0 experts" in again.output and "1 already" in again.output

    run = tmp_path / "distilled"
    result = invoke("distill", "--experts", store_dir, *TINY, "--out", run, "--quiet")
    assert result.exit_code == 0, result.output
    assert (run / "synthetic.safetensors").exists()


def test_import_with_other_epochs_names_the_fix(tiny, tmp_path):
    pt_file = tmp_path / "replay_buffer_0.pt"
    torch.save(mtt_buffer(TrajectoryStore.open(tiny[1])), pt_file)
    longer = [arg.replace("experts.epochs=4", "experts.epochs=6") for arg in TINY]
    result = invoke("import-experts", pt_file, "--out", tmp_path / "s", *longer)
    one_line_error(result, 2, "holds 4 epochs")
    assert "experts.epochs=4" in result.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("source", ["ftd", "datm"])
def test_ftd_and_datm_buffers_import_with_their_trainer_in_the_key(tiny, tmp_path, source):
    """FTD and DATM save MTT's layout; their GSAM-trained experts get a key that says so."""
    native = TrajectoryStore.open(tiny[1])
    buffer = mtt_buffer(native)
    files = [tmp_path / "replay_buffer_0.pt", tmp_path / "replay_buffer_1.pt"]
    torch.save(buffer, files[0])
    torch.save(buffer + buffer, files[1])
    store_dir = tmp_path / source
    result = invoke("import-experts", *files, "--source", source, "--out", store_dir, *TINY)
    assert result.exit_code == 0, result.output
    assert "imported 3 experts (4 epochs each) from 2 files (1 + 2 trajectories)" in result.output
    assert f"the store key records trainer '{source}-gsam'" in result.output
    imported = TrajectoryStore.open(store_dir)
    assert imported.key == {**native.key, "trainer": f"{source}-gsam"}
    assert [e["source"] for e in imported.manifest.experts] == [
        f"{source}:replay_buffer_0.pt[0]",
        f"{source}:replay_buffer_1.pt[0]",
        f"{source}:replay_buffer_1.pt[1]",
    ]
    assert all(torch.equal(imported.load(i), native.load(0)) for i in range(3))
    # distillkit's own (plain SGD) experts are never mixed into a GSAM store ...
    more = [arg.replace("experts.count=1", "experts.count=4") for arg in TINY]
    mixed = invoke("experts", *more, "--out", store_dir, "--quiet")
    one_line_error(mixed, 2, f'trainer is "{source}-gsam" there but missing now')
    # ... but distillation reads it, as it reads any store of the run's dataset and network.
    run = tmp_path / "run"
    result = invoke("distill", "--experts", store_dir, *TINY, "--out", run, "--quiet")
    assert result.exit_code == 0, result.output


def test_import_mtt_buffer_is_a_deprecated_alias(tiny, tmp_path):
    pt_file = tmp_path / "replay_buffer_0.pt"
    torch.save(mtt_buffer(TrajectoryStore.open(tiny[1])), pt_file)
    result = invoke("import-mtt-buffer", pt_file, "--out", tmp_path / "store", *TINY)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert (
        lines[0]
        == "note: import-mtt-buffer is deprecated; use `distillkit import-experts` (the same options)."
    )
    assert lines[1].startswith("imported 1 expert (4 epochs each) from 1 file")
    assert TrajectoryStore.open(tmp_path / "store").key == TrajectoryStore.open(tiny[1]).key


# -- (d) refused buffers: nothing unpickled, nothing written -----------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (lambda: [Sneaky(w=torch.zeros(1))], "pickled"),
        (
            lambda: collections.OrderedDict(w=torch.zeros(1)),
            "it holds a dict of 1 named tensor (a state_dict)",
        ),
        (lambda: [[[torch.zeros(3, 3)]] * 5], "parameter tensors"),
        (lambda: [], "no trajectories"),
        (
            lambda: [[{"w": torch.zeros(1)}] * 5],
            "snapshot 0 is a dict of 1 named tensor (a state_dict), not a list of parameter tensors",
        ),
        (lambda: [[torch.zeros(9)] * 5], "snapshot 0 is a float32 tensor of shape [9], not a list of"),
        (lambda: [torch.zeros(5, 9)], "[0] is a float32 tensor of shape [5, 9], not a trajectory"),
    ],
    ids=[
        "object",
        "state-dict",
        "layout",
        "empty",
        "named-snapshot",
        "flat-snapshot",
        "tensor",
    ],
)
def test_bad_buffers_are_refused_and_nothing_is_written(tmp_path, content, fragment):
    pt_file = tmp_path / "replay_buffer_0.pt"
    torch.save(content(), pt_file)
    store_dir = tmp_path / "store"
    one_line_error(invoke("import-experts", pt_file, "--out", store_dir, *TINY), 2, fragment)
    assert not store_dir.exists()


def test_one_trajectory_without_the_outer_list_is_named(tiny, tmp_path):
    pt_file = tmp_path / "replay_buffer_0.pt"
    torch.save(mtt_buffer(TrajectoryStore.open(tiny[1]))[0], pt_file)
    result = invoke("import-experts", pt_file, "--out", tmp_path / "store", *TINY)
    one_line_error(result, 2, "holds one trajectory (a list of 5 lists), not a list of trajectories")
    assert "torch.save([trajectory], path)" in result.output and not (tmp_path / "store").exists()


def test_raw_pickle_that_would_run_code_is_refused(tmp_path):
    pt_file = tmp_path / "replay_buffer_0.pt"
    pt_file.write_bytes(b"cbuiltins\nopen\n(Vran-code\nVw\ntR.")  # open('ran-code', 'w') if unpickled
    result = invoke("import-experts", pt_file, "--out", tmp_path / "store", *TINY)
    one_line_error(result, 2, "pickled")
    assert not (tmp_path / "store").exists() and not Path("ran-code").exists()


def test_missing_or_repeated_buffer_files_are_refused(tmp_path):
    real = tmp_path / "replay_buffer_0.pt"
    torch.save([], real)
    one_line_error(
        invoke("import-experts", tmp_path / "nope.pt", "--out", tmp_path / "s", *TINY), 2, "missing"
    )
    one_line_error(invoke("import-experts", real, real, "--out", tmp_path / "s", *TINY), 2, "twice")
    one_line_error(
        invoke("import-experts", real, "--source", "tesla", "--out", tmp_path / "s"), 2, "--source"
    )
    assert not (tmp_path / "s").exists()


# -- (e) where export may write -----------------------------------------------------------------


def test_export_refuses_a_non_empty_folder_without_overwrite(run_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    for fmt in ("mtt", "png"):
        one_line_error(invoke("export", run_dir, "--format", fmt, "--out", out), 2, "not empty")
        assert snapshot(out) == before
    result = invoke("export", run_dir, "--format", "mtt", "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "images_best.pt").exists()


def test_png_overwrite_drops_images_of_an_earlier_larger_export(run_dir, tmp_path):
    out = tmp_path / "png"
    assert invoke("export", run_dir, "--format", "png", "--out", out).exit_code == 0
    stale = next(out.iterdir()) / "7.png"
    shutil.copy(next(stale.parent.iterdir()), stale)
    (stale.parent / "keep.txt").write_text("mine")
    assert invoke("export", run_dir, "--format", "png", "--out", out, "--overwrite").exit_code == 0
    assert not stale.exists() and (stale.parent / "keep.txt").exists()
    assert len(list(out.rglob("*.png"))) == len(load_synthetic(run_dir)[0])


def test_export_never_writes_into_the_run(run_dir):
    before = snapshot(run_dir)
    for out in (run_dir, run_dir / "export"):
        result = invoke("export", run_dir, "--format", "mtt", "--out", out, "--overwrite")
        one_line_error(result, 2, "inside the run directory")
    assert snapshot(run_dir) == before


def test_export_refuses_bad_input_and_writes_nothing(run_dir, tmp_path):
    out = tmp_path / "out"
    one_line_error(invoke("export", tmp_path, "--format", "mtt", "--out", out), 2, "not a run directory")
    one_line_error(invoke("export", run_dir, "--format", "jpeg", "--out", out), 2, "--format")
    tensors = run_dir / "synthetic.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    one_line_error(invoke("export", run_dir, "--format", "png", "--out", out), 2, "checksum")
    assert not out.exists()
