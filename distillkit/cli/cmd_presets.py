"""``presets`` and ``presets show NAME``: the shipped settings, what they set and where they come from."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from distillkit.cli.app import app, cli_errors, out
from distillkit.cli.options import Debug, JsonOut

if TYPE_CHECKING:
    from distillkit.presets import Preset

presets_app = typer.Typer(
    help="List the shipped presets (paper settings, CPU benchmarks, method choices); `show NAME` prints one.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(presets_app, name="presets")


@presets_app.callback()
def presets_cmd(ctx: typer.Context, json_out: JsonOut = False, debug: Debug = False) -> None:
    """List every shipped preset: name, kind, dataset, ipc, source and what it sets."""
    if ctx.invoked_subcommand is not None:
        return
    with cli_errors(debug):
        from distillkit.presets import preset_names, read_preset

        presets = [read_preset(name) for name in preset_names()]
        if json_out:
            out.print_json(json.dumps([_record(p) for p in presets], ensure_ascii=False))
            return
        table = Table(title="distillkit presets (`distillkit presets show NAME` prints one)")
        for column in ("name", "kind", "dataset", "ipc", "source", "sets"):
            table.add_column(column, overflow="fold")
        for p in presets:
            record = _record(p)
            table.add_row(
                p.name, p.kind, record["dataset"] or "-", str(record["ipc"] or "-"), p.source, record["sets"]
            )
        out.print(table)


@presets_app.command("show")
def show_cmd(
    name: Annotated[str, typer.Argument(help="A preset name, e.g. ast-cifar10-ipc1.")],
    debug: Debug = False,
) -> None:
    """Print one preset as TOML: its metadata as fields, every key it sets (included presets merged)."""
    with cli_errors(debug):
        from distillkit.presets import read_preset

        out.print(preset_toml(read_preset(name)), markup=False, highlight=False, soft_wrap=True, end="")


def _record(preset: Preset) -> dict[str, Any]:
    values = preset.values
    return {
        "name": preset.name,
        "kind": preset.kind,
        "dataset": values.get("data.dataset"),
        "ipc": values.get("distill.ipc"),
        "source": preset.source,
        "purpose": preset.purpose,
        "deviations": list(preset.deviations),
        "includes": list(preset.includes),
        "sets": summary(preset),
        "values": values,
    }


def summary(preset: Preset) -> str:
    """What a preset sets, in a few words: model, experts, N/M/T⁺, iterations, plugins (or its tables)."""
    v = preset.values
    parts = []
    if "model.name" in v:
        parts.append(str(v["model.name"]))
    if "experts.count" in v and "experts.epochs" in v:
        parts.append(f"{v['experts.count']}×{v['experts.epochs']} experts")
    if "distill.syn_steps" in v:
        steps = {"N": "syn_steps", "M": "expert_epochs", "T⁺": "max_start_epoch"}
        parts.append(" ".join(f"{s} {v.get(f'distill.{k}', '?')}" for s, k in steps.items()))
    if "distill.iterations" in v:
        parts.append(f"{v['distill.iterations']} it")
    if "plugins" in v:
        parts.append("plugins " + (",".join(v["plugins"]) or "none"))
    return " · ".join(parts) or ", ".join(dict.fromkeys(k.partition(".")[0] for k in v))


def preset_toml(preset: Preset) -> str:
    """``preset`` as a TOML document that parses back to the same preset (includes shown merged)."""
    lines = [f"# preset {preset.name}"]
    if preset.includes:
        lines.append(f"# includes {', '.join(preset.includes)}: their keys are shown merged below")
    lines.append(f"kind = {_toml(preset.kind)}")
    for key in ("source", "purpose"):
        if getattr(preset, key):
            lines.append(f"{key} = {_toml(getattr(preset, key))}")
    if preset.deviations:
        lines += ["deviations = [", *(f"    {_toml(d)}," for d in preset.deviations), "]"]
    tables: dict[str, dict[str, Any]] = {}
    for key, value in preset.values.items():
        head, _, rest = key.partition(".")
        if rest:
            tables.setdefault(head, {})[rest] = value
        else:
            lines.append(f"{key} = {_toml(value)}")
    for head, keys in tables.items():
        lines += ["", f"[{head}]", *(f"{k} = {_toml(v)}" for k, v in keys.items())]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    """A TOML value: JSON's string escapes and number forms are TOML's too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)
