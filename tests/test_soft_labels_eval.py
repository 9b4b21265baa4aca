"""Soft labels (DATM, TESLA) in evaluation, saved sets, the report and MTT-layout interop.

A set's soft labels are float logits [n, classes]; networks train on softmax(logits) with
distillkit.labels.label_loss. Everything runs on the embedded sklearn digits, on CPU, in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import invoke, one_line_error
from torch import nn

from distillkit.artifacts import SOFT_LABELS, load_synthetic, save_synthetic, training_labels
from distillkit.config import EvaluateConfig, to_dict
from distillkit.data.augment import DSA
from distillkit.data.datasets import load_dataset
from distillkit.ensemble import Member, pack, train_packed
from distillkit.errors import StoreError
from distillkit.evaluate import EvalSet, evaluate_set, evaluate_sets, train_on_set
from distillkit.interop import load_mtt_set
from distillkit.labels import label_loss
from distillkit.models import build_model
from distillkit.report.collect import collect
from distillkit.report.sections import overview
from distillkit.resolve import resolve_config
from distillkit.snapshots import Snapshots

CPU = torch.device("cpu")
MODEL = "convnet-w32-d2"
#: Three steps per epoch on 20 images (8, 8, 4) and the momentum change at epoch 3 (as test_ensemble).
SCHEDULE = EvaluateConfig(runs=3, epochs=6, batch_size=8, momentum_after_decay=0.5)
#: A run's protocol small enough for the CLI tests: 2 networks × 4 epochs of a tiny ConvNet.
RUN_SETTINGS = {"model.name": "convnet-w8-d1", "evaluate.runs": 2, "evaluate.epochs": 4}
SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "interop" / "train_mtt_set.py"


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    return data.train_images[:20], data.train_labels[:20], (data.test_images, data.test_labels)


def make(name: str, seed: int) -> nn.Module:
    """As ``runtime.model_factory`` does for digits: seeded, the global RNG left alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name, 1, 10, (8, 8))


def soft_logits(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Soft-label logits whose argmax is ``labels``, with some mass on the other classes."""
    noise = 0.3 * torch.randn(len(labels), 10, generator=torch.Generator().manual_seed(seed))
    return (2.0 * nn.functional.one_hot(labels, 10) + noise).float()


# -- the loss, by hand -------------------------------------------------------------------------


def test_soft_label_loss_and_its_gradients_by_hand():
    """Two classes: network logits (0, ln 3) → q = (1/4, 3/4); label logits (ln 3, 0) → p = (3/4, 1/4).

    loss = −Σ p log q = ln 4 − ¼ ln 3; ∂/∂z = (q − p)/B; ∂/∂l_j = −p_j (log q_j + loss)/B = ±(3/16) ln 3 / B.
    Two equal rows (B = 2): the batch mean has the same value and half of each row's gradient.
    """
    ln3 = math.log(3.0)
    z = torch.tensor([[0.0, ln3]] * 2, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[ln3, 0.0]] * 2, dtype=torch.float64, requires_grad=True)
    loss = label_loss(z, y)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(4.0) - ln3 / 4, abs=1e-12)
    torch.testing.assert_close(z.grad, torch.tensor([[-0.25, 0.25]] * 2, dtype=torch.float64))
    expected = torch.tensor([[3 / 32 * ln3, -3 / 32 * ln3]] * 2, dtype=torch.float64)
    torch.testing.assert_close(y.grad, expected)


# -- evaluation --------------------------------------------------------------------------------


def test_soft_labels_train_differently_and_peaked_ones_as_hard(digits):
    images, labels, _ = digits
    augment, lr, seed = DSA(), 0.05, 5

    def trained(targets: torch.Tensor) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        model = train_on_set(make(MODEL, seed), images, targets, lr, SCHEDULE, augment, generator)
        return [p.detach().clone() for p in model.parameters()]

    start = [p.detach() for p in make(MODEL, seed).parameters()]
    hard, soft = trained(labels), trained(soft_logits(labels))
    assert max((a - b).abs().max().item() for a, b in zip(soft, start, strict=True)) > 1e-2
    assert max((a - b).abs().max().item() for a, b in zip(soft, hard, strict=True)) > 1e-3
    peaked = trained(100.0 * nn.functional.one_hot(labels, 10).float())  # softmax: one-hot to 1e-43
    for a, b in zip(peaked, hard, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_evaluation_with_soft_labels_learns(digits):
    images, labels, test = digits
    cfg = dataclasses.replace(SCHEDULE, epochs=20, parallel="off")
    soft = evaluate_set(make, MODEL, images, soft_logits(labels), 0.05, test, cfg, DSA(), CPU, 3)
    hard = evaluate_set(make, MODEL, images, labels, 0.05, test, cfg, DSA(), CPU, 3)
    assert soft.mean > 0.3  # trained, not chance
    assert soft.runs != hard.runs


def test_packed_soft_label_networks_train_as_one_at_a_time(digits):
    images, labels, _ = digits
    augment, seed, lr = DSA(), 7, 0.05
    targets = [soft_logits(labels, k) for k in range(SCHEDULE.runs)]
    alone = []
    for k in range(SCHEDULE.runs):
        generator = torch.Generator().manual_seed(seed + k)
        alone.append(
            train_on_set(make(MODEL, seed + k), images, targets[k], lr, SCHEDULE, augment, generator)
        )
    models = [make(MODEL, seed + k) for k in range(SCHEDULE.runs)]
    members = [
        Member(images, targets[k], lr, torch.Generator().manual_seed(seed + k)) for k in range(SCHEDULE.runs)
    ]
    train_packed(pack(models, images[:8]), members, SCHEDULE, augment).load_into(models)
    for k in range(SCHEDULE.runs):
        for (name, ours), theirs in zip(models[k].named_parameters(), alone[k].parameters(), strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0, msg=name)


def test_soft_and_hard_sets_pack_together(digits):
    """A soft-labelled distilled set beside a hard random-real one: one pack, each as alone."""
    images, labels, test = digits
    cfg = dataclasses.replace(SCHEDULE, runs=2, epochs=8, parallel="on")
    sets = [EvalSet(images, soft_logits(labels), 0.05, 3), EvalSet(images.flip(0), labels.flip(0), 0.02, 40)]
    together = evaluate_sets(make, MODEL, sets, test, cfg, DSA(), CPU)
    off = dataclasses.replace(cfg, parallel="off")
    for item, result in zip(sets, together, strict=True):
        alone = evaluate_set(make, MODEL, item.images, item.labels, item.lr, test, off, DSA(), CPU, item.seed)
        for packed, single in zip(result.runs, alone.runs, strict=True):
            assert abs(packed - single) <= 1 / len(test[1]) + 1e-12


# -- saved sets --------------------------------------------------------------------------------


def test_soft_labels_round_trip_and_old_sets_keep_their_labels(tmp_path):
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 0, 1, 1])
    soft = soft_logits(labels)[:, :3]
    save_synthetic(tmp_path / "new", images, labels, 0.01, {}, {SOFT_LABELS: soft})
    _, got_labels, _, _, extra = load_synthetic(tmp_path / "new")
    assert torch.equal(got_labels, labels)
    assert torch.equal(training_labels(got_labels, extra, 3), soft)
    save_synthetic(tmp_path / "old", images, labels, 0.01, {})  # as before soft labels existed
    _, got_labels, _, _, extra = load_synthetic(tmp_path / "old")
    assert extra == {} and training_labels(got_labels, extra, 3) is got_labels


@pytest.mark.parametrize(
    ("soft", "classes", "fragment"),
    [
        (torch.zeros(3, 3), None, "expected float soft-label logits [4, classes], got torch.float32 (3, 3)"),
        (torch.zeros(4, 3, dtype=torch.long), None, "got torch.int64 (4, 3)"),
        (torch.zeros(4), None, "got torch.float32 (4,)"),
        (torch.zeros(4, 3), 10, "expected float soft-label logits [4, 10]"),
        (torch.full((4, 3), math.nan), None, "NaN or infinite"),
    ],
)
def test_bad_soft_labels_are_refused_in_one_line(soft, classes, fragment):
    with pytest.raises(StoreError) as refused:
        training_labels(torch.tensor([0, 0, 1, 1]), {SOFT_LABELS: soft}, classes)
    assert fragment in str(refused.value) and "\n" not in str(refused.value)
    assert str(refused.value).startswith("synthetic.safetensors: soft_labels: ")


def test_snapshots_save_and_evaluate_the_soft_labels(tmp_path):
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 0, 1, 1])
    soft = soft_logits(labels)[:, :3]
    seen = []
    writer = Snapshots(tmp_path, 1, {}, evaluate=lambda x, y, lr: seen.append(y) or {"mean": 0.5})
    writer.save(1, images, labels, 0.01, soft_labels=soft)
    writer.save(2, images, labels, 0.01)
    assert torch.equal(seen[0], soft) and torch.equal(seen[1], labels)
    _, got, _, _, extra = load_synthetic(tmp_path / "snapshots", "iter-000001")
    assert torch.equal(got, labels) and torch.equal(extra[SOFT_LABELS], soft)


# -- run directories: evaluate, report, export --------------------------------------------------


def write_run(folder: Path, soft: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A run directory as `distillkit distill` leaves one (config, set), with or without soft labels."""
    config = resolve_config(None, None, RUN_SETTINGS)[0]
    data = load_dataset("digits")
    images, labels = data.train_images[:20], data.train_labels[:20]
    logits = soft_logits(labels)
    meta = {
        "dataset": "digits",
        "image_shape": [1, 8, 8],
        "class_names": list(data.class_names),
        "normalisation": {"mean": list(data.mean), "std": list(data.std)},
        "zca": False,
    }
    if soft:
        meta["labels"] = {"kind": "soft", "source": "expert", "learned": True}
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(to_dict(config)))
    save_synthetic(folder, images, labels, 0.02, meta, {SOFT_LABELS: logits} if soft else {})
    return images, labels, logits


def evaluated(*args: object) -> list[float]:
    result = invoke("evaluate", *args, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["convnet-w8-d1"]["runs"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("soft-runs")
    write_run(root / "hard", soft=False)
    write_run(root / "soft", soft=True)
    return {"hard": root / "hard", "soft": root / "soft"}


def test_the_report_names_soft_labels_and_only_then(runs):
    assert "soft labels (learned from expert)" in overview(collect(runs["soft"]))
    assert "soft labels" not in overview(collect(runs["hard"]))


def test_mtt_export_holds_the_soft_logits_and_evaluates_as_the_run(runs, tmp_path, monkeypatch, capsys):
    """The run evaluates on its soft labels; the export, `evaluate --mtt` and the torch-only script agree."""
    out = tmp_path / "mtt"
    result = invoke("export", runs["soft"], "--format", "mtt", "--out", out)
    assert result.exit_code == 0, result.output
    assert "soft-label logits" in result.output
    images, _labels, _lr, _meta, extra = load_synthetic(runs["soft"])
    saved = torch.load(out / "labels_best.pt", weights_only=True)
    assert saved.dtype == torch.float32 and torch.equal(saved, extra[SOFT_LABELS])
    again = load_mtt_set(out)
    assert torch.equal(again[0], images) and torch.equal(again[1], extra[SOFT_LABELS])

    from_run = evaluated(runs["soft"])
    sets = [arg for key, value in RUN_SETTINGS.items() for arg in ("--set", f"{key}={value}")]
    from_mtt = evaluated("--mtt", out, "--dataset", "digits", *sets)
    assert from_run == pytest.approx(from_mtt, abs=1e-9)
    assert from_run != evaluated(runs["hard"])  # the same images with their hard labels

    # The torch-only script: soft cross-entropy, and distillkit's networks with --distillkit-seed.
    npz = tmp_path / "digits-test.npz"
    digits = load_dataset("digits")
    np.savez(npz, images=digits.test_images[:].numpy(), labels=digits.test_labels.numpy())
    args = [SCRIPT, out, "--test", npz, "--model", "convnet-w8-d1", "--epochs", "4", "--runs", "2"]
    args += ["--augment", "color_crop_cutout_scale_rotate", "--device", "cpu", "--distillkit-seed", "0"]
    monkeypatch.setattr(sys, "argv", [*map(str, args), "--json"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    assert json.loads(capsys.readouterr().out)["runs"] == from_mtt


def test_hard_label_runs_export_and_evaluate_as_before(runs, tmp_path):
    out = tmp_path / "mtt"
    assert invoke("export", runs["hard"], "--format", "mtt", "--out", out).exit_code == 0
    saved = torch.load(out / "labels_best.pt", weights_only=True)
    assert saved.dtype == torch.int64 and torch.equal(saved, load_synthetic(runs["hard"])[1])
    sets = [arg for key, value in RUN_SETTINGS.items() for arg in ("--set", f"{key}={value}")]
    assert evaluated(runs["hard"]) == pytest.approx(evaluated("--mtt", out, "--dataset", "digits", *sets))


def test_png_export_of_a_soft_labelled_set_files_images_by_class(runs, tmp_path):
    out = tmp_path / "png"
    assert invoke("export", runs["soft"], "--format", "png", "--out", out).exit_code == 0
    _, labels, _, meta, _ = load_synthetic(runs["soft"])
    counts = {name: len(list((out / name).glob("*.png"))) for name in meta["class_names"]}
    assert counts == {name: int((labels == c).sum()) for c, name in enumerate(meta["class_names"])}


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        (torch.zeros(3, 10), "expected float soft-label logits [4, classes], got torch.float32 (3, 10)"),
        (torch.zeros(4), "expected 4 integer labels or float soft-label logits [4, classes]"),
    ],
)
def test_bad_mtt_labels_are_refused(tmp_path, labels, fragment):
    write_mtt(tmp_path, labels)
    with pytest.raises(StoreError, match=re.escape(fragment)):
        load_mtt_set(tmp_path)


def test_mtt_soft_labels_of_another_class_count_are_refused(tmp_path):
    write_mtt(tmp_path, torch.zeros(4, 3))
    result = invoke("evaluate", "--mtt", tmp_path, "--dataset", "digits", "--quiet")
    one_line_error(result, 2, "the set's soft labels: expected float soft-label logits [4, 10]")


def write_mtt(folder: Path, labels: torch.Tensor) -> None:
    """Four 8×8 images with ``labels`` in MTT's layout."""
    for name, tensor in (("images", torch.zeros(4, 1, 8, 8)), ("labels", labels), ("lr", torch.tensor(0.01))):
        torch.save(tensor, folder / f"{name}_best.pt")
