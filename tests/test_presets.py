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
from distillkit.smoke import MAX_BATCH_SYN, MAX_EXPERT_BATCH, MAX_EXPERT_STEPS, MAX_IPC

ROOT = Path(__file__).resolve().parents[1]
PAPER = [name for name in preset_names() if read_preset(name).kind == "paper"]
FIVE = ("bil", "itm", "kmeans-init", "smooth", "wp")


def test_the_paper_presets_are_the_published_tables():
    names = ("ast", "mtt", "ftd", "datm", "tesla")
    families = {family: sorted(n for n in PAPER if n.startswith(f"{family}-")) for family in names}
    assert [len(families[f]) for f in names] == [17, 10, 8, 7, 2]
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
    assert not any("not available" in d for d in ftd.deviations)


#: FTD Table 7: (GSAM α, EMA decay) per row.
FTD_ROWS = {
    "cifar10-ipc1": (0.3, 0.9999),
    "cifar10-ipc10": (0.3, 0.9995),
    "cifar10-ipc50": (1.0, 0.999),
    "cifar100-ipc1": (1.0, 0.9995),
    "cifar100-ipc10": (1.0, 0.9995),
    "cifar100-ipc50": (1.0, 0.999),
    "tiny-ipc1": (1.0, 0.999),
    "tiny-ipc10": (1.0, 0.999),
}
#: DATM configs/<dataset>/ConvIN/IPC*.yaml: N, M, window (min, current max, T⁺, expansion end),
#: lr_img, lr_lr, batch_syn (0: all; a config's batch_syn ≥ the set's size is all of it), lr_y, pix_init.
DATM_ROWS = {
    "cifar10-ipc1": (80, 2, (0, 4, 4, 0), 100, 1e-7, 0, 5.0, "correct"),
    "cifar10-ipc10": (80, 2, (0, 10, 20, 1000), 100, 1e-5, 0, 2.0, "correct"),
    "cifar10-ipc50": (80, 2, (0, 20, 40, 2000), 1000, 1e-5, 0, 2.0, "correct"),
    "cifar100-ipc1": (40, 3, (0, 10, 20, 1000), 1000, 1e-5, 0, 10.0, "correct"),
    "cifar100-ipc10": (80, 2, (0, 30, 50, 2000), 1000, 1e-5, 0, 10.0, "correct"),
    "cifar100-ipc50": (80, 2, (20, 70, 70, 0), 1000, 1e-5, 1000, 10.0, "real"),
    "tiny-ipc1": (40, 2, (0, 15, 20, 2000), 10000, 1e-4, 0, 10.0, "correct"),
}
WINDOW = ("min_start_epoch", "current_max_start_epoch", "max_start_epoch", "expansion_end")


def test_the_ftd_datm_and_tesla_presets_are_their_published_rows():
    for row, (alpha, ema) in FTD_ROWS.items():
        preset = read_preset(f"ftd-{row}")
        v = preset.values
        assert preset.includes == ("ftd-code",) and v["plugins"] == ["ftd"], row
        assert (v["ftd.alpha"], v["distill.image_ema"], v["ftd.rho_max"], v["ftd.rho_min"]) == (
            alpha,
            ema,
            0.01,
            0.01,
        ), row
        assert v["ftd.adaptive"] is True and (v["experts.count"], v["experts.epochs"]) == (100, 50)
    for row, (n, m, window, lr_img, lr_lr, batch_syn, label_lr, init) in DATM_ROWS.items():
        preset = read_preset(f"datm-{row}")
        v = preset.values
        assert preset.includes == ("datm-code",) and v["plugins"] == ["ftd", "datm"], row
        assert (v["distill.syn_steps"], v["distill.expert_epochs"]) == (n, m), row
        assert tuple(v[f"datm.{k}"] for k in WINDOW) == window, row
        assert v["distill.max_start_epoch"] == window[2], row  # the trajectories hold the whole window
        assert (v["distill.lr_img"], v["distill.lr_lr"], v["distill.lr_init"]) == (lr_img, lr_lr, 0.01), row
        assert (v["distill.batch_syn"], v["datm.label_lr"], v["datm.init"]) == (batch_syn, label_lr, init), (
            row
        )
        assert (v["datm.label_momentum"], v["datm.soft_labels"], v["distill.image_ema"]) == (0.9, True, 0.0)
        assert (v["ftd.alpha"], v["ftd.rho_max"], v["experts.count"], v["experts.epochs"]) == (
            0.3,
            0.01,
            100,
            100,
        )
        assert (v["distill.iterations"], v["evaluate.epochs"], v["evaluate.batch_size"]) == (10000, 1000, 128)
        threshold = 1.1 if row == "cifar10-ipc1" else 1.0
        assert v["data.zca"] is True and v["distill.skip_loss_above"] == threshold, row
    assert read_preset("datm-tiny-ipc1").values["model.name"] == "convnet-d4"
    c10, c100 = (read_preset(f"tesla-{row}").values for row in ("cifar10-ipc1", "cifar100-ipc50"))
    assert (c10["data.zca"], c10["distill.max_start_epoch"], c10["distill.lr_lr"]) == (False, 5, 1e-7)
    assert (c100["data.zca"], c100["distill.batch_syn"], c100["distill.syn_steps"]) == (True, 125, 80)
    for v in (c10, c100):
        assert (v["plugins"], v["tesla.labels"], v["distill.iterations"], v["experts.epochs"]) == (
            ["tesla"],
            "hard",
            10000,
            50,
        )


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


NEW_PAPER = [name for name in PAPER if name.split("-")[0] in ("ftd", "datm", "tesla")]


@pytest.mark.parametrize("name", NEW_PAPER)
def test_an_ftd_datm_or_tesla_preset_resolves_with_its_own_row_winning(name):
    preset, resolved = read_preset(name), resolve_layers(name)
    config, sources = resolved.config, resolved.sources
    assert (
        sorted(config.plugins) == sorted(preset.values["plugins"]) and sources["plugins"] == f"preset {name}"
    )
    for key, value in preset.values.items():
        head, _, rest = key.partition(".")
        if head in config.plugin_options:
            assert config.plugin_options[head][rest] == value and sources[key] == f"preset {name}", key
    # ftd contributes distill.image_ema = 0.999 (layer 3); the row's decay (FTD) or DATM's 0 wins (layer 4)
    ema = preset.values.get("distill.image_ema", 0.0)
    assert config.distill.image_ema == ema
    if "ftd" in config.plugins:
        assert sources["distill.image_ema"] == f"preset {name}"
    if "tesla" in config.plugins:
        assert config.distill.memory == "constant"


def test_the_code_method_presets_compose_with_any_dataset_preset():
    datm = resolve_layers("fmnist-ref,datm-code", plugins=["ftd", "datm"])
    options, sources = datm.config.plugin_options, datm.sources
    assert (options["datm"]["init"], options["datm"]["soft_labels"]) == ("correct", True)
    assert (options["datm"]["label_lr"], options["datm"]["label_momentum"]) == (2.0, 0.9)
    assert (options["ftd"]["alpha"], options["ftd"]["rho_max"], options["ftd"]["adaptive"]) == (
        0.3,
        0.01,
        True,
    )
    assert datm.config.distill.image_ema == 0.0  # DATM.py keeps no EMA: beats ftd's default 0.999
    for key in ("datm.init", "datm.soft_labels", "datm.label_lr", "datm.label_momentum", "ftd.alpha"):
        assert sources[key] == "preset datm-code", key
    assert sources["distill.image_ema"] == sources["experts.lr"] == "preset datm-code"
    # the window is a budget choice: the plugin's default fits fmnist-ref's 6-epoch experts
    assert sources["datm.max_start_epoch"] == "plugin datm (its default)"
    assert (datm.config.data.dataset, datm.config.experts.epochs) == ("fashion-mnist", 6)
    assert resolve_layers("datm-code,fmnist-ref", plugins=["ftd", "datm"]).config == datm.config
    ftd = resolve_layers("fmnist-ref,ftd-code", plugins=["ftd"])
    assert ftd.config.distill.image_ema == 0.999 and ftd.sources["distill.image_ema"] == "preset ftd-code"
    assert {k: ftd.config.plugin_options["ftd"][k] for k in ("rho_max", "rho_min", "alpha", "adaptive")} == {
        "rho_max": 0.01,
        "rho_min": 0.01,
        "alpha": 0.4,
        "adaptive": True,
    }
    tesla = resolve_layers("fmnist-ref,tesla-code", plugins=["tesla"])
    assert tesla.config.plugin_options["tesla"]["labels"] == "expert"
    assert tesla.sources["tesla.labels"] == "preset tesla-code" and tesla.config.distill.memory == "constant"
    alone = resolve_layers("fmnist-ref,datm-code")  # the plugin tables wait for --plugins
    assert alone.config.plugins == () and alone.config.plugin_options == {}
    assert alone.config.distill.image_ema == 0.0 and alone.sources["distill.image_ema"] == "preset datm-code"


def test_config_resolves_every_ftd_datm_and_tesla_preset():
    for name in [*NEW_PAPER, "ftd-code", "datm-code", "tesla-code"]:
        result = invoke("config", "--preset", name, "--json")
        assert result.exit_code == 0, (name, result.output)
        assert json.loads(result.output)["sources"]["distill.student_momentum"] == f"preset {name}"
    result = invoke("config", "--preset", "fmnist-ref,datm-code", "--plugins", "ftd,datm", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sources"]["datm.label_lr"] == "preset datm-code"


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
    assert smoke.config.experts.max_steps_per_epoch == MAX_EXPERT_STEPS
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
    assert {records[n]["kind"] for n in ("ftd-code", "datm-code", "tesla-code")} == {"method"}
    datm = records["datm-cifar100-ipc50"]
    assert (datm["kind"], datm["dataset"], datm["ipc"], datm["includes"]) == (
        "paper",
        "cifar100",
        50,
        ["datm-code"],
    )
    assert "N 80 M 2 T⁺ 70" in datm["sets"] and "plugins ftd,datm" in datm["sets"]


@pytest.mark.parametrize(
    "name",
    [
        "ast-cifar100-ipc10",
        "mtt-imagenette-ipc1",
        "ast-code",
        "digits",
        "ftd-cifar10-ipc1",
        "datm-cifar100-ipc50",
        "tesla-cifar100-ipc50",
        "datm-code",
    ],
)
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
        "ftd",
        "datm",
        "tesla",
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
