"""``import-experts``: MTT, FTD and DATM replay buffers into a trajectory store.

``import-mtt-buffer`` (its name before FTD and DATM were read too) stays as a deprecated alias,
so scripts written for it keep working; it prints a one-line note and does the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from distillkit.cli.app import app, cli_errors, err, out
from distillkit.cli.options import (
    ConfigFile,
    DataPath,
    Dataset,
    Debug,
    Download,
    Model,
    Plugins,
    Preset,
    Seed,
    Sets,
    collect_overrides,
    resolve,
)

DEPRECATED = "import-mtt-buffer"


def import_experts_cmd(
    ctx: typer.Context,
    files: Annotated[
        list[Path],
        typer.Argument(help="replay_buffer_*.pt files of MTT, FTD or DATM; experts numbered in this order."),
    ],
    store_dir: Annotated[Path, typer.Option("--out", "-o", help="Trajectory store folder (new or resumed).")],
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="mtt, ftd or datm: who trained the experts (one file layout; FTD and DATM train with "
            "GSAM, which the store key records).",
        ),
    ] = "mtt",
    dataset: Dataset = None,
    data_path: DataPath = None,
    download: Download = False,
    model: Model = None,
    plugins: Plugins = None,
    preset: Preset = None,
    config: ConfigFile = None,
    sets: Sets = None,
    seed: Seed = None,
    debug: Debug = False,
) -> None:
    """Convert MTT, FTD or DATM replay buffers into a store for `distill --experts` (same options)."""
    if ctx.info_name == DEPRECATED:
        err.print(f"note: {DEPRECATED} is deprecated; use `distillkit import-experts` (the same options).")
    with cli_errors(debug):
        from distillkit import api
        from distillkit.experts.replay import SOURCES, check_source, import_replay_buffers
        from distillkit.experts.store import MANIFEST, TrajectoryStore

        check_source(source)
        _check_files(files)  # before the dataset is loaded, and before anything is written
        overrides = collect_overrides(
            sets, dataset=dataset, data_path=data_path, download=download, model=model, seed=seed
        )
        resolved = resolve(preset, config, overrides, plugins)
        cfg, host = resolved.config, resolved.host
        data = api.prepare_data(cfg.data)  # the key (as `distillkit experts` builds it) reads it
        key = api.expert_key(cfg, data, host)
        before = len(TrajectoryStore.open(store_dir).finished()) if (store_dir / MANIFEST).exists() else 0
        imported = import_replay_buffers(files, store_dir, key, source)
        store = imported.store
        count = len(store.finished()) - before
        kept = f", {before} already there" if before else ""
        held = " + ".join(map(str, imported.per_file))
        trajectories = f"{held} trajector{'y' if sum(imported.per_file) == 1 else 'ies'}"
        out.print(
            f"imported {count} expert{'s' if count != 1 else ''} ({store.key['epochs']} epochs each{kept}) "
            f"from {len(files)} file{'s' if len(files) != 1 else ''} ({trajectories}) → {store.root}",
            highlight=False,
            soft_wrap=True,
        )
        if "trainer" in store.key:
            out.print(
                f"{SOURCES[source]}; the store key records trainer {store.key['trainer']!r}",
                highlight=False,
                soft_wrap=True,
            )


def _check_files(files: list[Path]) -> None:
    """Every file exists, once: refused before any file is read."""
    from distillkit.errors import ConfigError

    seen: set[Path] = set()
    for path in files:
        if not path.is_file():
            raise ConfigError(
                f"{path} is missing" if not path.exists() else f"{path} is not a file",
                hint="pass the replay_buffer_*.pt files of MTT, FTD or DATM",
            )
        if path.resolve() in seen:
            raise ConfigError(f"{path} is given twice", hint="each buffer file once")
        seen.add(path.resolve())


app.command("import-experts")(import_experts_cmd)
# Not click's ``deprecated=True``: its own warning line would name no replacement.
app.command(DEPRECATED, help="(deprecated) The old name of import-experts, with the same options.")(
    import_experts_cmd
)
