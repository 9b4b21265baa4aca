"""One precedence rule for every config value, composable presets, and per-key sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY
from PIL import Image
from typer.testing import CliRunner

from distillkit.cli import app
from distillkit.config import ExpertsConfig, first_decayed_epoch, is_dataset_key
from distillkit.errors import ConfigError
from distillkit.presets import default_for, parse_preset, preset_names, read_preset
from distillkit.resolve import resolve_layers

runner = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
FIVE = ["smooth", "kmeans-init", "bil", "itm", "wp"]


def test_every_shipped_preset_declares_its_kind_and_keeps_to_it():
    kinds = {name: read_preset(name).kind for name in preset_names() if read_preset(name).kind != "paper"}
    assert kinds == {
        "ast-code": "method",
        "datm-code": "method",
        "digits": "dataset",
        "fmnist-cpu": "dataset",
        "fmnist-ref": "dataset",
        "ftd-code": "method",
        "tesla-code": "method",
    }
    for name in kinds:
        preset = read_preset(name)
        assert all(is_dataset_key(k) == (preset.kind == "dataset") for k in preset.values), name


def test_a_preset_with_keys_of_the_other_kind_is_refused():
    with pytest.raises(ConfigError, match=r"dataset preset x sets method keys: experts\.lr"):
        parse_preset("x", 'kind = "dataset"\n[experts]\nlr = 0.1\ncount = 2\n')
    with pytest.raises(ConfigError, match=r"method preset y sets dataset keys: distill\.ipc"):
        parse_preset("y", 'kind = "method"\n[distill]\nipc = 3\nstudent_momentum = 0.5\n')
    with pytest.raises(ConfigError, match="must declare kind"):
        parse_preset("z", "[distill]\nipc = 3\n")


def test_dataset_and_method_presets_compose_in_either_order():
    one = resolve_layers("fmnist-cpu,ast-code", plugins=FIVE)
    other = resolve_layers(["ast-code", "fmnist-cpu"], plugins=FIVE)
    assert one.config == other.config and one.sources == other.sources
    assert one.config.data.dataset == "fashion-mnist" and one.config.model.name == "convnet-w32"
    assert one.config.distill.match_denominator == "perturbed"
    assert one.sources["distill.student_momentum"] == "preset ast-code"
    assert one.sources["distill.max_start_epoch"] == "preset fmnist-cpu"
    assert one.config.plugin_options["kmeans-init"]["features"] == "logits"


def test_a_key_set_twice_takes_the_later_layer():
    both = resolve_layers("fmnist-cpu,digits")  # two dataset presets: the later wins
    assert both.config.model.name == "convnet-w32-d2" and both.sources["model.name"] == "preset digits"
    assert both.config.distill.graph_steps == 6  # only fmnist-cpu sets it
    assert both.sources["distill.graph_steps"] == "preset fmnist-cpu"
    flipped = resolve_layers("digits,fmnist-cpu")
    assert flipped.config.model.name == "convnet-w32"


def test_plugin_defaults_beat_dataset_presets_and_lose_to_methods_files_and_the_command_line(tmp_path):
    smooth = resolve_layers("fmnist-cpu", plugins=["smooth"])
    assert smooth.config.experts.momentum == 0.9 and smooth.sources["experts.momentum"] == "plugin smooth"
    assert smooth.config.experts.lr_decay == "ast-code"
    assert smooth.config.distill.student_momentum == 0.0
    code = resolve_layers("fmnist-cpu,ast-code", plugins=["smooth"])
    assert code.config.experts.lr == 0.003 and code.sources["experts.lr"] == "preset ast-code"
    plain = resolve_layers("fmnist-cpu")
    assert plain.config.experts.lr == 0.01 and plain.sources["experts.lr"] == "default"
    assert plain.config.experts.momentum == 0.0 and plain.config.distill.student_momentum == 0.0
    file = tmp_path / "my.toml"
    file.write_text("[experts]\nlr = 0.005\nmomentum = 0.5\n[smooth]\ngp_weight = 1.0\n")
    mine = resolve_layers("fmnist-cpu", file, {"experts.momentum": "0.8"}, ["smooth"])
    assert mine.config.experts.lr == 0.005 and mine.sources["experts.lr"] == f"config {file}"
    assert mine.config.experts.momentum == 0.8 and mine.sources["experts.momentum"] == "command line"
    assert mine.config.plugin_options["smooth"]["gp_weight"] == 1.0
    assert mine.sources["smooth.gp_weight"] == f"config {file}"
    assert mine.sources["smooth.gp_norm"] == "plugin smooth (its default)"


@pytest.mark.parametrize(
    ("dataset", "preset", "model"),
    [
        ("digits", "digits", "convnet-w32-d2"),
        ("mnist", "fmnist-cpu", "convnet-w32"),
        ("fashion-mnist", "fmnist-cpu", "convnet-w32"),
        ("cifar10", "fmnist-cpu", "convnet-w32"),
        ("cifar100", "fmnist-cpu", "convnet-w32"),
        ("svhn", "fmnist-cpu", "convnet-w32"),
    ],
)
def test_each_dataset_gets_its_default_preset(dataset, preset, model):
    chosen = default_for(dataset)
    assert chosen.name == preset and chosen.values["model.name"] == model


@pytest.mark.parametrize(
    ("side", "preset", "model"),
    [
        (8, "digits", "convnet-w32-d2"),
        (64, "fmnist-cpu", "convnet-w32-d4"),
        (128, "fmnist-cpu", "convnet-w32-d5"),
    ],
)
def test_an_image_folder_gets_a_preset_by_its_image_size(tmp_path, side, preset, model):
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            Image.new("RGB", (side, side), (10, 20, 30)).save(folder / "0.png")
    resolved = resolve_layers(overrides={"data.dataset": f"imagefolder:{tmp_path}"})
    assert resolved.config.model.name == model
    assert resolved.sources["model.name"].startswith(f"preset {preset} (default for imagefolder:")
    assert f"{side}×{side}, 2 classes" in resolved.sources["model.name"]
    assert resolved.config.data.dataset == f"imagefolder:{tmp_path}"


def test_a_config_file_naming_a_dataset_gets_that_datasets_preset(tmp_path):
    file = tmp_path / "my.toml"
    file.write_text('[data]\ndataset = "fashion-mnist"\n')
    resolved = resolve_layers(config_file=file)
    assert resolved.config.model.name == "convnet-w32" and resolved.config.distill.max_start_epoch == 5


@pytest.mark.parametrize(
    ("rule", "epochs", "first"),
    [
        ("none", 6, None),
        ("half", 6, 3),
        ("half", 50, 25),
        ("ast-code", 6, 5),
        ("ast-code", 50, 27),
        ("ast-code", 2, None),
    ],
)
def test_expert_lr_decay_is_relative_to_the_epoch_count(rule, epochs, first):
    assert first_decayed_epoch(ExpertsConfig(epochs=epochs, lr_decay=rule)) == first


def test_config_command_shows_the_layer_of_each_key_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["config", "--preset", "fmnist-ref", "-p", "smooth", "--ipc", "10"], env=ENV)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "experts.momentum " in line)
    assert "0.9" in line and "plugin smooth" in line
    assert "command line" in next(line for line in result.output.splitlines() if "distill.ipc" in line)
    payload = json.loads(runner.invoke(app, ["config", "--json", "-p", "wp"], env=ENV).output)
    assert payload["config"]["plugin_options"]["wp"]["mode"] == "multiplicative"
    assert payload["sources"]["data.dataset"].startswith("preset digits")
    assert list(Path(tmp_path).iterdir()) == []


def test_a_run_records_the_source_of_every_key(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *TINY, "--plugins", "bil", "--out", str(out), "--quiet"], env=ENV)
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["sources"]["distill.iterations"] == "command line"
    assert recorded["sources"]["model.name"].startswith("preset digits")
    assert recorded["sources"]["bil.log_base"] == "plugin bil (its default)"
    again = runner.invoke(
        app, ["evaluate", str(out), "--set", "evaluate.runs=1", "--json", "--quiet"], env=ENV
    )
    assert again.exit_code == 0, again.output


def test_the_layer_that_named_the_plugins_is_recorded(tmp_path):
    assert resolve_layers(plugins=["bil"]).sources["plugins"] == "command line"
    file = tmp_path / "p.toml"
    file.write_text('plugins = ["bil"]\n')
    assert resolve_layers(config_file=file).sources["plugins"] == f"config {file}"
    assert resolve_layers().sources["plugins"] == "default"
