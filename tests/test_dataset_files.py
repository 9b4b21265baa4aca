"""The field's dataset files: CIFAR's python pickles (restricted), Tiny ImageNet, MTT's ImageNet subsets.

Every reader loads the tiny fake copy of its real layout that ``distillkit.data.fixtures``
writes; errors (missing folders, corrupt lines, refused pickles) are one clear line.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, invoke, one_line_error
from PIL import Image

from distillkit.data import datasets as ds
from distillkit.data import load_dataset
from distillkit.data.fixtures import fake_dataset_names, write_fake_dataset, write_python2_pickle
from distillkit.errors import DataError

#: (C, H, W) and classes of each dataset, as the field knows them.
EXPECTED = {
    "digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
    "fashion-mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "svhn": ((3, 32, 32), 10),
    "tiny-imagenet": ((3, 64, 64), 200),
    **{name: ((3, 128, 128), 10) for name in ("imagenette", "imagewoof", "imagefruit")},
    **{name: ((3, 128, 128), 10) for name in ("imagemeow", "imagesquawk", "imageyellow")},
}
IMAGENETTE = "n01440764 n02102040 n02979186 n03000684 n03028079 n03394916 n03417042 n03425413 n03445777"
#: MTT's ImageWoof in MTT's order (utils.py: ImageNet indices 193, 182, 258, 162, 155, 167, ...).
IMAGEWOOF = (
    "n02096294 n02093754 n02111889 n02088364 n02086240 n02089973 n02087394 n02115641 n02099601 n02105641"
)


@pytest.fixture(autouse=True)
def _no_system_datasets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ds, "SYSTEM_DATA_DIRS", {"fashion-mnist": (tmp_path / "no-system",)})


def test_every_dataset_has_a_fake_layout() -> None:
    assert fake_dataset_names() == sorted(n for n in ds.dataset_names() if not n.endswith(":PATH"))
    assert sorted(EXPECTED) == fake_dataset_names()


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"digits"}))
def test_each_reader_loads_its_fake_layout(tmp_path: Path, name: str) -> None:
    root = write_fake_dataset(name, tmp_path / "data", train_per_class=2, test_per_class=1, seed=3)
    data = load_dataset(name, root)
    shape, classes = EXPECTED[name]
    assert data.image_shape == shape and data.num_classes == classes
    assert torch.bincount(data.train_labels, minlength=classes).tolist() == [2] * classes
    assert torch.bincount(data.test_labels, minlength=classes).tolist() == [1] * classes
    pixels = data.to_pixels(data.train_images[:4])
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    again = load_dataset(name, write_fake_dataset(name, tmp_path / "again", seed=3))
    assert torch.equal(again.train_images[:], data.train_images[:])  # same seed, same files


# -- CIFAR, python version -----------------------------------------------------------------------


def _cifar10_python(folder: Path, dump=write_python2_pickle, keys=str) -> tuple[list[int], np.ndarray]:
    """A CIFAR-10 python folder with known labels and pixels; ``keys`` turns key names into str/bytes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_labels: list[int] = []
    for number in range(1, 6):
        labels = [(number * 3 + j) % 10 for j in range(2)]
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        dump(folder / f"data_batch_{number}", {keys("labels"): labels, keys("data"): data})
        train_labels += labels
    test = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    dump(folder / "test_batch", {keys("labels"): [4, 0, 9], keys("data"): test})
    names = [keys(n) for n in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]]
    dump(folder / "batches.meta", {keys("label_names"): names})
    return train_labels, test.reshape(3, 3, 32, 32)


def _plain_dump(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj))  # Python 3's default protocol: what a re-saved copy holds


@pytest.mark.parametrize(
    ("dump", "keys"),
    [(write_python2_pickle, str), (_plain_dump, str.encode)],
    ids=["python2-original", "python3-bytes-keys"],
)
def test_cifar10_python_layout_loads_labels_pixels_and_names(tmp_path: Path, dump, keys) -> None:
    train_labels, test_pixels = _cifar10_python(tmp_path / "cifar-10-batches-py", dump, keys)
    data = load_dataset("cifar10", tmp_path)
    assert data.train_labels.tolist() == train_labels
    assert data.test_labels.tolist() == [4, 0, 9]
    assert data.class_names == tuple("abcdefghij")
    pixels = (data.to_pixels(data.test_images[:]) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(pixels, test_pixels)


def test_original_files_name_numpy_1_modules(tmp_path: Path) -> None:
    """The real files were written by numpy 1.x: ``numpy.core.multiarray._reconstruct``."""
    write_fake_dataset("cifar10", tmp_path)
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02") and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"numpy._core" not in raw


def test_cifar100_python_uses_fine_labels_and_fine_names(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for split, fine in (("train", [42, 99, 5]), ("test", [77])):
        batch = {"fine_labels": fine, "coarse_labels": [1] * len(fine)}
        batch["data"] = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        write_python2_pickle(folder / split, batch)
    fine_names = [f"fine{i}" for i in range(100)]
    write_python2_pickle(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": ["c"] * 20})
    data = load_dataset("cifar100", tmp_path)
    assert data.train_labels.tolist() == [42, 99, 5] and data.test_labels.tolist() == [77]
    assert data.class_names[99] == "fine99" and data.num_classes == 100


def test_cifar_binary_layout_wins_when_both_are_present(tmp_path: Path) -> None:
    write_fake_dataset("cifar10", tmp_path)
    binary = tmp_path / "cifar-10-batches-bin"
    binary.mkdir()
    pixels = np.zeros((1, 3072), dtype=np.uint8)
    for file, label in [*((f"data_batch_{i}.bin", 6) for i in range(1, 6)), ("test_batch.bin", 2)]:
        (binary / file).write_bytes(np.concatenate([[[label]], pixels], axis=1).astype(np.uint8).tobytes())
    data = load_dataset("cifar10", tmp_path)
    assert data.train_labels.tolist() == [6] * 5 and data.test_labels.tolist() == [2]


class _RunsACommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    write_fake_dataset("cifar10", tmp_path)
    evil = {"labels": [0], "data": _RunsACommand(f"touch {marker}")}
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_2: distillkit refuses to unpickle (posix|os)\.system"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()
    pickle.loads(pickle.dumps(evil, protocol=2))  # the same bytes, unpickled freely, do run it
    assert marker.exists()


@pytest.mark.parametrize("name", ["builtins eval", "subprocess Popen", "numpy load", "torch load"])
def test_any_global_outside_the_admitted_few_is_refused(tmp_path: Path, name: str) -> None:
    write_fake_dataset("cifar100", tmp_path)
    module, attribute = name.split()
    # GLOBAL then an empty tuple and REDUCE: module.attribute() if it were admitted.
    payload = b"\x80\x02c" + f"{module}\n{attribute}\n".encode() + b")R."
    (tmp_path / "cifar-100-python" / "test").write_bytes(payload)
    with pytest.raises(DataError, match=rf"refuses to unpickle {module}\.{attribute}"):
        load_dataset("cifar100", tmp_path)


def test_a_corrupt_or_wrong_pickle_is_one_error(tmp_path: Path) -> None:
    write_fake_dataset("cifar10", tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(DataError, match=r"Cannot read CIFAR file .*data_batch_4"):
        load_dataset("cifar10", tmp_path)
    write_python2_pickle(batch, {"labels": [1], "data": np.zeros((1, 100), dtype=np.uint8)})
    with pytest.raises(DataError, match=r"data_batch_4 holds rows of 100 values"):
        load_dataset("cifar10", tmp_path)


def test_no_cifar_layout_says_which_were_looked_for(tmp_path: Path) -> None:
    result = invoke("run", "--dataset", "cifar100", "--data-path", tmp_path, "--out", tmp_path / "run")
    one_line_error(result, 2, "cifar100 files not found: looked for the binary version (cifar-100-binary/")
    assert "python version (cifar-100-python/: train, test)" in result.output


def test_a_run_trains_on_the_cifar_python_layout(tmp_path: Path) -> None:
    root = write_fake_dataset("cifar10", tmp_path / "data", train_per_class=3)
    out = tmp_path / "run"
    result = invoke(
        "run", "--dataset", "cifar10", "--data-path", root, "--out", out, "--model", "convnet-w8-d1",
        "--set", "data.augment=none", "--quiet", *TINY,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "results.json").is_file() and (out / "synthetic.safetensors").is_file()


# -- Tiny ImageNet -------------------------------------------------------------------------------


def _tiny(tmp_path: Path) -> Path:
    return (
        write_fake_dataset("tiny-imagenet", tmp_path, train_per_class=1, test_per_class=1)
        / "tiny-imagenet-200"
    )


def test_tiny_imagenet_classes_are_sorted_wnids_named_by_words(tmp_path: Path) -> None:
    folder = _tiny(tmp_path)
    wnids = sorted((folder / "wnids.txt").read_text().split())
    assert wnids != (folder / "wnids.txt").read_text().split()  # the file's own order differs
    data = load_dataset("tiny-imagenet", folder.parent)
    words = dict(line.split("\t") for line in (folder / "words.txt").read_text().splitlines())
    assert data.class_names == tuple(words[w].split(",")[0] for w in wnids)
    annotated = [
        line.split("\t")[1] for line in (folder / "val" / "val_annotations.txt").read_text().splitlines()
    ]
    assert data.test_labels.tolist() == [wnids.index(w) for w in annotated]
    (folder / "words.txt").unlink()
    assert load_dataset("tiny-imagenet", folder).class_names == tuple(wnids)  # root = the folder itself


def test_tiny_imagenet_missing_wnid_folder(tmp_path: Path) -> None:
    folder = _tiny(tmp_path)
    wnid = sorted((folder / "wnids.txt").read_text().split())[7]
    shutil.rmtree(folder / "train" / wnid)
    with pytest.raises(DataError, match=rf"no folder .*{wnid}.* for the class {wnid} of wnids\.txt"):
        load_dataset("tiny-imagenet", tmp_path)


def test_tiny_imagenet_corrupt_annotation_line(tmp_path: Path) -> None:
    folder = _tiny(tmp_path)
    annotations = folder / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    lines[2] = "val_2.JPEG\tn99999999\t0\t0\t63\t63"
    annotations.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"val_annotations\.txt line 3 does not name a training class"):
        load_dataset("tiny-imagenet", tmp_path)


def test_tiny_imagenet_wrong_wnid_count_or_image_size(tmp_path: Path) -> None:
    folder = _tiny(tmp_path)
    wnids = folder / "wnids.txt"
    original = wnids.read_text()
    wnids.write_text("\n".join(original.split()[:199]))
    with pytest.raises(DataError, match="199 distinct WordNet ids, expected 200"):
        load_dataset("tiny-imagenet", tmp_path)
    wnids.write_text(original)
    Image.new("RGB", (32, 32)).save(folder / "val" / "images" / "val_5.JPEG")
    with pytest.raises(DataError, match=r"val_5\.JPEG is 32×32 but Tiny ImageNet is 64×64"):
        load_dataset("tiny-imagenet", tmp_path)


def test_tiny_imagenet_not_found_is_one_line(tmp_path: Path) -> None:
    result = invoke("run", "--dataset", "tiny-imagenet", "--data-path", tmp_path, "--out", tmp_path / "r")
    one_line_error(result, 2, "Tiny ImageNet not found: looked for wnids.txt in")


# -- ImageNet subsets ----------------------------------------------------------------------------


def test_subset_wnids_are_mtt_s_lists() -> None:
    from distillkit.data.imagenet_subsets import subsets

    known = subsets()
    assert " ".join(known["imagenette"].wnids[:9]) == IMAGENETTE
    # ImageNet index 701 (MTT's tenth class) is the parachute, n03888257 (n03888605: parallel bars).
    assert known["imagenette"].wnids[9] == "n03888257" and known["imagenette"].names[9] == "parachute"
    assert " ".join(known["imagewoof"].wnids) == IMAGEWOOF
    assert known["imagemeow"].names[:2] == ("tabby", "tiger cat")
    assert known["imagesquawk"].wnids[0] == "n01806143" and known["imagefruit"].names[0] == "pineapple"
    assert known["imageyellow"].wnids[2] == known["imagefruit"].wnids[1]  # both hold the banana
    assert all(len(s.wnids) == len(set(s.wnids)) == len(s.names) == 10 for s in known.values())


def test_subset_labels_follow_the_list_order(tmp_path: Path) -> None:
    root = write_fake_dataset("imagewoof", tmp_path, train_per_class=1, test_per_class=1)
    first = IMAGEWOOF.split()[0]
    Image.new("RGB", (130, 140), (250, 0, 0)).save(root / "val" / first / "ILSVRC2012_val_00000000.JPEG")
    data = load_dataset("imagewoof", root)
    assert data.class_names[0] == "Australian terrier"
    red = data.to_pixels(data.test_images[data.test_labels == 0])[0]
    assert red[0].mean() > 0.9 and red[1:].mean() < 0.1


def test_subset_images_are_short_side_resized_then_centre_cropped(tmp_path: Path) -> None:
    root = write_fake_dataset("imagenette", tmp_path, train_per_class=1, test_per_class=1)
    wnid = IMAGENETTE.split()[0]
    stripes = np.zeros((200, 400, 3), dtype=np.uint8)
    stripes[:, :100, 0] = 255  # red | green | blue: 256×128 after the resize, so the crop is all green
    stripes[:, 100:300, 1] = 255
    stripes[:, 300:, 2] = 255
    for file in (root / "train" / wnid).iterdir():
        file.unlink()
    Image.fromarray(stripes).save(root / "train" / wnid / "stripes.png")
    data = load_dataset("imagenette", root)
    image = data.to_pixels(data.train_images[data.train_labels == 0])[0]
    assert image.shape == (3, 128, 128)
    assert image[1, :, 1:-1].min() > 0.95 and image[[0, 2], :, 1:-1].max() < 0.05


def test_subset_missing_wnid_folder_names_class_and_subset(tmp_path: Path) -> None:
    root = write_fake_dataset("imagemeow", tmp_path)
    shutil.rmtree(root / "val" / "n02129604")
    with pytest.raises(DataError, match=r"no val/n02129604/ \(class 'tiger' of imagemeow\)"):
        load_dataset("imagemeow", root)
    with pytest.raises(DataError, match="needs the ImageNet folder"):
        load_dataset("imagemeow")


def test_user_class_list(tmp_path: Path) -> None:
    root = write_fake_dataset("imagenette", tmp_path / "imagenet")
    classes = tmp_path / "three.txt"
    classes.write_text("# my subset\nn03445777\nn01440764  n02102040\n")
    data = load_dataset(f"imagenet-subset:{classes}", root)
    assert data.class_names == ("n03445777", "n01440764", "n02102040")
    assert data.image_shape == (3, 128, 128) and len(data.train_images) == 6
    classes.write_text("# nothing\n")
    with pytest.raises(DataError, match="names no WordNet ids"):
        load_dataset(f"imagenet-subset:{classes}", root)


def test_user_class_list_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    result = invoke("run", "--dataset", f"imagenet-subset:{tmp_path / 'no.txt'}", "--out", tmp_path / "r")
    one_line_error(result, 2, "ImageNet class list")
