"""``distillkit evaluate --mtt DIR``: another tool's synthetic set under distillkit's protocol."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from typer.testing import CliRunner

from distillkit.cli import app
from distillkit.errors import StoreError
from distillkit.evaluation_log import latest_by_model
from distillkit.interop import export_mtt, load_mtt_set

runner = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
QUICK = ["--set", "evaluate.runs=2", "--set", "evaluate.epochs=5", "--quiet"]


def write_set(folder, tag="best", n=10, shape=(1, 8, 8), lr=0.02):
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    torch.save(torch.randn(n, *shape, generator=generator), folder / f"images_{tag}.pt")
    torch.save(torch.arange(n) % 10, folder / f"labels_{tag}.pt")
    torch.save(torch.tensor(lr, requires_grad=True), folder / f"lr_{tag}.pt")


def test_an_exported_set_reads_back_exactly(tmp_path):
    images, labels = torch.randn(20, 1, 8, 8), torch.arange(20) % 10
    export_mtt(tmp_path, images, labels, 0.03)
    got_images, got_labels, lr, tag = load_mtt_set(tmp_path)
    assert tag == "best" and torch.equal(got_images, images) and torch.equal(got_labels, labels)
    assert lr == pytest.approx(0.03)


def test_tag_defaults_to_best_then_the_highest_number(tmp_path):
    write_set(tmp_path, "100")
    write_set(tmp_path, "2000")
    assert load_mtt_set(tmp_path)[3] == "2000"
    assert load_mtt_set(tmp_path, "100")[3] == "100"
    write_set(tmp_path, "best")
    assert load_mtt_set(tmp_path)[3] == "best"


def test_evaluate_mtt_reports_and_merges_results(tmp_path):
    write_set(tmp_path / "set")
    out = tmp_path / "eval"
    args = ["evaluate", "--mtt", str(tmp_path / "set"), "--dataset", "digits", "--out", str(out), *QUICK]
    result = runner.invoke(app, [*args, "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    first = json.loads(result.output)["convnet-w32-d2"]
    assert len(first["runs"]) == 2 and 0 <= first["mean"] <= 1
    again = runner.invoke(app, [*args, "--eval-models", "convnet-w16-d2"], env=ENV)
    assert again.exit_code == 0, again.output
    assert len(json.loads((out / "evaluation.json").read_text())) == 2  # one entry per evaluation
    stored = latest_by_model(out)
    assert set(stored) == {"convnet-w32-d2", "convnet-w16-d2"}  # the first model's result is kept
    assert stored["convnet-w16-d2"]["protocol"]["epochs"] == 5


def test_a_pickled_object_is_refused_without_being_run(tmp_path):
    write_set(tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "labels_best.pt").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(StoreError, match="not a tensor-only file"):
        load_mtt_set(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: torch.save({"x": 1}, d / "images_best.pt"), "holds a dict, not a tensor"),
        (lambda d: torch.save(torch.zeros(10, 8, 8), d / "images_best.pt"), "expected float images"),
        (lambda d: torch.save(torch.zeros(9, dtype=torch.long), d / "labels_best.pt"), "integer labels"),
        (lambda d: (d / "lr_best.pt").unlink(), "lr_best.pt is missing"),
        (lambda d: torch.save(torch.full((10, 1, 8, 8), float("nan")), d / "images_best.pt"), "NaN"),
        (lambda d: torch.save(torch.tensor(-0.1), d / "lr_best.pt"), "positive finite"),
        (lambda d: torch.save(torch.arange(10) + 5, d / "labels_best.pt"), "outside 0..9"),
        (lambda d: torch.save(torch.randn(10, 1, 28, 28), d / "images_best.pt"), "digits needs [N, 1, 8, 8]"),
    ],
)
def test_a_damaged_or_mismatched_set_is_one_line_exit_2(tmp_path, damage, message):
    write_set(tmp_path)
    damage(tmp_path)
    result = runner.invoke(app, ["evaluate", "--mtt", str(tmp_path), "--dataset", "digits", *QUICK], env=ENV)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_evaluate_takes_a_run_or_a_folder_not_both(tmp_path):
    result = runner.invoke(app, ["evaluate"], env=ENV)
    assert result.exit_code == 2 and "RUN_DIR or --mtt" in result.output
