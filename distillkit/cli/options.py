"""The options the commands share, and turning them into a resolved config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from distillkit.config import RunConfig
    from distillkit.host import PluginHost
    from distillkit.resolve import Resolved


# -- shared options ---------------------------------------------------------------------

Dataset = Annotated[
    str | None,
    typer.Option(
        help="digits, mnist, fashion-mnist, cifar10, cifar100, svhn, tiny-imagenet, imagenette, "
        "imagewoof, imagefruit, imagemeow, imagesquawk, imageyellow, imagenet-subset:PATH or "
        "imagefolder:PATH."
    ),
]
DataPath = Annotated[Path | None, typer.Option("--data-path", help="Folder holding the dataset files.")]
Download = Annotated[
    bool,
    typer.Option("--download", help="Allow torchvision to download CIFAR/SVHN into --data-path.", metavar=""),
]
Model = Annotated[str | None, typer.Option(help="Network, e.g. convnet, convnet-w32, convnet-d4, resnet18.")]
Ipc = Annotated[int | None, typer.Option(help="Synthetic images per class.")]
Plugins = Annotated[
    str | None,
    typer.Option(
        "--plugins",
        "-p",
        help="Comma-separated plugins, e.g. smooth,kmeans-init,bil,itm,wp; none named: plain MTT.",
    ),
]
Preset = Annotated[
    list[str] | None,
    typer.Option(
        help="Named settings, comma-separated or repeated; later ones win. Dataset presets (digits, "
        "fmnist-cpu, fmnist-ref) set data/model/budget, method presets (ast-code) method choices, paper "
        "presets (ast-cifar10-ipc1, mtt-tiny-ipc10, ...) both. `distillkit presets` lists them. "
        "Default: the dataset's own preset. `distillkit config` shows what each layer set.",
    ),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML file with config keys (docs/config.md).")
]
Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override one config key; repeatable. e.g. distill.iterations=500, wp.alpha=0.05.",
    ),
]
Seed = Annotated[int | None, typer.Option(help="One seed drives the whole run.")]
Device = Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")]
OutDir = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Run directory (default runs/<time>-<dataset>-ipc<k>)."),
]
ExpertsStore = Annotated[
    Path | None,
    typer.Option("--experts", help="Use this existing trajectory store instead of training experts."),
]
EvalModels = Annotated[
    str | None,
    typer.Option("--eval-models", help="Comma-separated models for cross-architecture evaluation."),
]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Reuse an --out folder that already holds a run.", metavar="")
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress output (bars or log lines).", metavar="")
]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.", metavar="")]
Memory = Annotated[
    str | None,
    typer.Option(help="standard (keep the unrolled graph) or constant (exact recomputation, flat memory)."),
]
Resume = Annotated[
    Path | None,
    typer.Option("--resume", help="Continue this run directory from its newest checkpoint (its own config)."),
]
Smoke = Annotated[
    bool,
    typer.Option(
        "--smoke",
        help="Same dataset, model and plugins, budget shrunk to seconds (1 expert, 2 iterations, "
        "ipc ≤ 2, 1 network × 2 epochs): check a setting end to end before a long run.",
        metavar="",
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.", metavar="")]


def collect_overrides(
    sets: list[str] | None,
    *,
    dataset: str | None = None,
    data_path: Path | None = None,
    download: bool = False,
    model: str | None = None,
    ipc: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    eval_models: str | None = None,
    memory: str | None = None,
) -> dict[str, Any]:
    from distillkit.config import ConfigError, split_set_option

    values: dict[str, Any] = {}
    for item in sets or []:
        key, value = split_set_option(item)
        if key in values:
            raise ConfigError(f"--set {key} is given twice")
        values[key] = value
    if dataset is not None and dataset.strip().lower() == "imagefolder":
        if data_path is None:
            raise ConfigError("--dataset imagefolder needs the folder", hint="--dataset imagefolder:PATH")
        dataset, data_path = f"imagefolder:{data_path}", None  # --dataset imagefolder --data-path X
    shortcuts = {
        "data.dataset": dataset,
        "data.data_path": str(data_path) if data_path else None,
        "data.download": True if download else None,
        "model.name": model,
        "distill.ipc": ipc,
        "seed": seed,
        "device": device,
        "evaluate.models": eval_models,
        "distill.memory": memory,
    }
    values.update({k: v for k, v in shortcuts.items() if v is not None})
    return values


def resolve(
    preset: list[str] | None,
    config_file: Path | None,
    overrides: dict[str, Any],
    plugins: str | None,
    default_dataset: str = "digits",
    smoke: bool = False,
) -> Resolved:
    from distillkit.resolve import resolve_layers

    names = None if plugins is None else [p for p in plugins.split(",") if p.strip()]
    return resolve_layers(preset, config_file, overrides, names, default_dataset=default_dataset, smoke=smoke)


def astuple(resolved: Resolved) -> tuple[RunConfig, PluginHost, dict[str, str]]:
    return resolved.config, resolved.host, resolved.sources


StoreOut = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Trajectory store folder (default: the cache, keyed by the settings)."),
]
SelectedPlugins = Annotated[
    str | None,
    typer.Option("--plugins", "-p", help="Comma-separated plugins to show as enabled (checks they load)."),
]
EvalSets = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override an evaluate.* key; repeatable. e.g. evaluate.runs=10, evaluate.epochs=1000.",
    ),
]
PlotFile = Annotated[
    Path | None,
    typer.Option("--plot", help="Also write a PNG figure here (needs matplotlib: distillkit\\[plots])."),
]
