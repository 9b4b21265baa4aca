"""PluginHost: find plugins through entry points, load only the selected ones, validate, list.

One host per run (no global plugin manager). Discovery reads entry-point
metadata without importing anything; only the names passed to ``select`` are
imported. Core defaults are registered directly (``trylast``) and cannot be
blocked.
"""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from distillkit import hookspecs
from distillkit.config import coerce
from distillkit.errors import (
    ConfigError,
    DistillkitError,
    PluginConflictError,
    PluginError,
    PluginRuntimeError,
    UnknownPluginError,
)

GROUP = "distillkit"
CORE_NAME = "distillkit.core"


@dataclass(frozen=True)
class PluginRecord:
    """One row of ``distillkit list-plugins``."""

    name: str
    package: str
    version: str
    source: str
    hooks: tuple[str, ...]
    status: str
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "source": self.source,
            "hooks": list(self.hooks),
            "status": self.status,
            "error": self.error,
        }


def distribution_of(ep: EntryPoint) -> tuple[str, str]:
    """The (name, version) of the package providing ``ep``; "-" when unknown."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "-", "-"
    return dist.metadata["Name"] or "-", dist.version or "-"


def discover(eps: Iterable[EntryPoint] | None = None) -> dict[str, EntryPoint]:
    """Map plugin name → entry point; the same name from two packages is a conflict."""
    found: dict[str, EntryPoint] = {}
    for ep in eps if eps is not None else entry_points(group=GROUP):
        if ep.name in found:
            previous = found[ep.name]
            if previous.value == ep.value:
                continue
            first, second = distribution_of(previous)[0], distribution_of(ep)[0]
            raise PluginConflictError(
                f"plugin '{ep.name}' is provided by two packages: {first} and {second}",
                hint=f"uninstall one of them (pip uninstall {second})",
            )
        found[ep.name] = ep
    return dict(sorted(found.items()))


def plugin_config_class(plugin: Any) -> type | None:
    cls = getattr(plugin, "Config", None)
    return cls if is_dataclass(cls) else None


def build_plugin_config(name: str, plugin_cls: Any, options: dict[str, Any]) -> Any:
    """Instantiate a plugin's ``Config`` from raw option values (strings from ``--set`` or TOML values)."""
    cfg_cls = plugin_config_class(plugin_cls)
    if cfg_cls is None:
        if options:
            raise ConfigError(f"plugin '{name}' takes no options, got {sorted(options)}")
        return None
    import typing

    hints = typing.get_type_hints(cfg_cls)
    known = [f.name for f in fields(cfg_cls)]
    values = {}
    for key, raw in options.items():
        if key not in hints:
            close = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(
                f"unknown option '{name}.{key}'",
                hint=f"did you mean '{name}.{close[0]}'?"
                if close
                else f"options of {name}: {', '.join(known) or 'none'}",
            )
        values[key] = coerce(raw, hints[key], f"{name}.{key}")
    try:
        return cfg_cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid options for plugin '{name}': {exc}") from None


class PluginHost:
    """Owns a pluggy ``PluginManager`` with the core defaults and the selected plugins."""

    def __init__(self, eps: Iterable[EntryPoint] | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        from distillkit.engine import defaults

        self.pm.register(defaults, name=CORE_NAME)
        self._eps = list(eps) if eps is not None else None
        self._available: dict[str, EntryPoint] | None = None
        self.selected: dict[str, Any] = {}
        self.configs: dict[str, Any] = {}
        self.records: dict[str, PluginRecord] = {}

    @property
    def available(self) -> dict[str, EntryPoint]:
        if self._available is None:
            self._available = discover(self._eps)
        return self._available

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def plugin_class(self, name: str) -> Any:
        """Import and return the class (or module) behind entry point ``name``."""
        ep = self._entry_point(name)
        package, version = distribution_of(ep)
        try:
            return ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin '{name}' ({package} {version}) failed to import: {type(exc).__name__}: {exc}",
                hint=f"reinstall or upgrade {package}, or run without '{name}'",
            ) from exc

    def _entry_point(self, name: str) -> EntryPoint:
        if name not in self.available:
            close = difflib.get_close_matches(name, list(self.available), n=1)
            raise UnknownPluginError(
                f"unknown plugin '{name}'",
                hint=f"did you mean '{close[0]}'?"
                if close
                else "see `distillkit list-plugins` for the installed plugins",
            )
        return self.available[name]

    def select(
        self,
        names: Sequence[str],
        options: dict[str, dict[str, Any]] | None = None,
        extra: Sequence[Any] = (),
    ) -> None:
        """Load the named plugins (in the given order) plus ready-made plugin objects ``extra``.

        Every discovered plugin not named is blocked before anything is imported.
        """
        options = options or {}
        given = {getattr(obj, "name", None) or type(obj).__name__ for obj in extra}
        for name in self.available:
            if name not in names and name not in given:  # a ready-made instance is selected too
                self.pm.set_blocked(name)
        for name in names:
            self._entry_point(name)
        if len(set(names)) != len(names):
            raise ConfigError(f"a plugin is named twice in --plugins: {', '.join(names)}")
        # Registered in name order, so hook call order (and float sums over plugins) never
        # depends on how the user ordered --plugins.
        for name in sorted(names):
            cls = self.plugin_class(name)
            declared = getattr(cls, "name", name)
            if declared != name:
                package, version = distribution_of(self.available[name])
                raise PluginError(
                    f"plugin '{name}' ({package} {version}) calls itself '{declared}'",
                    hint="the plugin's `name` must equal its entry-point name",
                )
            config = build_plugin_config(name, cls, options.get(name, {}))
            plugin = self._instantiate(name, cls, config)
            package, version = distribution_of(self.available[name])
            self._register(name, plugin, config, package, version)
        for obj in extra:
            name = getattr(obj, "name", None) or type(obj).__name__
            if options.get(name):  # options for a ready-made object: a new one from its class
                config = build_plugin_config(name, type(obj), options[name])
                obj = self._instantiate(name, type(obj), config)
            config = getattr(obj, "config", None)
            self._register(name, obj, config, type(obj).__module__.split(".")[0], "-")
        self._validate()

    def _instantiate(self, name: str, cls: Any, config: Any) -> Any:
        if not inspect.isclass(cls):
            return cls
        try:
            return cls(config) if config is not None else cls()
        except Exception as exc:
            hint = exc.hint if isinstance(exc, DistillkitError) else None
            raise PluginError(f"plugin '{name}' could not be created: {exc}", hint=hint) from exc

    def _register(self, name: str, plugin: Any, config: Any, package: str, version: str) -> None:
        try:
            self.pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(
                f"plugin '{name}' ({package} {version}) does not fit distillkit's hooks: {exc}",
                hint="the plugin may be written for another distillkit version",
            ) from exc
        self.selected[name] = plugin
        self.configs[name] = config
        self.records[name] = PluginRecord(
            name=name,
            package=package,
            version=version,
            source=_source(package),
            hooks=tuple(sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])),
            status="enabled",
        )

    def _validate(self) -> None:
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"a plugin implements a hook that does not exist: {exc}") from exc
        for hook_name in sorted(hookspecs.EXCLUSIVE_HOOKS):
            owners = [
                impl.plugin_name
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls()
                if impl.plugin_name != CORE_NAME
            ]
            if len(owners) > 1:
                a, b = sorted(owners)[:2]
                raise PluginConflictError(
                    f"plugins '{a}' and '{b}' both replace {hook_name}; select only one of them",
                    hint=f"drop '{a}' or '{b}' from --plugins",
                )

    def config_defaults(self) -> dict[str, Any]:
        """Dotted core config defaults contributed by the selected plugins (conflicts are errors)."""
        return {key: value for key, (value, _owner) in self._defaults().items()}

    def config_default_owner(self, key: str) -> str:
        """The selected plugin whose ``config_defaults`` holds ``key``."""
        return self._defaults()[key][1]

    def _defaults(self) -> dict[str, tuple[Any, str]]:
        merged: dict[str, tuple[Any, str]] = {}
        for name, plugin in self.selected.items():
            for key, value in (getattr(plugin, "config_defaults", None) or {}).items():
                if key in merged and merged[key][0] != value:
                    raise PluginConflictError(
                        f"plugins '{merged[key][1]}' and '{name}' want different defaults for "
                        f"{key} ({merged[key][0]!r} vs {value!r})",
                        hint=f"set {key} explicitly with --set",
                    )
                merged[key] = (value, name)
        return merged

    def plugin_state(self) -> dict[str, Any]:
        """State of plugins that keep any (``state_dict()``), keyed by plugin name.

        Checked here, where it is taken, because it is written to JSON checkpoints: a state
        that cannot be written must stop the run with the plugin's name before any file is
        touched, not at the next checkpoint.
        """
        state = {}
        for name, plugin in self.selected.items():
            if not callable(getattr(plugin, "state_dict", None)):
                continue
            state[name] = plugin.state_dict()
            try:
                json.dumps(state[name], allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise PluginRuntimeError(
                    f"plugin '{name}': state_dict() must return JSON data (dicts, lists, strings, "
                    f"finite numbers), got {exc}",
                    hint=f"fix or deselect plugin '{name}'",
                ) from None
        return state

    def load_plugin_state(self, state: dict[str, Any]) -> None:
        """Give each selected plugin back what its ``state_dict()`` returned (on resume/rollback)."""
        for name, plugin_state in state.items():
            plugin = self.selected.get(name)
            if plugin is None or not callable(getattr(plugin, "load_state_dict", None)):
                raise PluginError(
                    f"saved state belongs to plugin '{name}', which is not selected or cannot load state"
                )
            plugin.load_state_dict(plugin_state)

    def list_records(self, selected: Sequence[str] = ()) -> list[PluginRecord]:
        """A record for every discovered plugin; a plugin that fails to load becomes an error row."""
        records = []
        for name, ep in self.available.items():
            package, version = distribution_of(ep)
            try:
                cls = ep.load()
                probe = pluggy.PluginManager(hookspecs.PROJECT)
                probe.add_hookspecs(hookspecs)
                instance = cls
                if inspect.isclass(cls):
                    cfg_cls = plugin_config_class(cls)
                    instance = cls(cfg_cls()) if cfg_cls is not None else cls()
                probe.register(instance, name=name)
                probe.check_pending()  # a misspelt hook makes every run refuse the plugin: say so here
                hooks = tuple(sorted(c.name for c in probe.get_hookcallers(instance) or []))
                status = "enabled" if name in selected else "available"
                error = ""
            except Exception as exc:  # a broken plugin is a row, never a crash
                hooks, status, error = (), "error", f"{type(exc).__name__}: {exc}"
            records.append(PluginRecord(name, package, version, _source(package), hooks, status, error))
        return records


def _source(package: str) -> str:
    return "built-in" if package == "distillkit" else "third-party"
