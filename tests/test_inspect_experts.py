"""``inspect-experts`` and ``experts.eval_every``: real tiny digits stores, numbers checked from the files."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_EXPERTS, invoke, one_line_error

import distillkit
from distillkit import api
from distillkit.config import ExpertsConfig, from_dict, to_dict
from distillkit.experts.store import TrajectoryStore
from distillkit.experts.train import is_test_epoch

#: The shared tiny experts (4 epochs), tested after every epoch.
TINY = TINY_EXPERTS


def resolve(plugins: list[str] | None = None, **overrides: object):
    return distillkit.resolve_config(preset="digits", overrides={**TINY, **overrides}, plugins=plugins)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """plain: 2 experts tested every epoch; momentum: tested after epochs 3 and 4 only (eval_every 3);
    needed: stores epochs 0, 1, 2, 4 only; sparse: plain expert 0 again, tested only after the last;
    smooth and clip: the smooth plugin with and without its gradient penalty (2 epochs)."""
    root = tmp_path_factory.mktemp("stores")
    config, _ = resolve()
    data = api.prepare_data(config.data)
    recipes = {
        "plain": {"experts.count": 2, "experts.eval_every": 1},
        "momentum": {"experts.momentum": 0.9, "experts.eval_every": 3},
        "needed": {"experts.store_epochs": "needed"},
        "sparse": {"experts.eval_every": 0},
    }
    for name, overrides in recipes.items():
        config, host = resolve(**overrides)
        api.train_experts(config, host, data, root / name)
    for name, gp_weight in (("smooth", 2.0), ("clip", 0.0)):
        config, host = resolve(["smooth"], **{"experts.epochs": 2, "smooth.gp_weight": gp_weight})
        api.train_experts(config, host, data, root / name)
    return {name: root / name for name in [*recipes, "smooth", "clip"]}


def inspect_json(*paths: Path) -> dict:
    result = invoke("inspect-experts", *paths, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def direct_changes(store: TrajectoryStore, index: int) -> list[float]:
    """‖θt − θt+1‖² straight from the whole loaded trajectory (every epoch stored)."""
    trajectory = store.load(index).double()
    return ((trajectory[1:] - trajectory[:-1]) ** 2).sum(1).tolist()


def test_changes_avg_var_and_accuracies_match_the_trajectories_and_manifest(stores) -> None:
    store = TrajectoryStore.open(stores["plain"])
    (report,) = inspect_json(stores["plain"])["stores"]
    expected = [direct_changes(store, i) for i in (0, 1)]
    assert expected[0] != expected[1]  # two different experts, so the mean is a real mean
    assert report["experts"] == 2 and report["epochs"] == 4 and report["missing_epochs"] == []
    for t, row in enumerate(report["per_epoch"]):
        assert row["change"] == pytest.approx([expected[0][t], expected[1][t]], rel=1e-12)
        assert row["change_mean"] == pytest.approx((expected[0][t] + expected[1][t]) / 2, rel=1e-12)
        for i, entry in enumerate(store.manifest.experts):
            assert row["test_acc"][i] == entry["test_acc"][t]
            assert 0 <= row["train_acc"][i] <= 1
    per_expert = [sum(e) / 4 for e in expected]
    assert [e["avg_var"] for e in report["per_expert"]] == pytest.approx(per_expert, rel=1e-12)
    assert report["avg_var"] == pytest.approx(sum(per_expert) / 2, rel=1e-12)
    finals = [entry["test_acc"][-1] for entry in store.manifest.experts]
    assert report["final_test_acc"] == pytest.approx(sum(finals) / 2)
    assert report["label"] == "sgd, no momentum, lr 0.01"


def test_several_stores_side_by_side_with_recipe_labels(stores) -> None:
    plain, momentum = inspect_json(stores["plain"], stores["momentum"])["stores"]
    assert momentum["label"] == "sgd, momentum 0.9, lr 0.01"
    assert plain["avg_var_ratio"] == pytest.approx(1.0)
    assert momentum["avg_var_ratio"] == pytest.approx(momentum["avg_var"] / plain["avg_var"])
    assert momentum["avg_var"] > plain["avg_var"]  # heavy-ball momentum moves the weights further
    result = invoke("inspect-experts", stores["plain"], stores["momentum"])
    assert result.exit_code == 0, result.output
    assert "sgd, no momentum, lr 0.01" in result.output and "sgd, momentum 0.9, lr 0.01" in result.output
    assert f"{momentum['avg_var_ratio']:.2f}" in result.output
    assert "[2] ‖Δθ‖²" in result.output


def test_identical_recipes_are_told_apart_by_folder(stores, tmp_path: Path) -> None:
    first, second = inspect_json(stores["plain"], stores["sparse"])["stores"]
    assert first["label"] == "sgd, no momentum, lr 0.01 (plain)"
    assert second["label"] == "sgd, no momentum, lr 0.01 (sparse)"
    copy = tmp_path / "[bold]copy"  # printed as it is, not read as rich markup
    shutil.copytree(stores["sparse"], copy)
    result = invoke("inspect-experts", stores["plain"], copy)
    assert result.exit_code == 0 and "lr 0.01 ([bold]copy)" in result.output, result.output


def test_plugin_options_that_differ_are_named_in_the_labels(stores) -> None:
    plain, smooth, clip = inspect_json(stores["plain"], stores["smooth"], stores["clip"])["stores"]
    recipe = "sgd, momentum 0.9, lr 0.01, decay ast-code ×0.6, + smooth"
    assert smooth["label"] == f"{recipe} (gp_weight 2.0), epochs 2"
    assert clip["label"] == f"{recipe} (gp_weight 0.0), epochs 2"
    assert plain["label"] == "sgd, no momentum, lr 0.01, epochs 4"


def test_eval_every_tests_every_nth_epoch_and_always_the_last(stores) -> None:
    def tested(every: int, epochs: int = 4) -> list[int]:
        return [t for t in range(epochs) if is_test_epoch(ExpertsConfig(epochs=epochs, eval_every=every), t)]

    assert tested(1) == [0, 1, 2, 3] and tested(2) == [1, 3] and tested(3) == [2, 3] and tested(0) == [3]
    for name, epochs in (("momentum", [2, 3]), ("sparse", [3])):
        entry = TrajectoryStore.open(stores[name]).manifest.experts[0]
        assert [row["epoch"] for row in entry["history"] if "test_acc" in row] == epochs
        assert len(entry["test_acc"]) == len(epochs)
        (report,) = inspect_json(stores[name])["stores"]
        assert [t for t, row in enumerate(report["per_epoch"]) if row["test_acc"] != [None]] == epochs
        assert report["final_test_acc"] == entry["test_acc"][-1]


def test_test_passes_change_no_trajectory_so_they_stay_out_of_the_store_key(stores) -> None:
    every, only_last = TrajectoryStore.open(stores["plain"]), TrajectoryStore.open(stores["sparse"])
    assert every.key == only_last.key and "eval_every" not in every.key["experts"]
    assert torch.equal(every.load(0), only_last.load(0))
    assert every.manifest.experts[0]["test_acc"][-1] == only_last.manifest.experts[0]["test_acc"][-1]


def test_a_store_with_epoch_gaps_reports_what_exists_and_names_the_missing(stores) -> None:
    store = TrajectoryStore.open(stores["needed"])
    assert store.stored_epochs(0) == [0, 1, 2, 4]
    (report,) = inspect_json(stores["needed"])["stores"]
    assert report["missing_epochs"] == [2, 3]
    rows = store.load(0, [0, 1, 2]).double()
    expected = ((rows[1:] - rows[:-1]) ** 2).sum(1).tolist()
    assert [row["change"][0] for row in report["per_epoch"]] == pytest.approx([*expected, None, None])
    assert report["avg_var"] == pytest.approx(sum(expected) / 2)
    result = invoke("inspect-experts", stores["needed"])
    assert result.exit_code == 0, result.output
    assert "no ‖θt − θt+1‖² for epochs t = 2..3" in result.output


def test_the_plot_is_a_png(stores, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    target = tmp_path / "fig4.png"
    three = (stores["plain"], stores["momentum"], stores["needed"])
    result = invoke("inspect-experts", *three, "--plot", target)
    assert result.exit_code == 0, result.output
    with Image.open(target) as image:
        assert image.format == "PNG" and image.width > 500 and image.height > 500
    assert [p.name for p in tmp_path.iterdir()] == ["fig4.png"]  # no temporary file left


def test_without_matplotlib_the_table_works_and_plot_is_one_line(stores, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    assert invoke("inspect-experts", stores["plain"]).exit_code == 0
    assert invoke("inspect-experts", stores["plain"], "--json").exit_code == 0
    result = invoke("inspect-experts", stores["plain"], "--plot", tmp_path / "f.png")
    one_line_error(result, 2, "--plot needs matplotlib")
    assert "distillkit[plots]" in result.output and not (tmp_path / "f.png").exists()


def test_bad_input_is_one_line_and_exit_2(stores, tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a store")
    (tmp_path / "plain-folder").mkdir()
    empty = tmp_path / "empty"
    TrajectoryStore.create_or_open(empty, TrajectoryStore.open(stores["plain"]).key)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    cases = {
        tmp_path / "nowhere": "does not exist",
        a_file: "is a file, not a trajectory store",
        tmp_path / "plain-folder": "is not a trajectory store",
        empty: "holds no finished expert",
        broken: "cannot be read as JSON",
    }
    for path, fragment in cases.items():
        one_line_error(invoke("inspect-experts", path), 2, fragment)
    # A bad store among good ones fails before anything is measured or written.
    figure = tmp_path / "f.png"
    one_line_error(invoke("inspect-experts", stores["plain"], empty, "--plot", figure), 2, "no finished")
    assert not figure.exists()


def test_the_old_key_gets_a_rename_hint_and_recorded_configs_still_load(tmp_path: Path) -> None:
    old = tmp_path / "old.toml"
    old.write_text("[experts]\nevaluate_each_epoch = false\n")
    result = invoke("config", "-c", old)
    one_line_error(result, 2, "unknown config key 'experts.evaluate_each_epoch'")
    assert "Hint: renamed: use experts.eval_every" in result.output
    one_line_error(invoke("config", "--set", "experts.eval_every=-1"), 2, "experts.eval_every must be >= 0")
    for before, after in ((True, 1), (False, 0)):
        recorded = to_dict(distillkit.RunConfig())
        recorded["experts"].pop("eval_every")
        recorded["experts"]["evaluate_each_epoch"] = before  # a run directory's config.json of before
        assert from_dict(recorded).experts.eval_every == after


def test_trajectories_read_a_few_rows_at_a_time_give_the_same_changes(stores, monkeypatch) -> None:
    from distillkit.experts import smoothness

    store = TrajectoryStore.open(stores["plain"])
    monkeypatch.setattr(smoothness, "CHUNK_BYTES", 1)  # two rows per read: every chunk boundary crossed
    assert list(smoothness.squared_changes(store, 1).values()) == pytest.approx(
        direct_changes(store, 1), rel=1e-12
    )


def test_experts_are_tested_once_unless_asked() -> None:
    """Only after the last epoch by default; ``fmnist-ref`` tests every epoch, as MTT's buffer.py."""
    tested = {
        name: distillkit.resolve_config(preset=name)[0].experts.eval_every
        for name in ("fmnist-cpu", "fmnist-ref")
    }
    assert tested == {"fmnist-cpu": 0, "fmnist-ref": 1}
