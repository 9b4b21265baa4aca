"""``config`` and ``list-plugins``: what a run would use, and what is installed."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rich.table import Table

from distillkit.cli.options import (
    ConfigFile,
    DataPath,
    Dataset,
    Debug,
    Device,
    Ipc,
    JsonOut,
    Memory,
    Model,
    Plugins,
    Preset,
    Seed,
    SelectedPlugins,
    Sets,
    Smoke,
    collect_overrides,
    resolve,
)

if TYPE_CHECKING:
    pass

from distillkit.cli.app import app, cli_errors, out


@app.command("config")
def config_cmd(
    dataset: Dataset = None,
    data_path: DataPath = None,
    model: Model = None,
    ipc: Ipc = None,
    plugins: Plugins = None,
    preset: Preset = None,
    config: ConfigFile = None,
    sets: Sets = None,
    seed: Seed = None,
    device: Device = None,
    memory: Memory = None,
    smoke: Smoke = False,
    json_out: JsonOut = False,
    debug: Debug = False,
) -> None:
    """Print the resolved config and the layer that set each key; runs nothing, writes nothing."""
    with cli_errors(debug):
        from distillkit.config import to_dict
        from distillkit.resolve import flat_values

        overrides = collect_overrides(
            sets,
            dataset=dataset,
            data_path=data_path,
            model=model,
            ipc=ipc,
            seed=seed,
            device=device,
            memory=memory,
        )
        resolved = resolve(preset, config, overrides, plugins, smoke=smoke)
        values = flat_values(resolved.config)
        if json_out:
            payload = {"config": to_dict(resolved.config), "sources": resolved.sources}
            out.print_json(json.dumps(payload))
            return
        table = Table(
            title="resolved config (lowest layer first: default, dataset preset, plugin, "
            "method preset, config file, smoke, command line)"
        )
        for column in ("key", "value", "set by"):
            table.add_column(column)
        for key, value in values.items():
            source = resolved.sources.get(key, "default")
            style = "dim" if source == "default" else None
            table.add_row(key, json.dumps(value, ensure_ascii=False), source, style=style)
        out.print(table)


@app.command("list-plugins")
def list_plugins_cmd(
    plugins: SelectedPlugins = None,
    json_out: JsonOut = False,
    debug: Debug = False,
) -> None:
    """List installed plugins: package, version, source, hooks, status (broken ones as error rows)."""
    with cli_errors(debug):
        from distillkit.host import PluginHost

        selected = [p.strip() for p in (plugins or "").split(",") if p.strip()]
        records = PluginHost().list_records(selected)
        if json_out:
            out.print_json(json.dumps([r.as_dict() for r in records]))
            return
        table = Table(title="distillkit plugins")
        for column in ("name", "package", "version", "source", "hooks", "status"):
            table.add_column(column)
        for r in records:
            status = f"error: {r.error}" if r.status == "error" else r.status
            table.add_row(r.name, r.package, r.version, r.source, ", ".join(r.hooks), status)
        out.print(table)
        if not records:
            out.print("no plugins installed: runs are plain MTT")
