"""Fixed choices are ``Literal`` types: every such field of the core config and of every plugin's
``Config``, found by introspection, refuses other values with the allowed ones and a suggestion."""

from __future__ import annotations

import typing
from dataclasses import fields, is_dataclass
from typing import Any

import pytest

from distillkit.config import RunConfig, apply_overrides, coerce
from distillkit.errors import ConfigError
from distillkit.host import build_plugin_config, discover, plugin_config_class
from distillkit.validation import validate


def _literals(cls: type, prefix: str) -> list[tuple[str, str, tuple[Any, ...]]]:
    """(dotted key, field name, allowed values) of every ``Literal`` field, nested dataclasses walked."""
    found = []
    hints = typing.get_type_hints(cls)
    for item in fields(cls):
        key = f"{prefix}.{item.name}" if prefix else item.name
        annotation = hints[item.name]
        if is_dataclass(annotation):
            found += _literals(annotation, key)
        elif typing.get_origin(annotation) is typing.Literal:
            found.append((key, item.name, typing.get_args(annotation)))
    return found


def _plugins() -> dict[str, tuple[Any, bool]]:
    """Every installed plugin with a ``Config``: name → (class, whether it ships with distillkit)."""
    plugins = {}
    for name, ep in discover().items():
        cls = ep.load()
        if plugin_config_class(cls) is not None:
            plugins[name] = (cls, ep.dist is not None and ep.dist.metadata["Name"] == "distillkit")
    return plugins


CORE = _literals(RunConfig, "")
PLUGINS = _plugins()
PLUGIN_FIELDS = [
    (name, key, field_name, allowed)
    for name, (cls, _builtin) in PLUGINS.items()
    for key, field_name, allowed in _literals(plugin_config_class(cls), name)
]


def _wrong(allowed: tuple[Any, ...]) -> str:
    return "no-such-choice-" + "-".join(map(str, allowed))


def _near_miss(option: str) -> str:
    return option + "x"


def _check_refusal(exc: pytest.ExceptionInfo[ConfigError], key: str, allowed: tuple[Any, ...]) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{key} must be one of {', '.join(map(str, allowed))}, got ")


def test_the_introspection_finds_the_known_choices() -> None:
    """A guard on the discovery itself: the core and the built-in plugins do declare choices."""
    keys = {key for key, _name, _allowed in CORE}
    assert {"distill.memory", "experts.optimizer", "experts.store_dtype"} <= keys
    builtin = {name for name, (_cls, builtin) in PLUGINS.items() if builtin}
    assert {"bil", "itm", "kmeans-init", "smooth", "wp"} <= builtin
    assert {name for name, *_rest in PLUGIN_FIELDS} >= {"bil", "itm", "kmeans-init", "smooth", "wp"}


@pytest.mark.parametrize(("key", "field_name", "allowed"), CORE, ids=[k for k, *_ in CORE])
def test_core_choice(key: str, field_name: str, allowed: tuple[Any, ...]) -> None:
    for option in allowed:
        assert getattr(_section(apply_overrides(RunConfig(), {key: option}), key), field_name) == option
        assert coerce(str(option), _annotation(key), key) == option
    with pytest.raises(ConfigError) as wrong:
        apply_overrides(RunConfig(), {key: _wrong(allowed)})
    _check_refusal(wrong, key, allowed)
    for option in allowed:
        with pytest.raises(ConfigError) as near:
            apply_overrides(RunConfig(), {key: _near_miss(option)})
        assert near.value.hint == f"did you mean '{option}'?"


@pytest.mark.parametrize(("key", "field_name", "allowed"), CORE, ids=[k for k, *_ in CORE])
def test_core_choice_in_a_config_built_in_python(key: str, field_name: str, allowed: tuple[Any, ...]) -> None:
    """No coercion sees ``RunConfig(...)`` built directly; ``validate`` still refuses the value."""
    head, _, rest = key.partition(".")
    if rest:
        section = getattr(RunConfig(), head)
        bad = RunConfig(**{head: type(section)(**{field_name: _wrong(allowed)})})
    else:
        bad = RunConfig(**{field_name: _wrong(allowed)})
    with pytest.raises(ConfigError) as wrong:
        validate(bad)
    _check_refusal(wrong, key, allowed)


@pytest.mark.parametrize(
    ("name", "key", "field_name", "allowed"), PLUGIN_FIELDS, ids=[k for _n, k, *_ in PLUGIN_FIELDS]
)
def test_plugin_choice(name: str, key: str, field_name: str, allowed: tuple[Any, ...]) -> None:
    cls, builtin = PLUGINS[name]
    for option in allowed:
        assert getattr(build_plugin_config(name, cls, {field_name: str(option)}), field_name) == option
    with pytest.raises(ConfigError) as wrong:
        build_plugin_config(name, cls, {field_name: _wrong(allowed)})
    _check_refusal(wrong, key, allowed)
    for option in allowed:
        with pytest.raises(ConfigError) as near:
            build_plugin_config(name, cls, {field_name: _near_miss(option)})
        assert near.value.hint == f"did you mean '{option}'?"
    if builtin:  # a built-in Config also refuses the value when constructed in Python
        with pytest.raises(ConfigError) as direct:
            plugin_config_class(cls)(**{field_name: _wrong(allowed)})
        _check_refusal(direct, key, allowed)


def test_a_literal_inside_an_optional_keeps_its_suggestion() -> None:
    annotation = typing.Literal["sample", "pixel"] | None
    assert coerce("none", annotation, "x.norm") is None
    assert coerce("pixel", annotation, "x.norm") == "pixel"
    with pytest.raises(ConfigError, match=r"x.norm must be one of sample, pixel, got 'pixl'") as near:
        coerce("pixl", annotation, "x.norm")
    assert near.value.hint == "did you mean 'pixel'?"


def test_a_toml_value_of_another_type_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"experts.store_dtype must be one of .*, got 16$"):
        apply_overrides(RunConfig(), {"experts.store_dtype": 16})


def _annotation(key: str) -> Any:
    head, _, rest = key.partition(".")
    annotation = typing.get_type_hints(RunConfig)[head]
    return typing.get_type_hints(annotation)[rest] if rest else annotation


def _section(config: RunConfig, key: str) -> Any:
    head, _, rest = key.partition(".")
    return getattr(config, head) if rest else config
