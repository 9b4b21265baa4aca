"""Resolve a run's configuration and its plugin host (torch-free, so the CLI stays fast)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from distillkit.config import (
    SECTIONS,
    RunConfig,
    apply_overrides,
    from_dict,
    read_preset,
    read_toml,
    to_dict,
    validate,
)
from distillkit.errors import ConfigError
from distillkit.host import PluginHost


def resolve_config(
    preset: str | None = None,
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    plugins: Sequence[str] | None = None,
    host: PluginHost | None = None,
    extra_plugins: Sequence[Any] = (),
) -> tuple[RunConfig, PluginHost]:
    """Build the run's config and plugin host with the documented precedence.

    defaults → plugin ``config_defaults`` → preset → config file → ``overrides``.
    ``plugins`` (e.g. from ``--plugins``) wins over a ``plugins`` list in the files.
    ``extra_plugins`` are ready-made plugin objects (library use; no entry point needed).
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if preset:
        layers.append(("preset", read_preset(preset)))
    file_values = read_toml(config_file) if config_file else {}
    overrides = dict(overrides or {})
    names: tuple[str, ...] = ()
    for values in (layers[0][1] if layers else {}, file_values, overrides):
        if "plugins" in values:
            raw = values["plugins"]
            names = tuple(raw.split(",") if isinstance(raw, str) else raw)
    if plugins is not None:
        names = tuple(plugins)
    names = tuple(n.strip() for n in names if n.strip())
    host = host or PluginHost()
    config = RunConfig()
    for source, values in [("plugins", {}), *layers, ("config", file_values), ("set", overrides)]:
        if source == "plugins":
            sources = [v for _, v in layers] + [file_values, overrides]
            values = _select(host, names, sources, extra_plugins)
        core = {k: v for k, v in values.items() if k != "plugins" and _is_core(k)}
        config = apply_overrides(config, core)
        if source != "preset":
            _reject_unselected(values, names)
    config = replace(
        config,
        plugins=names + tuple(n for n in host.selected if n not in names),
        plugin_options={n: to_dict(host.configs.get(n)) or {} for n in host.selected},
    )
    validate(config)
    return config, host


def _is_core(key: str) -> bool:
    head, _, rest = key.partition(".")
    return head in SECTIONS if rest else True


def _reject_unselected(values: dict[str, Any], names: tuple[str, ...]) -> None:
    """Options for a plugin that is not selected are a mistake (presets may carry them)."""
    for key in values:
        head, _, rest = key.partition(".")
        if rest and head not in SECTIONS and head not in names:
            raise ConfigError(
                f"unknown config key '{key}': '{head}' is neither a config section nor a selected plugin",
                hint=f"select it with --plugins {head}" if head else None,
            )


def _select(
    host: PluginHost, names: tuple[str, ...], sources: list[dict[str, Any]], extra: Sequence[Any]
) -> dict:
    """Load the selected plugins with their options (later sources win); return their defaults."""
    options: dict[str, dict[str, Any]] = {}
    for values in sources:
        for key, value in values.items():
            head, _, rest = key.partition(".")
            if rest and head in names:
                options.setdefault(head, {})[rest] = value
    host.select(names, options, extra)
    return host.config_defaults()


def recorded_run(run_dir: Path, device: str | None = None) -> tuple[RunConfig, PluginHost, dict[str, Any]]:
    """The config, plugin host and invocation recorded in a run directory (for ``--resume``).

    ``device`` may differ from the recorded one (resume a CPU run on a GPU); nothing else may.
    """
    import json

    try:
        recorded = json.loads((run_dir / "config.json").read_text())
        invocation = json.loads((run_dir / "invocation.json").read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{run_dir} is not a resumable run directory: {Path(exc.filename).name} is missing",
            hint="--resume takes the --out directory of a run started by distillkit 0.1 or later",
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the recorded run in {run_dir}: {exc}") from None
    config = from_dict(recorded)
    if device is not None:
        config = replace(config, device=device)
    host = PluginHost()
    host.select(config.plugins, config.plugin_options)
    validate(config)
    return config, host, invocation
