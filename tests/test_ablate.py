"""``distillkit ablate``: arms × seeds, paired statistics, shared stores, resumable folders."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from distillkit import ablate, ablate_report
from distillkit.cli import app
from distillkit.errors import ConfigError

runner = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
TINY = [
    "--set", "experts.count=1",
    "--set", "experts.epochs=3",
    "--set", "distill.max_start_epoch=1",
    "--set", "distill.syn_steps=4",
    "--set", "distill.iterations=3",
    "--set", "evaluate.runs=2",
    "--set", "evaluate.epochs=6",
]  # fmt: skip


def test_default_arms_are_plain_each_technique_and_table_7_cumulative():
    labels = [arm.label for arm in ablate.parse_arms(None)]
    assert labels == [
        "plain", "smooth", "kmeans-init", "bil", "itm", "wp",
        "smooth+kmeans-init", "smooth+kmeans-init+bil", "smooth+kmeans-init+bil+itm",
        "smooth+kmeans-init+bil+itm+wp",
    ]  # fmt: skip


def test_arms_take_plugins_and_per_arm_overrides():
    arms = ablate.parse_arms("plain; smooth,distill.student_momentum=0 ;bil,wp")
    assert arms[0].plugins == () and arms[1].plugins == ("smooth",)
    assert arms[1].overrides == (("distill.student_momentum", "0"),)
    assert arms[1].label == "smooth [distill.student_momentum=0]" and arms[2].label == "bil+wp"
    for bad in ("plain", "plain;;smooth", "smooth;smooth"):
        with pytest.raises(ConfigError):
            ablate.parse_arms(bad)


def test_seeds_parse_lists_and_ranges():
    assert ablate.parse_seeds("0,1,2") == [0, 1, 2] and ablate.parse_seeds("3-5") == [3, 4, 5]
    for bad in ("", "1,1", "a", "-1"):
        with pytest.raises(ConfigError):
            ablate.parse_seeds(bad)


def test_paired_interval_is_the_t_interval_of_the_differences():
    mean, half = ablate_report.paired_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert math.isnan(ablate_report.paired_interval([1.5])[1])


def test_ablation_shares_stores_pairs_by_seed_and_reuses_finished_cells(tmp_path):
    out = tmp_path / "abl"
    args = ["ablate", "--seeds", "0,1", "--arms", "plain;bil;smooth", "--out", str(out), "--quiet", *TINY]
    result = runner.invoke(app, args, env=ENV)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "ablation.json").read_text())
    assert len(report["stores"]) == 2  # plain experts for plain and bil, smooth ones for smooth
    rows = {row["arm"]: row for row in report["arms"]}
    for arm in ("plain", "bil", "smooth"):
        assert set(rows[arm]["per_seed"]) == {"0", "1"}
        assert all(v is not None for v in rows[arm]["per_seed"].values())
    assert rows["bil"]["stores"] == rows["plain"]["stores"] != rows["smooth"]["stores"]
    expected = [rows["bil"]["per_seed"][s] - rows["plain"]["per_seed"][s] for s in ("0", "1")]
    assert rows["bil"]["delta"] == pytest.approx(sum(expected) / 2)
    assert rows["bil"]["pairs"] == 2 and "delta" not in rows["plain"]
    assert set(report["random_real"]) == {"0", "1"}
    cells = json.loads((out / "cells" / "smooth" / "seed1" / "config.json").read_text())
    assert cells["seed"] == 1 and cells["experts"]["momentum"] == 0.9
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "ablation.md").read_text()
    assert "| bil |" in table and "paired" in table and "Budget: digits" in table
    before = (out / "cells" / "bil" / "seed0" / "results.json").stat().st_mtime_ns
    again = runner.invoke(app, args, env=ENV)
    assert again.exit_code == 0, again.output
    assert (out / "cells" / "bil" / "seed0" / "results.json").stat().st_mtime_ns == before
    assert json.loads((out / "ablation.json").read_text())["arms"] == report["arms"]


def test_an_ablation_folder_is_not_reused_for_another_ablation(tmp_path):
    out = tmp_path / "abl"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["ablate", "--arms", "plain;bil", "--out", str(out), *TINY], env=ENV)
    assert result.exit_code == 2 and "not an ablation folder" in result.output
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "seed=3"], "--seeds"),
        (["--set", "plugins=bil"], "--arms"),
        (["--jobs", "0"], "--jobs"),
        (["--arms", "plain;bli"], "unknown plugin 'bli'"),
        (["--seeds", "x"], "--seeds expects"),
    ],
)
def test_bad_ablation_input_is_one_line_and_writes_nothing(tmp_path, extra, message):
    out = tmp_path / "abl"
    result = runner.invoke(app, ["ablate", "--out", str(out), *TINY, *extra], env=ENV)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()
