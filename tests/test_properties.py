"""Property-based tests: config parsing and the store/synthetic loaders never fail with anything
but a ``DistillkitError`` on random or corrupt input, and every corruption of a file is caught.

Hypothesis runs derandomized (a fixed seed, no example database) so the suite is deterministic.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_safetensors

from distillkit.artifacts import SYNTHETIC_JSON, SYNTHETIC_TENSORS, load_synthetic, save_synthetic
from distillkit.config import (
    RunConfig,
    apply_overrides,
    config_keys,
    from_dict,
    read_toml,
    split_set_option,
    to_dict,
)
from distillkit.errors import ConfigError, DistillkitError, StoreError
from distillkit.experts.store import MANIFEST, TrajectoryStore, expert_filename
from distillkit.resolve import resolve_config
from distillkit.validation import validate

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- strategies -------------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
KEYS = st.one_of(
    st.sampled_from([*config_keys(), "wp.alpha", "bil.mode", "plugins", "seed.x", "distill.", ".ipc", ""]),
    TEXT,
)
NUMBER_TEXT = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        ["true", "no", "none", "", "1e400", "0x10", "1_000", " 3 ", "convnet,alexnet", "~nobody_x/d"]
    ),
)
VALUES = st.one_of(NUMBER_TEXT, TEXT)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSON = st.recursive(
    st.none() | SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


def to_toml(table: dict[str, Any]) -> str:
    """A small TOML writer (the test environment has none): scalars first, then one level of tables."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for name, sub in table.items():
        if isinstance(sub, dict):
            lines.append(f"[{_toml_key(name)}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in sub.items()]
    return "\n".join(lines) + "\n"


TOML_VALUES = st.one_of(SCALARS, st.lists(st.one_of(st.integers(0, 9), TEXT), max_size=3))
SECTION_KEYS = {
    section: [k.split(".", 1)[1] for k in config_keys() if k.startswith(f"{section}.")]
    for section in ("data", "model", "experts", "distill", "evaluate")
} | {"wp": ["alpha", "scope"]}
SECTION_TABLES = st.fixed_dictionaries(
    {},
    optional={
        section: st.dictionaries(st.one_of(st.sampled_from(keys), TEXT), TOML_VALUES, max_size=3)
        for section, keys in SECTION_KEYS.items()
    },
)
TOP_VALUES = st.one_of(TOML_VALUES, st.sampled_from([["wp"], ["bil", "wp"], "wp", ["nope"]]))
TOML_TABLES = st.builds(
    lambda sections, top: {**top, **sections},
    SECTION_TABLES,
    st.dictionaries(st.sampled_from(["seed", "device", "plugins", "extra"]), TOP_VALUES, max_size=2),
)

# -- config parsing ---------------------------------------------------------------------------


@FUZZ
@given(st.lists(st.tuples(KEYS, VALUES), max_size=4))
def test_set_options_give_a_config_or_a_config_error(pairs: list[tuple[str, str]]) -> None:
    """``--set KEY=VALUE`` for any text: a validated config or a one-line ConfigError, nothing else."""
    try:
        values = dict(split_set_option(f"{key}={value}") for key, value in pairs)
        validate(apply_overrides(RunConfig(), values))
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)


def _literal_choices(key: str) -> tuple[Any, ...]:
    """The allowed values of a core key declared ``Literal[...]`` (empty for any other type)."""
    head, _, rest = key.partition(".")
    annotation = typing.get_type_hints(RunConfig)[head]
    if rest:
        annotation = typing.get_type_hints(annotation)[rest]
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()


@FUZZ
@given(st.data())
def test_typed_values_round_trip_through_set_strings(data: st.DataObject) -> None:
    """Every core key accepts the string form of any value of its type and stores that value."""
    defaults = to_dict(RunConfig())
    key = data.draw(st.sampled_from([k for k in config_keys() if k != "plugins"]))
    head, _, rest = key.partition(".")
    default = defaults[head][rest] if rest else defaults[head]
    if isinstance(default, bool):
        value = data.draw(st.booleans())
        text = str(value).lower()
    elif isinstance(default, int):
        value = data.draw(st.integers(-(10**12), 10**12))
        text = str(value)
    elif isinstance(default, float):
        value = data.draw(st.floats(allow_nan=False, allow_infinity=False))
        text = repr(value)
    elif isinstance(default, list):
        value = data.draw(st.lists(st.from_regex(r"[a-z0-9-]{1,8}", fullmatch=True), max_size=3))
        text = ",".join(value)
    elif choices := _literal_choices(key):
        value = data.draw(st.sampled_from(choices))
        text = value
    else:
        value = data.draw(TEXT.map(str.strip))
        text = value
    parsed_key, parsed_text = split_set_option(f"{key}={text}")
    config = to_dict(apply_overrides(RunConfig(), {parsed_key: parsed_text}))
    assert (config[head][rest] if rest else config[head]) == value


@FUZZ
@given(TOML_TABLES)
def test_toml_files_resolve_or_raise_a_user_error(table: dict[str, Any]) -> None:
    """A TOML config with any keys, types and plugin names: a config and host, or a DistillkitError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.toml"
        path.write_text(to_toml(table), encoding="utf-8")
        try:
            config, _host = resolve_config(config_file=path)
        except DistillkitError as exc:
            assert str(exc) and exc.exit_code in (2, 3)
        else:
            assert isinstance(config, RunConfig)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_as_a_toml_file(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.toml"
        path.write_bytes(raw)
        try:
            values = read_toml(path)
        except ConfigError as exc:
            assert str(path) in str(exc)
        else:
            assert isinstance(values, dict)


@FUZZ
@given(st.one_of(JSON, st.builds(lambda d, k, v: {**d, k: v}, st.just(to_dict(RunConfig())), KEYS, JSON)))
def test_recorded_configs_load_or_raise_config_error(recorded: Any) -> None:
    """``config.json`` of a run directory, edited or damaged: a config or a ConfigError."""
    try:
        config = from_dict(recorded)
    except ConfigError:
        return
    # compared as JSON so that a recorded NaN (not validated here) still equals itself
    assert json.dumps(to_dict(from_dict(to_dict(config)))) == json.dumps(to_dict(config))


# -- the trajectory store -------------------------------------------------------------------

EPOCHS, WIDTH = 3, 40
KEY = {
    "dataset": "digits",
    "image_shape": [1, 8, 8],
    "num_classes": 10,
    "param_layout": [["w", [4, 10]]],
    "num_params": WIDTH,
    "epochs": EPOCHS,
    "store_dtype": "float32",
}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "store"
    store = TrajectoryStore.create_or_open(root, KEY)
    store.write_expert(0, torch.randn(EPOCHS + 1, WIDTH, generator=torch.Generator().manual_seed(0)), {})
    return root


def _copy(store_dir: Path, folder: str) -> Path:
    root = Path(folder) / "store"
    shutil.copytree(store_dir, root)
    return root


def _load_everything(root: Path) -> None:
    """What a distillation does with a store: open, check, read every finished expert."""
    store = TrajectoryStore.open(root)
    store.check_compatible(KEY)
    for index in store.finished():
        store.load(index)
        store.load(index, [0, store.num_epochs(index)])


CORRUPTIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("append"), st.integers(1, 64), st.integers(0, 255)),
)


def _corrupt(data: bytes, how: tuple[str, int, int]) -> bytes:
    kind, position, value = how
    if kind == "flip":
        at = position % len(data)
        return data[:at] + bytes([data[at] ^ value]) + data[at + 1 :]
    if kind == "truncate":
        return data[: position % len(data)]
    return data + bytes([value]) * position


@settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(CORRUPTIONS)
def test_every_corruption_of_an_expert_file_is_refused(store_dir: Path, how: tuple[str, int, int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = _copy(store_dir, folder)
        path = root / expert_filename(0)
        path.write_bytes(_corrupt(path.read_bytes(), how))
        with pytest.raises(StoreError, match=re.escape(str(path))):
            _load_everything(root)


def _mutations(manifest: dict) -> st.SearchStrategy[Any]:
    """A manifest with one field anywhere in it replaced by random JSON, or dropped."""
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, prefix: tuple[Any, ...]) -> None:
        paths.append(prefix)
        children = (
            node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        )
        for name, child in children:
            walk(child, (*prefix, name))

    walk(manifest, ())

    def apply(path: tuple[Any, ...], value: Any, drop: bool) -> Any:
        if not path:
            return value
        copy = json.loads(json.dumps(manifest))
        node = copy
        for step in path[:-1]:
            node = node[step]
        if drop and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return copy

    special = st.sampled_from(["", ".", "..", MANIFEST, "expert_000.safetensors", -1, 0, 10**9, True, []])
    return st.builds(apply, st.sampled_from(paths), st.one_of(special, JSON), st.booleans())


@settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_damaged_manifests_open_or_raise_store_error(store_dir: Path, data: st.DataObject) -> None:
    manifest = json.loads((store_dir / MANIFEST).read_text())
    damaged = data.draw(st.one_of(JSON, _mutations(manifest)))
    with tempfile.TemporaryDirectory() as folder:
        root = _copy(store_dir, folder)
        (root / MANIFEST).write_text(json.dumps(damaged))
        try:
            _load_everything(root)
        except StoreError as exc:
            assert str(exc) and "\n" not in str(exc)


@pytest.mark.parametrize("name", ["", "..", ".", "../store/manifest.json"])
def test_manifest_entries_must_name_a_file_inside_the_store(store_dir: Path, name: str) -> None:
    """Found by the test above: ``""`` and ``..`` named the store or its parent and crashed the hash."""
    with tempfile.TemporaryDirectory() as folder:
        root = _copy(store_dir, folder)
        manifest = json.loads((root / MANIFEST).read_text())
        manifest["experts"][0]["file"] = name
        (root / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(StoreError, match="malformed expert entry"):
            _load_everything(root)


TENSORS = st.dictionaries(
    st.sampled_from(["trajectory", "codes", "scales", "other"]),
    st.lists(st.integers(0, 5), max_size=3).map(lambda shape: torch.zeros(shape)),
    max_size=2,
)


@settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=64), TENSORS.map(save_safetensors)))
@example(save_safetensors({"trajectory": torch.zeros(())}))  # found by this test: a 0-d tensor crashed
def test_foreign_content_with_a_matching_checksum_is_refused(store_dir: Path, content: bytes) -> None:
    """A file whose manifest checksum was updated to match (hand edits, other tools): still no crash."""
    import hashlib

    with tempfile.TemporaryDirectory() as folder:
        root = _copy(store_dir, folder)
        (root / expert_filename(0)).write_bytes(content)
        manifest = json.loads((root / MANIFEST).read_text())
        manifest["experts"][0]["sha256"] = hashlib.sha256(content).hexdigest()
        (root / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(StoreError):
            _load_everything(root)


# -- the synthetic set ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    images = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    save_synthetic(out, images, torch.arange(10), 0.01, {"dataset": "digits"})
    return out


@settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(CORRUPTIONS)
def test_every_corruption_of_a_synthetic_set_is_refused(
    synthetic_dir: Path, how: tuple[str, int, int]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        shutil.copy(synthetic_dir / SYNTHETIC_JSON, out)
        data = (synthetic_dir / SYNTHETIC_TENSORS).read_bytes()
        (out / SYNTHETIC_TENSORS).write_bytes(_corrupt(data, how))
        with pytest.raises(StoreError, match=SYNTHETIC_TENSORS):
            load_synthetic(out)


@settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.one_of(JSON, st.binary(max_size=64)))
def test_damaged_synthetic_sidecars_load_or_raise_store_error(synthetic_dir: Path, sidecar: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        shutil.copy(synthetic_dir / SYNTHETIC_TENSORS, out)
        raw = sidecar if isinstance(sidecar, bytes) else json.dumps(sidecar).encode()
        (out / SYNTHETIC_JSON).write_bytes(raw)
        with pytest.raises(StoreError):
            load_synthetic(out)
