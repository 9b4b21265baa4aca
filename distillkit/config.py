"""Run configuration: frozen dataclasses, TOML files and ``--set`` overrides.

How presets, plugin defaults, config files and ``--set`` combine is one rule,
written down in :mod:`distillkit.resolve`. Unknown keys, wrong types and values outside a
``Literal`` field's choices are errors.

Longer than 400 lines because every key is documented by a ``#:`` line beside its field,
the source of the key table in docs/config.md (:mod:`distillkit.configdoc`).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from distillkit.errors import ConfigError

DSA_DEFAULT = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which dataset, where it lives, and how it is preprocessed."""

    #: digits, mnist, fashion-mnist, cifar10, cifar100, svhn, tiny-imagenet, MTT's ImageNet subsets
    #: (imagenette, imagewoof, imagefruit, imagemeow, imagesquawk, imageyellow; ``data_path`` = an
    #: ImageNet folder), ``imagenet-subset:PATH`` (your own list of WordNet ids), or
    #: ``imagefolder:PATH`` (a folder with ``train/<class>/`` and optionally ``test/<class>/`` images).
    #: Layouts: docs/datasets.md.
    dataset: str = "digits"
    #: Folder holding the dataset's files ("": none; only the embedded digits need none).
    data_path: str = ""
    #: Let torchvision download missing dataset files into ``data_path``.
    download: bool = False
    #: ZCA-whiten the images (fitted on the training set, applied to both splits).
    zca: bool = False
    #: Differentiable augmentation (DSA) of experts, student and evaluation: op groups joined by "_"
    #: (color, crop, cutout, flip, scale, rotate, brightness, saturation, contrast), one drawn per
    #: batch; "" or "none" = no augmentation.
    augment: str = DSA_DEFAULT
    #: Fraction of each class of the training split held out as a validation split before experts,
    #: initialisation or distillation see it (0: none). Only ``distill.snapshot_eval`` reads it; the
    #: test split is never held out or used to select anything.
    val_fraction: float = 0.0
    #: Seed of the validation split (its own, so runs of every ``seed`` hold out the same images).
    val_seed: int = 0


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The architecture experts and student share (see ``distillkit.models``)."""

    #: A family with dash-separated modifiers: convnet (dN depth, wN width, in|bn|ln|gn|nn norm,
    #: ap|mp|np pool; e.g. convnet-w32-d2), alexnet, vgg11, resnet18 (e.g. resnet18-bn-ap).
    name: str = "convnet"


@dataclass(frozen=True, kw_only=True)
class ExpertsConfig:
    """Expert (buffer) training; one snapshot is stored per epoch."""

    #: Experts (training trajectories) to train; a cached store's finished ones are reused.
    count: int = 5
    #: Training epochs per expert (E); its trajectory holds the start and E epoch-end snapshots.
    epochs: int = 20
    #: "sgd" (with ``momentum`` and ``weight_decay``) or "adam" (``momentum`` unused).
    optimizer: Literal["sgd", "adam"] = "sgd"
    #: Expert learning rate.
    lr: float = 0.01
    #: Heavy-ball momentum of the expert's SGD, in [0, 1).
    momentum: float = 0.0
    #: Expert weight decay (L2).
    weight_decay: float = 0.0
    #: Real images per expert training step.
    batch_size: int = 256
    #: Steps per epoch at most (0, the default: the whole training split, ⌈N / batch_size⌉ steps);
    #: fewer trains each epoch on the first batches of its shuffled order. ``--smoke`` sets it so a
    #: smoke run takes seconds on a full dataset.
    max_steps_per_epoch: int = 0
    #: When the lr is multiplied by ``lr_decay_factor``, relative to ``epochs`` (see
    #: :func:`first_decayed_epoch`): "none"; "half" = from epoch E//2 on (AST paper: the 25th of 50);
    #: "ast-code" = from epoch E//2 + 2 on (official AST code: 27 of 50, 5 of 6).
    lr_decay: Literal["none", "half", "ast-code"] = "none"
    #: What ``lr_decay`` multiplies the expert lr by, in (0, 1].
    lr_decay_factor: float = 0.5
    #: Test the expert every this many epochs and always after the last (0, the default: only after
    #: the last; 1 gives a per-epoch accuracy curve); the accuracies go to the store manifest. Not
    #: part of the store key: tests change no trajectory.
    eval_every: int = 0
    #: Number format of stored trajectories: float16/bfloat16 halve the bytes; int8 (closed-loop
    #: residual codes) is about a quarter of MTT's float32 format.
    store_dtype: Literal["float32", "float16", "bfloat16", "int8"] = "float32"
    #: "needed": store only epochs 0..(max_start_epoch - 1 + expert_epochs) and the final one.
    store_epochs: Literal["all", "needed"] = "all"
    #: Train experts as packed groups (one grouped computation per step): "on", "off" (one after
    #: another) or "auto" = on with CUDA, off on CPU (where packed training measured no faster). Each
    #: expert keeps its seed, data order, DSA draws and SGD; only float rounding differs. Experts whose
    #: loss or step a plugin shapes (expert_loss, expert_step), Adam experts, resumed experts and models
    #: it cannot pack train one at a time. Not part of the store key.
    parallel: Literal["auto", "on", "off"] = "auto"
    #: Most experts one packed group trains at once (their activations add up on the device).
    pack_size: int = 8


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """The trajectory-matching loop (MTT notation: N = syn_steps, M = expert_epochs, T⁺ = max_start_epoch)."""

    #: Synthetic images per class.
    ipc: int = 1
    #: N, student SGD steps on the synthetic set per iteration.
    syn_steps: int = 20
    #: M, the target is the expert M epochs after the start.
    expert_epochs: int = 2
    #: T⁺, the start epoch is drawn from 0 … T⁺ − 1 (needs experts.epochs ≥ T⁺ − 1 + M).
    max_start_epoch: int = 10
    #: Learning rate of the synthetic images' SGD.
    lr_img: float = 100.0
    #: Learning rate of the learned student step size α (SGD, momentum 0.5).
    lr_lr: float = 1e-5
    #: α₀, the student step size α starts at (also the lr of the random-real baseline).
    lr_init: float = 0.01
    #: Synthetic images per student step (0: all of them).
    batch_syn: int = 0
    #: Heavy-ball momentum of the student's inner SGD, in [0, 1) (official AST code: 0.9).
    student_momentum: float = 0.0
    #: Outer iterations (each: N student steps, one match, one update of images and α).
    iterations: int = 200
    #: Momentum of the synthetic images' SGD, in [0, 1).
    img_momentum: float = 0.5
    #: Decay d of a moving average E ← d·E + (1 − d)·images kept after every update; the average
    #: is the set saved and evaluated (0: off, the images themselves).
    image_ema: float = 0.0
    #: Skip the update of an iteration whose loss exceeds this (a cheap spike guard; the
    #: iteration still counts; 0: off).
    skip_loss_above: float = 0.0
    #: Progress lines every this many iterations when stderr is not a terminal.
    log_every: int = 10
    #: Denominator start of the final match: "expert" θ*_t (MTT, AST paper) or "perturbed" θ*_t + δ
    #: (official AST code, github.com/shenjiyuan123/AST-Alignment-with-Smooth-Expert); differs only
    #: when a plugin perturbs the start.
    match_denominator: Literal["expert", "perturbed"] = "expert"
    #: Feed the student NHWC inputs (faster oneDNN convolutions on CPU; last-bit differences).
    channels_last: bool = False
    #: "standard" keeps the unrolled graph (memory ∝ syn_steps); "constant" recomputes steps exactly.
    memory: Literal["standard", "constant"] = "standard"
    #: Constant mode: keep the graph of the last this many inner steps instead of recomputing them
    #: (memory grows with this, not with syn_steps; each kept step saves one recomputation).
    graph_steps: int = 0
    #: Constant mode: keep the graphs of as many of the last inner steps as fit in this many MiB,
    #: counted from the tensors one unrolled step saves (measured once, before the first
    #: iteration); replaces ``graph_steps``. The process needs more: one step's working memory
    #: and the allocator's slack (0: off).
    graph_memory_mb: float = 0.0
    #: Write RUN_DIR/checkpoints/ every this many iterations (0: only on SIGINT/SIGTERM).
    checkpoint_every: int = 25
    #: Save the synthetic set to RUN_DIR/snapshots/iter-NNNNNN.safetensors every this many
    #: iterations, and the initial set (iteration 0) (0: off).
    snapshot_every: int = 0
    #: Train this many fresh networks on each snapshot and record their accuracy on the
    #: validation split (needs ``data.val_fraction`` > 0) in snapshots/index.jsonl (0: off).
    snapshot_eval: int = 0
    #: Training epochs of each ``snapshot_eval`` network (otherwise the ``evaluate.*`` protocol).
    snapshot_eval_epochs: int = 50
    #: Divergence guard: keep a rollback point every ``guard_every`` good iterations.
    guard_every: int = 10
    #: Rollbacks allowed before the run stops (with the last good set saved).
    max_failures: int = 5
    #: lr_img and lr_lr are multiplied by this after each rollback.
    backoff: float = 0.5
    #: A loss above this × the median of recent good losses counts as exploding (0: off).
    max_loss_ratio: float = 100.0
    #: Synthetic pixels (normalised units, so real data lies within a few units) beyond this diverged.
    max_abs_pixel: float = 1000.0
    #: Over several ranks: compare a checksum of the set and α across ranks every this many
    #: iterations and stop on a mismatch (0: off; one process never checks).
    sync_check_every: int = 10


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """Training fresh networks on a synthetic set (docs/config.md): final-epoch accuracy, mean ± std."""

    #: Fresh networks trained per model, each from its own seed; 0 skips evaluation.
    runs: int = 5
    #: Training epochs per network; the lr is α, the learned step size (α₀ for random real images).
    epochs: int = 300
    #: Architectures to evaluate on, comma-separated model names (empty: ``model.name``).
    models: tuple[str, ...] = ()
    #: SGD momentum, in [0, 1).
    momentum: float = 0.9
    #: SGD weight decay (L2).
    weight_decay: float = 5e-4
    #: Images per training step.
    batch_size: int = 256
    #: The lr is multiplied by this at epoch epochs // 2, in (0, 1].
    lr_decay_factor: float = 0.1
    #: Momentum from epoch epochs // 2 on (-1: keep ``momentum``; official AST code: 0.8).
    momentum_after_decay: float = -1.0
    #: Train the ``runs`` networks of a model as one packed computation: "on", "off" (one after
    #: another) or "auto" = on with CUDA, off on CPU (where it measured slower). Each network keeps its
    #: seed, random stream and SGD; only float rounding differs (as on other hardware). Models it
    #: cannot pack (batch norm, ...) always train one at a time.
    parallel: Literal["auto", "on", "off"] = "auto"


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything a run needs; ``plugin_options`` holds raw ``<plugin>.<key>`` values."""

    #: Seeds every random stream (experts, initialisation, sampling, augmentation, evaluation).
    seed: int = 0
    #: auto (CUDA when available), cpu, cuda or cuda:N.
    device: str = "auto"
    #: Force deterministic kernels (needed for bit-identical resumes on CUDA; slower there).
    deterministic: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    #: Plugins to select, comma-separated (see ``distillkit list-plugins``; none: plain MTT).
    plugins: tuple[str, ...] = ()
    #: The selected plugins' options by plugin name (the ``<plugin>.<key>`` keys).
    plugin_options: dict[str, dict[str, Any]] = field(default_factory=dict)


SECTIONS = ("data", "model", "experts", "distill", "evaluate")
TOP_LEVEL = ("seed", "device", "deterministic", "plugins")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a TOML value or a ``--set`` string to ``annotation``; raise ``ConfigError`` if impossible."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        errors: list[ConfigError] = []
        for arm in typing.get_args(annotation):
            if arm is type(None):
                if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
                    return None
                continue
            try:
                return coerce(value, arm, key)
            except ConfigError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]  # the first arm's message and hint (a Literal's "did you mean")
        raise ConfigError(f"{key}: cannot parse {value!r}")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        for option in allowed:
            try:
                if coerce(value, type(option), key) == option:
                    return option
            except ConfigError:
                continue
        raise choice_error(key, value, allowed)
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(annotation) or (str,)
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ConfigError(f"{key} expects a list, got {value!r}")
        return tuple(coerce(v, item_type, key) for v in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key} expects true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} expects an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} expects a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} expects a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {annotation!r}")


def suggest(name: str, options: list[str]) -> str | None:
    close = difflib.get_close_matches(name, options, n=1)
    return f"did you mean '{close[0]}'?" if close else None


def choice_error(key: str, value: Any, allowed: tuple[Any, ...]) -> ConfigError:
    """The error for a value outside a ``Literal`` field's choices, with a suggestion when one is close."""
    names = [str(option) for option in allowed]
    return ConfigError(
        f"{key} must be one of {', '.join(names)}, got {value!r}", hint=suggest(str(value), names)
    )


def check_choices(config: Any, prefix: str = "") -> None:
    """Raise :func:`choice_error` for a ``Literal`` field of ``config`` holding another value.

    :func:`coerce` already refuses such values from TOML and ``--set``; this catches a
    dataclass built in Python (``ExpertsConfig(optimizer="adamw")``), which no coercion
    sees. Nested config dataclasses are walked, so one call checks a whole ``RunConfig``;
    a plugin's ``Config`` calls it from ``__post_init__`` with its plugin name as ``prefix``.
    """
    hints = _field_types(type(config))
    for item in fields(config):
        value = getattr(config, item.name)
        key = f"{prefix}.{item.name}" if prefix else item.name
        if is_dataclass(value):
            check_choices(value, key)
        elif typing.get_origin(hints[item.name]) is Literal:
            allowed = typing.get_args(hints[item.name])
            if value not in allowed:
                raise choice_error(key, value, allowed)


#: Keys of earlier versions, with what replaces them (the error for an old config file says so).
RENAMED_KEYS = {
    "experts.evaluate_each_epoch": "experts.eval_every (1: test after every epoch, 0: only after the last)",
}


def _old_key_hint(key: str) -> str | None:
    renamed = RENAMED_KEYS.get(key)
    return f"renamed: use {renamed}" if renamed else suggest(key, config_keys())


def config_keys() -> list[str]:
    """All core keys, dotted (``distill.ipc``), for help texts and suggestions."""
    keys = list(TOP_LEVEL)
    for section in SECTIONS:
        cls = _field_types(RunConfig)[section]
        keys += [f"{section}.{f.name}" for f in fields(cls)]
    return keys


def apply_overrides(
    config: RunConfig, values: dict[str, Any], plugin_names: set[str] | None = None
) -> RunConfig:
    """Return ``config`` with dotted ``values`` applied; keys of known plugins go to ``plugin_options``.

    ``plugin_names`` is the set of plugin names whose options may be set; with
    ``None`` every ``<name>.<key>`` that is not a core section is accepted (and
    checked later against the plugin's ``Config``).
    """
    section_updates: dict[str, dict[str, Any]] = {}
    top_updates: dict[str, Any] = {}
    plugin_options = {k: dict(v) for k, v in config.plugin_options.items()}
    hints = _field_types(RunConfig)
    for key, raw in values.items():
        head, _, rest = key.partition(".")
        if not rest:
            if head not in TOP_LEVEL:
                raise ConfigError(f"unknown config key '{key}'", hint=suggest(key, config_keys()))
            top_updates[head] = coerce(raw, hints[head], key)
            continue
        if head in SECTIONS:
            cls = hints[head]
            sub = _field_types(cls)
            if rest not in sub:
                raise ConfigError(f"unknown config key '{key}'", hint=_old_key_hint(key))
            section_updates.setdefault(head, {})[rest] = coerce(raw, sub[rest], key)
            continue
        if plugin_names is not None and head not in plugin_names:
            raise ConfigError(
                f"unknown config key '{key}': '{head}' is neither a config section nor a selected plugin",
                hint=suggest(key, config_keys()) or "select the plugin with --plugins first",
            )
        plugin_options.setdefault(head, {})[rest] = raw
    updated = replace(config, **top_updates, plugin_options=plugin_options)
    for section, changes in section_updates.items():
        updated = replace(updated, **{section: replace(getattr(updated, section), **changes)})
    return updated


def flatten_table(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Turn nested TOML tables into dotted keys (``{"distill": {"ipc": 1}}`` → ``{"distill.ipc": 1}``)."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_table(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


#: A config file larger than this is not a config file (``--config /dev/zero`` must not hang).
MAX_CONFIG_BYTES = 1 << 20


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file into dotted keys; a missing or malformed file is a ``ConfigError``."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
            if len(data) > MAX_CONFIG_BYTES:
                raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB")
            values = flatten_table(tomllib.loads(data.decode("utf-8")))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if "plugins" in values:  # read before the other keys (it selects plugins), so typed here
        values["plugins"] = coerce(values["plugins"], tuple[str, ...], f"plugins in {path}")
    return values


#: Keys a dataset preset may set: what is distilled, with which network, at which budget and
#: tuning. Every other key (expert optimiser, student momentum, evaluation protocol, plugins
#: and their options) is a method choice, the business of method presets.
DATASET_SECTIONS = ("data", "model")
DATASET_KEYS = frozenset(
    {
        "seed",
        "device",
        "experts.count",
        "experts.epochs",
        "experts.batch_size",
        "experts.eval_every",
        "experts.store_dtype",
        "experts.store_epochs",
        "evaluate.runs",
        "evaluate.epochs",
        "evaluate.batch_size",
        "evaluate.models",
    }
    | {f"distill.{f.name}" for f in fields(DistillConfig)}
    - {
        "distill.student_momentum",
        "distill.match_denominator",
        "distill.img_momentum",
        "distill.image_ema",
        "distill.skip_loss_above",
    }
)


def is_dataset_key(key: str) -> bool:
    """Whether ``key`` belongs in a dataset preset (see ``DATASET_KEYS``)."""
    return key.partition(".")[0] in DATASET_SECTIONS or key in DATASET_KEYS


def split_set_option(item: str) -> tuple[str, str]:
    """Parse one ``--set KEY=VALUE``."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, got '{item}'", hint="e.g. --set distill.ipc=10")
    return key.strip(), value.strip()


def first_decayed_epoch(experts: ExpertsConfig) -> int | None:
    """The first expert epoch (0-based) trained at ``lr × lr_decay_factor``; ``None`` = never.

    Relative to the epoch count, so a 6-epoch expert decays as a 50-epoch one does:
    "half" → E//2 (50 → 25, 6 → 3); "ast-code" → E//2 + 2 (the official code multiplies
    after epoch index E//2 + 1: 50 → 27, 6 → 5). An epoch ≥ E never comes.
    """
    if experts.lr_decay == "none":
        return None
    epoch = experts.epochs // 2 + (2 if experts.lr_decay == "ast-code" else 0)
    return epoch if epoch < experts.epochs else None


def last_needed_epoch(distill: DistillConfig) -> int:
    """The latest expert epoch a match can target: start t ≤ T⁺ − 1, target t + M."""
    return distill.max_start_epoch - 1 + distill.expert_epochs


def to_dict(config: Any) -> Any:
    """A JSON-ready view of a config dataclass (tuples become lists)."""
    if is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a ``RunConfig`` from :func:`to_dict` output (e.g. a run directory's ``config.json``)."""
    options = data.get("plugin_options", {}) if isinstance(data, dict) else None
    data = {k: v for k, v in data.items() if k != "sources"} if isinstance(data, dict) else data
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ConfigError("a recorded config must be a JSON object with a plugin_options object of objects")
    flat = flatten_table({k: v for k, v in data.items() if k != "plugin_options"})
    if "experts.evaluate_each_epoch" in flat:  # recorded before eval_every: the same tests
        flat["experts.eval_every"] = 1 if flat.pop("experts.evaluate_each_epoch") else 0
    config = apply_overrides(RunConfig(), flat)
    return dataclasses.replace(config, plugin_options={k: dict(v) for k, v in options.items()})
