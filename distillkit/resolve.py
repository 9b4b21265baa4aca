"""Resolve a run's configuration and its plugin host (torch-free, so the CLI stays fast).

One rule decides every value, lowest layer first (a higher layer wins):

1. ``default``        the dataclass defaults of :mod:`distillkit.config`
2. dataset presets    ``--preset`` names of kind ``dataset`` (data, model, budget) and the
                      dataset part of ``paper`` presets, in the order given; when none is
                      named, the dataset's own default preset, chosen by its image size
                      (:func:`distillkit.presets.default_for`)
3. plugin defaults    what the selected plugins need (``config_defaults``, e.g. ``smooth``'s
                      momentum-expert recipe), so a technique brings its recipe whatever
                      dataset preset is in force
4. method presets     ``--preset`` names of kind ``method`` (e.g. ``ast-code``) and the
                      method part of ``paper`` presets, in order
5. ``--config FILE``
6. ``smoke``          only with ``--smoke``: the budget shrunk to seconds, computed from
                      the config of every other layer (:mod:`distillkit.smoke`)
7. the command line   ``--set KEY=VALUE`` and shortcuts such as ``--ipc``

Dataset and method presets may not set each other's keys, so the order in which
they are named does not matter across kinds (``fmnist-cpu,ast-code`` equals
``ast-code,fmnist-cpu``). A paper preset sets both kinds of key: each key goes to
the layer :func:`distillkit.config.is_dataset_key` assigns it (dataset keys to layer
2, the rest, ``plugins`` and plugin options included, to layer 4), so a paper preset
is exactly a dataset preset plus a method preset of the same name; its ``plugins``
list selects the plugins unless ``--plugins`` (or a config file) names others.
:func:`resolve_layers` also returns, for every key, the layer that set it; a run
records that beside its config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distillkit.config import (
    SECTIONS,
    RunConfig,
    apply_overrides,
    from_dict,
    read_toml,
    to_dict,
)
from distillkit.errors import ConfigError
from distillkit.host import PluginHost
from distillkit.presets import Preset, default_for, parse_preset_list, read_preset
from distillkit.smoke import SMOKE_LABEL, smoke_values
from distillkit.validation import validate


@dataclass(frozen=True)
class Resolved:
    """A resolved run: its config, the loaded plugin host, and the layer that set each key."""

    config: RunConfig
    host: PluginHost
    sources: dict[str, str]


def resolve_config(*args: Any, **kwargs: Any) -> tuple[RunConfig, PluginHost]:
    """:func:`resolve_layers` (same arguments) without the per-key sources: ``(config, host)``."""
    resolved = resolve_layers(*args, **kwargs)
    return resolved.config, resolved.host


def resolve_layers(
    preset: str | Sequence[str] | None = None,
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    plugins: Sequence[str] | None = None,
    host: PluginHost | None = None,
    extra_plugins: Sequence[Any] = (),
    default_dataset: str = "digits",
    smoke: bool = False,
) -> Resolved:
    """Build config, host and per-key sources with the documented precedence.

    ``preset`` is one name, a comma-separated list or a sequence of names.
    ``plugins`` (e.g. from ``--plugins``) wins over a ``plugins`` list in the
    files. ``extra_plugins`` are ready-made plugin objects (library use; no
    entry point needed). ``default_dataset`` is the dataset when no layer names one.
    ``smoke`` adds the smoke layer just below the command line.
    """
    presets = [read_preset(name) for name in parse_preset_list(preset)]
    dataset_layers = [(p.label, p.dataset_values) for p in presets if p.kind != "method"]
    method_layers = [(p.label, p.method_values) for p in presets if p.kind != "dataset"]
    file_values = read_toml(config_file) if config_file else {}
    cli_values = dict(overrides or {})
    upper: list[tuple[str, dict[str, Any]]] = [
        *method_layers,
        *([(f"config {config_file}", file_values)] if config_file else []),
        ("command line", cli_values),
    ]
    if not dataset_layers:
        default = _default_preset(upper, default_dataset)
        dataset_layers = [(default.label, default.values)]
    names, plugins_source = _plugin_names(plugins, upper)
    given = tuple(getattr(obj, "name", None) or type(obj).__name__ for obj in extra_plugins)
    host = host or PluginHost()
    if smoke:  # plugin options that budget epochs shrink with it, below the command line
        upper.insert(len(upper) - 1, (SMOKE_LABEL, _plugin_smoke_options(host, names)))
    host.select(names, _plugin_options(names + given, upper), extra_plugins)

    config = RunConfig()
    sources = dict.fromkeys(flat_values(config), "default")
    *below, command_line = [
        *dataset_layers,
        *(
            (f"plugin {host.config_default_owner(key)}", {key: v})
            for key, v in host.config_defaults().items()
        ),
        *upper,
    ]
    selected = names + given
    for label, values in below:
        config = _apply_layer(config, sources, label, values, selected)
    if smoke:  # computed as if the command line were applied, so `--smoke --set distill.expert_epochs=3` fits
        shrunk = smoke_values(apply_overrides(config, _core(command_line[1])))
        config = _apply_layer(config, sources, SMOKE_LABEL, shrunk, selected)
    config = _apply_layer(config, sources, *command_line, selected)
    config = replace(
        config,
        plugins=names + tuple(n for n in host.selected if n not in names),
        plugin_options={n: to_dict(host.configs.get(n)) or {} for n in host.selected},
    )
    validate(config)
    sources["plugins"] = plugins_source
    sources.update(_plugin_option_sources(config, upper))
    return Resolved(config, host, dict(sorted(sources.items())))


def _apply_layer(
    config: RunConfig, sources: dict[str, str], label: str, values: dict[str, Any], selected: tuple[str, ...]
) -> RunConfig:
    """``config`` with one layer's core keys applied, recorded in ``sources`` under ``label``."""
    core = _core(values)
    sources.update(dict.fromkeys(core, label))
    if not label.startswith("preset "):  # a method preset carries tables for every plugin
        _reject_unselected(values, selected)
    return apply_overrides(config, core)


def _core(values: dict[str, Any]) -> dict[str, Any]:
    """The core keys of a layer (plugin options and the plugin list are handled apart)."""
    return {k: v for k, v in values.items() if k != "plugins" and _is_core(k)}


def _default_preset(upper: list[tuple[str, dict[str, Any]]], default_dataset: str) -> Preset:
    """The dataset's own preset: the dataset named by the highest layer (or the default)."""
    dataset = default_dataset
    for _label, values in upper:
        if "data.dataset" in values:
            dataset = str(values["data.dataset"])
    return default_for(dataset)


def _plugin_names(
    plugins: Sequence[str] | None, upper: list[tuple[str, dict[str, Any]]]
) -> tuple[tuple[str, ...], str]:
    """The selected plugin names and the layer that named them (``--plugins`` wins)."""
    names: tuple[str, ...] = ()
    source = "default"
    for label, values in upper:
        if "plugins" in values:
            raw = values["plugins"]
            names = tuple(raw.split(",") if isinstance(raw, str) else raw)
            source = label
    if plugins is not None:
        names, source = tuple(plugins), "command line"
    return tuple(n.strip() for n in names if n.strip()), source


def _plugin_smoke_options(host: PluginHost, names: tuple[str, ...]) -> dict[str, Any]:
    """``<plugin>.<key>`` values the selected plugins declare for ``--smoke`` (``smoke_options``).

    A plugin whose options count expert epochs (a start-epoch window) declares values that
    fit the smoke run's one-segment trajectories, as ``config_defaults`` declares core keys.
    """
    return {
        f"{name}.{key}": value
        for name in names
        for key, value in getattr(host.plugin_class(name), "smoke_options", {}).items()
    }


def _plugin_options(
    names: tuple[str, ...], upper: list[tuple[str, dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """``<plugin>.<key>`` values of the selected plugins, later layers winning."""
    options: dict[str, dict[str, Any]] = {}
    for _label, values in upper:
        for key, value in values.items():
            head, _, rest = key.partition(".")
            if rest and head in names:
                options.setdefault(head, {})[rest] = value
    return options


def flat_values(config: RunConfig) -> dict[str, Any]:
    """Every key of ``config`` dotted, plugin options as ``<plugin>.<key>``, for listings."""
    data = to_dict(config)
    options = data.pop("plugin_options")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            values.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            values[key] = value
    for name, opts in options.items():
        values.update({f"{name}.{sub}": v for sub, v in opts.items()})
    return values


def _plugin_option_sources(config: RunConfig, upper: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    sources = {
        f"{name}.{key}": f"plugin {name} (its default)"
        for name, options in config.plugin_options.items()
        for key in options
    }
    for label, values in upper:
        for key in values:
            if key in sources:
                sources[key] = label
    return sources


def _is_core(key: str) -> bool:
    head, _, rest = key.partition(".")
    return head in SECTIONS if rest else True


def _reject_unselected(values: dict[str, Any], names: tuple[str, ...]) -> None:
    """Options for a plugin that is not selected are a mistake (method presets may carry them)."""
    for key in values:
        head, _, rest = key.partition(".")
        if rest and head not in SECTIONS and head not in names:
            raise ConfigError(
                f"unknown config key '{key}': '{head}' is neither a config section nor a selected plugin",
                hint=f"select it with --plugins {head}" if head else None,
            )


def recorded_run(run_dir: Path, device: str | None = None) -> tuple[RunConfig, PluginHost, dict[str, Any]]:
    """The config, plugin host and invocation recorded in a run directory (for ``--resume``).

    ``device`` may differ from the recorded one (resume a CPU run on a GPU); nothing else may.
    """
    from distillkit.artifacts import read_json

    recorded, invocation = (
        read_json(
            run_dir / name,
            ConfigError,
            f"{run_dir} is not a resumable run directory: {name} is missing",
            hint="--resume takes the --out directory of a run started by distillkit 0.1 or later",
        )
        for name in ("config.json", "invocation.json")
    )
    if not isinstance(invocation, dict) or not invocation.get("command"):
        raise ConfigError(
            f"{run_dir} is not a resumable run directory: invocation.json names no starting command",
            hint="--resume takes the --out directory of `distillkit run` or `distillkit distill`",
        )
    config = from_dict(recorded)
    if device is not None:
        config = replace(config, device=device)
    host = PluginHost()
    host.select(config.plugins, config.plugin_options)
    validate(config)
    return config, host, invocation


#: The one key ``--resume`` may change: raising it extends a run from its final checkpoint.
EXTENDABLE = "distill.iterations"


def extended_config(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """``config`` with ``overrides`` applied, where only ``distill.iterations`` may change, and only upwards.

    Keys given with their recorded value are accepted; any other change is refused naming the key.
    """
    updated = apply_overrides(config, overrides, set(config.plugins))
    before, after = flat_values(config), flat_values(updated)
    for key in sorted(set(before) | set(after)):
        if key != EXTENDABLE and before.get(key) != after.get(key):
            raise ConfigError(
                f"--resume continues the recorded run: {key} would change from "
                f"{before.get(key)!r} to {after.get(key)!r}",
                hint=f"only {EXTENDABLE} may be raised (to extend the run); start a new run for other values",
            )
    if updated.distill.iterations < config.distill.iterations:
        raise ConfigError(
            f"{EXTENDABLE}={updated.distill.iterations} is below the run's {config.distill.iterations}: "
            "a run can be extended, not shortened",
            hint="evaluate or export an earlier set with --snapshot ITERATION",
        )
    return updated


__all__ = ["Resolved", "extended_config", "flat_values", "recorded_run", "resolve_config", "resolve_layers"]
