"""Runs a researcher can inspect and extend: snapshots, a validation split, extending a finished
run, the evaluation history and the invocation record (tiny digits runs)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, invoke, one_line_error

from distillkit.artifacts import load_synthetic
from distillkit.checkpoint import checkpoint_dir
from distillkit.config import DataConfig
from distillkit.data.holdout import stratified_split
from distillkit.evaluation_log import OLD_COPY, latest_by_model, load_entries
from distillkit.runtime import prepare_data
from distillkit.snapshots import load_snapshot, read_index, snapshot_dir

#: Every option after TINY's: keys set twice would be refused, so TINY's iterations is replaced.
BASE = [
    arg for pair in zip(TINY[::2], TINY[1::2], strict=True) if "iterations" not in pair[1] for arg in pair
]
VAL = ["--set", "data.val_fraction=0.2"]
SNAP = ["--set", "distill.snapshot_every=2"]
SNAP_EVAL = ["--set", "distill.snapshot_eval=2", "--set", "distill.snapshot_eval_epochs=3"]


def _iterations(n: int) -> list[str]:
    return ["--set", f"distill.iterations={n}"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Experts trained without a validation split."""
    root = tmp_path_factory.mktemp("store") / "experts"
    result = invoke("experts", *BASE, "--out", root, "--quiet")
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="module")
def val_store(tmp_path_factory) -> Path:
    """Experts trained on what a 0.2 validation split leaves of train."""
    root = tmp_path_factory.mktemp("val-store") / "experts"
    result = invoke("experts", *BASE, *VAL, "--out", root, "--quiet")
    assert result.exit_code == 0, result.output
    return root


def _distill(store: Path, out: Path, *extra: str) -> None:
    result = invoke("distill", "--experts", store, *BASE, *extra, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output


def _same_files(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


# -- the validation split -------------------------------------------------------------------


def test_the_validation_split_is_stratified_seeded_and_taken_from_train_only():
    full = prepare_data(DataConfig())
    held = prepare_data(DataConfig(val_fraction=0.2))
    again = prepare_data(DataConfig(val_fraction=0.2))
    other = prepare_data(DataConfig(val_fraction=0.2, val_seed=1))
    assert full.val is None and held.holdout == {"val_fraction": 0.2, "val_seed": 0}
    assert torch.equal(held.test_images[:], full.test_images[:])  # test is never touched
    per_class = torch.bincount(full.dataset.train_labels)
    val_x, val_y = held.val
    assert torch.equal(torch.bincount(val_y), torch.round(per_class * 0.2).long())
    assert len(held.train_images) + len(val_x) == len(full.train_images)
    kept, out = (torch.from_numpy(i) for i in stratified_split(full.dataset.train_labels.numpy(), 0.2, 0))
    assert set(kept.tolist()).isdisjoint(out.tolist()) and len(kept) + len(out) == len(full.train_images)
    assert torch.equal(val_x[:], full.train_images[out]) and torch.equal(
        held.train_images[:], full.train_images[kept]
    )
    assert torch.equal(again.val[0][:], val_x[:])
    assert not torch.equal(other.val[0][:], val_x[:])


def test_the_validation_split_is_part_of_the_expert_store_key(store, tmp_path):
    result = invoke("distill", "--experts", store, *BASE, *VAL, "--out", tmp_path / "d", "--quiet")
    one_line_error(result, 2, "validation")
    assert not (tmp_path / "d").exists()


def test_snapshot_eval_without_a_validation_split_is_refused(tmp_path):
    result = invoke("run", *BASE, *SNAP, *SNAP_EVAL, "--out", tmp_path / "r", "--quiet")
    one_line_error(result, 2, "needs a validation split")
    assert not (tmp_path / "r").exists()
    result = invoke("run", *BASE, *VAL, *SNAP_EVAL, "--out", tmp_path / "r", "--quiet")
    one_line_error(result, 2, "snapshot_every is 0")


# -- snapshots --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snapped(val_store, tmp_path_factory) -> Path:
    """A finished `run` (4 iterations) with snapshots every 2 iterations, each evaluated on validation."""
    out = tmp_path_factory.mktemp("snapped") / "run"
    args = ["run", *BASE, *_iterations(4), *VAL, *SNAP, *SNAP_EVAL, "--experts", val_store]
    result = invoke(*args, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_snapshots_are_sets_evaluated_on_validation(snapped):
    index = read_index(snapped)
    assert [e["iteration"] for e in index] == [0, 2, 4]
    for entry in index:
        assert entry["validation"]["split"] == "validation" and len(entry["validation"]["runs"]) == 2
        assert all(0 <= acc <= 1 for acc in entry["validation"]["runs"])
    final, last = load_synthetic(snapped), load_snapshot(snapped, 4)
    assert torch.equal(final[0], last[0]) and final[2] == last[2]
    first = load_snapshot(snapped, 0)
    assert first[3]["iteration"] == 0 and not torch.equal(first[0], last[0])
    assert first[3]["normalisation"] == final[3]["normalisation"]  # what export needs


def test_evaluating_snapshots_leaves_the_distilled_set_unchanged(val_store, tmp_path):
    plain, evaluated = tmp_path / "plain", tmp_path / "evaluated"
    _distill(val_store, plain, *_iterations(4), *VAL, *SNAP)
    _distill(val_store, evaluated, *_iterations(4), *VAL, *SNAP, *SNAP_EVAL)
    assert torch.equal(load_synthetic(plain)[0], load_synthetic(evaluated)[0])
    assert "validation" not in read_index(plain)[0] and "validation" in read_index(evaluated)[0]


def test_evaluate_and_export_read_a_snapshot(snapped, tmp_path):
    result = invoke("evaluate", snapped, "--snapshot", 2, "--runs", 1, "--epochs", 2, "--quiet")
    assert result.exit_code == 0, result.output
    entry = load_entries(snapped)[-1]
    assert entry["set"] == {"kind": "snapshot", "file": "snapshots/iter-000002.safetensors", "iteration": 2}
    assert entry["protocol"]["runs"] == 1 and entry["protocol"]["epochs"] == 2
    assert entry["protocol"]["split"] == "test" and entry["random_real"] is not None
    exported = invoke("export", snapped, "--snapshot", 0, "--format", "mtt", "--out", tmp_path / "mtt")
    assert exported.exit_code == 0, exported.output
    images = torch.load(tmp_path / "mtt" / "images_best.pt", weights_only=True)
    assert torch.equal(images, load_snapshot(snapped, 0)[0])

    missing = invoke("evaluate", snapped, "--snapshot", 3, "--quiet")
    one_line_error(missing, 2, "no snapshot at iteration 3")
    assert "0, 2, 4" in missing.output
    twice = invoke("evaluate", snapped, "--runs", 1, "--set", "evaluate.runs=2", "--quiet")
    one_line_error(twice, 2, "evaluate.runs")


def test_a_resume_rewrites_snapshots_past_its_checkpoint(store, tmp_path):
    reference = tmp_path / "reference"
    _distill(store, reference, *_iterations(6), "--set", "distill.snapshot_every=1")
    cut = tmp_path / "cut"  # killed after snapshot 3 but before checkpoint 3
    _distill(
        store,
        cut,
        *_iterations(3),
        "--set",
        "distill.snapshot_every=1",
        "--set",
        "distill.checkpoint_every=2",
    )
    (checkpoint_dir(cut) / "ckpt-000003.json").unlink()
    for name in ("synthetic.json", "synthetic.safetensors"):
        (cut / name).unlink()
    stale = snapshot_dir(cut) / "iter-000003.safetensors"
    stale.write_bytes(stale.read_bytes()[:-1] + b"!")  # what the resumed run must not keep
    result = invoke("distill", "--resume", cut, *_iterations(6), "--quiet")
    assert result.exit_code == 0, result.output
    assert [e["iteration"] for e in read_index(cut)] == list(range(7))  # each once, in order
    names = [f"iter-{i:06d}.safetensors" for i in range(7)] + ["index.jsonl"]
    _same_files(snapshot_dir(reference), snapshot_dir(cut), names)


# -- extending a finished run --------------------------------------------------------------


def test_extending_a_finished_run_continues_to_the_new_length_bit_for_bit(store, tmp_path):
    reference = tmp_path / "reference"
    _distill(store, reference, *_iterations(7), *SNAP)
    extended = tmp_path / "extended"
    _distill(store, extended, *_iterations(3), *SNAP)
    before = load_synthetic(extended)

    result = invoke("distill", "--resume", extended, *_iterations(7), "--quiet")
    assert result.exit_code == 0, result.output
    _same_files(reference, extended, ["synthetic.safetensors"])
    assert _metrics(reference) == _metrics(extended)
    assert json.loads((extended / "config.json").read_text())["distill"]["iterations"] == 7
    kept = load_snapshot(extended, 3)  # the final set of the 3-iteration run, kept for inspection
    assert torch.equal(kept[0], before[0]) and "before extending" in kept[3]["note"]
    assert [e["iteration"] for e in read_index(extended)] == [0, 2, 3, 4, 6]
    record = json.loads((extended / "invocation.json").read_text())
    assert [entry["command"] for entry in record["invocations"]] == ["distill", "distill"]

    shorter = invoke("distill", "--resume", extended, *_iterations(5), "--quiet")
    one_line_error(shorter, 2, "distill.iterations=5 is below the run's 7")
    other = invoke("distill", "--resume", extended, *_iterations(9), "--set", "distill.lr_img=50", "--quiet")
    one_line_error(other, 2, "distill.lr_img would change")
    same = invoke("distill", "--resume", extended, *_iterations(7), "--quiet")
    one_line_error(same, 2, "nothing to resume")
    _same_files(reference, extended, ["synthetic.safetensors"])  # the refusals changed nothing


def test_extending_a_run_evaluates_the_new_set_and_keeps_the_old_results(store, tmp_path):
    out = tmp_path / "run"
    result = invoke("run", *BASE, *_iterations(2), "--experts", store, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    result = invoke("run", "--resume", out, *_iterations(4), "--quiet")
    assert result.exit_code == 0, result.output
    entries = load_entries(out)
    assert [e["set"]["iteration"] for e in entries] == [2, 4]
    assert all(e["command"] == "run" and e["random_real"] for e in entries)
    results = json.loads((out / "results.json").read_text())
    assert results["distilled"]["runs"] == entries[-1]["models"]["convnet-w32-d2"]["runs"]


# -- evaluation history and invocation record ----------------------------------------------


def test_an_old_single_entry_evaluation_file_is_converted_on_the_next_append(snapped, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(snapped, run_dir, ignore=shutil.ignore_patterns(".lock"))
    result = {"model": "convnet-w16-d2", "mean": 0.5, "std": 0.0, "runs": [0.5]}
    old = {"convnet-w16-d2": {**result, "protocol": {"epochs": 7}}}
    (run_dir / "evaluation.json").write_text(json.dumps(old))
    assert latest_by_model(run_dir)["convnet-w16-d2"]["mean"] == 0.5  # readable before conversion

    evaluated = invoke("evaluate", run_dir, "--runs", 1, "--epochs", 2, "--json", "--quiet")
    assert evaluated.exit_code == 0, evaluated.output
    entries = load_entries(run_dir)
    assert isinstance(json.loads((run_dir / "evaluation.json").read_text()), list)
    assert entries[0]["models"] == {"convnet-w16-d2": result} and entries[0]["protocol"] == {"epochs": 7}
    assert entries[-1]["set"]["kind"] == "final" and entries[-1]["set"]["iteration"] == 4
    assert json.loads((run_dir / OLD_COPY).read_text()) == old
    assert set(latest_by_model(run_dir)) == {"convnet-w16-d2", "convnet-w32-d2"}


def test_invocation_json_records_every_command_as_typed(snapped, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(snapped, run_dir, ignore=shutil.ignore_patterns(".lock"))
    typed = ["evaluate", str(run_dir), "--runs", "1", "--epochs", "1", "--quiet"]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/distillkit", *typed])  # what the shell hands the CLI
    monkeypatch.chdir(tmp_path)
    result = invoke(*typed)
    assert result.exit_code == 0, result.output
    record = json.loads((run_dir / "invocation.json").read_text())
    assert record["command"] == "run" and record["experts"]  # what --resume needs stays the first
    first, last = record["invocations"][0], record["invocations"][-1]
    assert first["command"] == "run" and last["command"] == "evaluate"
    assert last["argv"] == ["/usr/bin/distillkit", *typed] and last["cwd"] == str(tmp_path)
    assert {"python", "torch", "distillkit"} <= set(last["versions"])
    assert last["plugins"]["smooth"]["package"] == "distillkit" and not last["plugins"]["smooth"]["selected"]
