"""Shipped presets: every one checked, paper presets split over the layers, listing, show, ``--smoke``."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import invoke, one_line_error

from distillkit.config import RunConfig, apply_overrides, is_dataset_key, last_needed_epoch
from distillkit.errors import ConfigError
from distillkit.host import PluginHost, build_plugin_config
from distillkit.presets import KNOWN_SHAPES, METADATA, parse_preset, preset_names, read_preset
from distillkit.resolve import resolve_layers
from distillkit.smoke import MAX_BATCH_SYN, MAX_EXPERT_BATCH, MAX_IPC

ROOT = Path(__file__).resolve().parents[1]
PAPER = [name for name in preset_names() if read_preset(name).kind == "paper"]
FIVE = ("bil", "itm", "kmeans-init", "smooth", "wp")


def test_the_paper_presets_are_the_published_tables():
    families = {
        family: sorted(n for n in PAPER if n.startswith(f"{family}-")) for family in ("ast", "mtt", "ftd")
    }
    assert [len(families[f]) for f in ("ast", "mtt", "ftd")] == [17, 10, 8]
    assert sum(map(len, families.values())) == len(PAPER)
    ast = {n: read_preset(n) for n in families["ast"]}
    assert {p.values["data.dataset"] for p in ast.values()} == {
        "cifar10",
        "cifar100",
        "tiny-imagenet",
        "imagenette",
        "imagewoof",
        "imagefruit",
        "imagemeow",
    }
    for preset in ast.values():
        assert preset.includes == ("ast-code",) and preset.values["distill.student_momentum"] == 0.9
        assert (preset.values["experts.count"], preset.values["experts.epochs"]) == (50, 50)
        assert preset.values["distill.iterations"] == 5000 and preset.values["evaluate.runs"] == 5
    c100 = read_preset("ast-cifar100-ipc10").values
    assert sorted(c100["plugins"]) == ["itm", "kmeans-init", "smooth", "wp"]
    assert (c100["distill.batch_syn"], c100["distill.max_start_epoch"], c100["evaluate.epochs"]) == (
        128,
        30,
        300,
    )
    c10 = read_preset("ast-cifar10-ipc10")
    assert "kmeans-init" not in c10.values["plugins"] and c10.values["data.zca"] is True
    assert any("kmeans-init" in d for d in c10.deviations)
    assert read_preset("ast-cifar100-ipc50").values["plugins"] == ["smooth", "kmeans-init"]
    tiny = read_preset("ast-tiny-ipc1").values
    assert (tiny["model.name"], tiny["distill.lr_img"], tiny["plugins"]) == (
        "convnet-d4",
        10000,
        ["smooth", "itm", "wp"],
    )
    nette10 = read_preset("ast-imagenette-ipc10")
    assert nette10.values["model.name"] == "convnet-d5" and nette10.values["distill.max_start_epoch"] == 20
    assert any("no ImageNet-subset row for ipc 10" in d for d in nette10.deviations)
    mtt = read_preset("mtt-cifar100-ipc50").values
    assert (mtt["distill.batch_syn"], mtt["data.zca"], mtt["plugins"], mtt["experts.count"]) == (
        125,
        True,
        [],
        100,
    )
    assert read_preset("mtt-tiny-ipc50").values["distill.batch_syn"] == 300
    assert "α₀ 0.01" in read_preset("mtt-cifar10-ipc50").purpose  # FTD's copy of the row differs
    ftd = read_preset("ftd-cifar100-ipc50")
    assert (ftd.values["distill.batch_syn"], ftd.values["distill.syn_steps"]) == (1000, 80)
    assert any("GSAM experts and EMA evaluation not available" in d for d in ftd.deviations)


@pytest.mark.parametrize("name", preset_names())
def test_every_shipped_preset_is_valid(name):
    preset = read_preset(name)
    assert preset.source and (preset.purpose or preset.kind == "paper"), name
    if preset.kind == "paper":
        assert preset.deviations and preset.values["data.dataset"] in KNOWN_SHAPES
        assert {"model.name", "distill.ipc", "plugins"} <= preset.values.keys()
    assert all(is_dataset_key(k) for k in preset.dataset_values)
    assert not any(is_dataset_key(k) for k in preset.method_values)
    host = PluginHost()
    tables: dict[str, dict] = {}
    for key, value in preset.values.items():
        head, _, rest = key.partition(".")
        if rest and head not in RunConfig.__dataclass_fields__:
            tables.setdefault(head, {})[rest] = value
    for plugin, options in tables.items():  # every plugin option names a field of the plugin's Config
        build_plugin_config(plugin, host.plugin_class(plugin), options)
    for plugin in preset.values.get("plugins", []):
        host.plugin_class(plugin)
    config = apply_overrides(
        RunConfig(), {k: v for k, v in preset.values.items() if k.partition(".")[0] not in tables}
    )
    assert last_needed_epoch(config.distill) <= config.experts.epochs or preset.kind == "method"


@pytest.mark.parametrize(
    ("text", "fragment", "hint"),
    [
        (
            'kind = "dataset"\n[distill]\nsyn_step = 3\n',
            "unknown config key 'distill.syn_step'",
            "distill.syn_steps",
        ),
        ('kind = "dataset"\n[model]\nwidth = 32\n', "unknown config key 'model.width'", None),
        ('kind = "paper"\nsorce = "MTT"\n', "unknown key 'sorce'", "source"),
        ('kind = "dataset"\n[distill]\nipc = 1\nipc = 2\n', "not valid TOML", None),
        ('kind = "dataset"\ndistill.ipc = 1\n[distill]\nipc = 2\n', "not valid TOML", None),
        (
            'kind = "dataset"\n[experts]\ncount = 2\nlr = 0.1\n',
            "dataset preset x sets method keys: experts.lr",
            None,
        ),
        ('kind = "paper"\n[distill]\nipc = 1\n', "paper preset x must name its source", None),
        ('kind = "paper"\nsource = "MTT"\n[distill]\nipc = "ten"\n', "distill.ipc expects an integer", None),
        ('kind = "paper"\nsource = "MTT"\ndeviations = "none"\n', "deviations must be a list", None),
        ('kind = "paper"\nsource = "MTT"\nincludes = ["mtt-cifar10-ipc1"]\n', "includes paper preset", None),
        ('kind = "recipe"\n', "must declare kind", None),
    ],
)
def test_a_bad_preset_is_refused_in_one_line(text, fragment, hint):
    with pytest.raises(ConfigError) as caught:
        parse_preset("x", text)
    message = str(caught.value)
    assert fragment in message and "\n" not in message, message
    if hint:
        assert hint in (caught.value.hint or ""), caught.value.hint


def test_a_paper_preset_is_a_dataset_preset_plus_a_method_preset(tmp_path):
    paper = resolve_layers("mtt-cifar10-ipc1", plugins=["smooth"])
    assert paper.sources["distill.ipc"] == paper.sources["experts.momentum"] == "preset mtt-cifar10-ipc1"
    assert paper.config.experts.momentum == 0.0  # the method part beats smooth's recipe (layer 3)
    swapped = resolve_layers("mtt-cifar10-ipc1,fmnist-ref")  # a later dataset preset takes the data part
    assert swapped.config.data.dataset == "fashion-mnist" and swapped.config.model.name == "convnet-w32"
    assert swapped.config.experts.count == 1 and swapped.config.evaluate.epochs == 300
    assert swapped.config.plugins == () and swapped.config.evaluate.weight_decay == 5e-4
    ast = resolve_layers("ast-cifar10-ipc1")
    assert tuple(sorted(ast.config.plugins)) == FIVE and ast.sources["plugins"] == "preset ast-cifar10-ipc1"
    assert ast.config.experts.lr == 0.003 and ast.config.plugin_options["wp"]["mode"] == "multiplicative"
    chosen = resolve_layers("ast-cifar10-ipc1", plugins=["wp"])
    assert chosen.config.plugins == ("wp",) and chosen.sources["plugins"] == "command line"
    file = tmp_path / "p.toml"
    file.write_text('plugins = ["bil"]\n')
    assert resolve_layers("ast-cifar10-ipc1", file).config.plugins == ("bil",)


@pytest.mark.parametrize("name", ["ast-cifar100-ipc50", "mtt-cifar10-ipc10", "ftd-cifar100-ipc1"])
def test_smoke_shrinks_only_the_budget_and_the_command_line_still_wins(name):
    full = resolve_layers(name)
    smoke = resolve_layers(name, smoke=True)
    d, s = full.config.distill, smoke.config.distill
    assert (s.ipc, s.iterations, s.syn_steps, s.max_start_epoch) == (min(d.ipc, MAX_IPC), 2, 2, 1)
    assert 0 < s.batch_syn <= MAX_BATCH_SYN and s.expert_epochs == d.expert_epochs
    assert (smoke.config.experts.count, smoke.config.experts.epochs) == (1, d.expert_epochs)
    assert smoke.config.experts.batch_size == MAX_EXPERT_BATCH
    assert (smoke.config.evaluate.runs, smoke.config.evaluate.epochs, smoke.config.evaluate.models) == (
        1,
        1,
        (),
    )
    for key in ("distill.ipc", "experts.count", "evaluate.runs", "distill.iterations"):
        assert smoke.sources[key] == "smoke"
    same = ("data", "model", "plugins", "plugin_options")
    assert all(getattr(smoke.config, f) == getattr(full.config, f) for f in same)
    assert (smoke.config.experts.lr, s.lr_img, s.student_momentum) == (
        full.config.experts.lr,
        d.lr_img,
        d.student_momentum,
    )
    mine = resolve_layers(
        name, overrides={"distill.iterations": "3", "distill.expert_epochs": "4"}, smoke=True
    )
    assert mine.config.distill.iterations == 3 and mine.sources["distill.iterations"] == "command line"
    assert mine.config.experts.epochs == 4  # the smoke layer fits the command line's M


def test_config_smoke_shows_the_smoke_layer_and_resume_refuses_it(tmp_path):
    result = invoke("config", "--preset", "mtt-cifar10-ipc1", "--smoke", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sources"]["experts.count"] == "smoke"
    one_line_error(
        invoke("run", "--resume", tmp_path, "--smoke"), 2, "cannot be combined with config options"
    )


def test_presets_lists_every_preset_with_its_source():
    result = invoke("presets")
    assert result.exit_code == 0, result.output
    assert all(name in result.output for name in preset_names())
    records = {r["name"]: r for r in json.loads(invoke("presets", "--json").output)}
    assert sorted(records) == preset_names()
    row = records["ast-tiny-ipc1"]
    assert (row["kind"], row["dataset"], row["ipc"]) == ("paper", "tiny-imagenet", 1)
    assert "arXiv 2310.10541" in row["source"] and "N 10 M 2 T⁺ 10" in row["sets"]
    assert records["digits"]["source"] and records["ast-code"]["kind"] == "method"


@pytest.mark.parametrize("name", ["ast-cifar100-ipc10", "mtt-imagenette-ipc1", "ast-code", "digits"])
def test_presets_show_prints_toml_that_reads_back_as_the_same_preset(name):
    result = invoke("presets", "show", name)
    assert result.exit_code == 0, result.output
    shown, original = parse_preset(name, result.output), read_preset(name)
    assert shown.values == original.values and shown.kind == original.kind
    assert (shown.source, shown.deviations) == (original.source, original.deviations)
    assert set(tomllib.loads(result.output)) - set(METADATA) <= {
        "plugins",
        "data",
        "model",
        "experts",
        "distill",
        "evaluate",
        *FIVE,
    }


def test_presets_show_of_an_unknown_name_is_one_line():
    one_line_error(invoke("presets", "show", "ast-cifar10-ipc2"), 2, "unknown preset 'ast-cifar10-ipc2'")


def test_listing_presets_does_not_import_torch():
    code = (
        "import sys\nsys.argv = ['distillkit', 'presets', '--json']\nfrom distillkit.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_config_docs_list_every_paper_preset():
    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert [name for name in PAPER if f"`{name}`" not in text] == []
