"""Checking a resolved config before anything runs: ranges, choices, names and paths.

Kept apart from :mod:`distillkit.config` so that the config stays plain data: the
dataset, model and augmentation registries live in torch modules and are imported
here, only when a config is checked.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

from distillkit.config import (
    SECTIONS,
    RunConfig,
    check_choices,
    last_needed_epoch,
    suggest,
)
from distillkit.errors import ConfigError


def validate(config: RunConfig) -> None:
    """Reject values that cannot work (they would otherwise fail deep inside the run)."""
    check_choices(config)  # the Literal fields, for a config built in Python rather than parsed
    positive = {
        "experts.count": config.experts.count,
        "experts.epochs": config.experts.epochs,
        "experts.batch_size": config.experts.batch_size,
        "experts.pack_size": config.experts.pack_size,
        "distill.ipc": config.distill.ipc,
        "distill.syn_steps": config.distill.syn_steps,
        "distill.expert_epochs": config.distill.expert_epochs,
        "distill.max_start_epoch": config.distill.max_start_epoch,
        "evaluate.epochs": config.evaluate.epochs,
        "evaluate.batch_size": config.evaluate.batch_size,
        "distill.snapshot_eval_epochs": config.distill.snapshot_eval_epochs,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    non_negative = {
        "distill.iterations": config.distill.iterations,
        "distill.batch_syn": config.distill.batch_syn,
        "distill.graph_steps": config.distill.graph_steps,
        "distill.sync_check_every": config.distill.sync_check_every,
        "evaluate.runs": config.evaluate.runs,
        "experts.eval_every": config.experts.eval_every,
        "experts.max_steps_per_epoch": config.experts.max_steps_per_epoch,
        "distill.snapshot_every": config.distill.snapshot_every,
        "distill.snapshot_eval": config.distill.snapshot_eval,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    for key, value in {
        "distill.lr_init": config.distill.lr_init,
        "experts.lr": config.experts.lr,
    }.items():
        if not value > 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    _check_finite(config)
    for key, value in {
        "distill.lr_img": config.distill.lr_img,
        "distill.lr_lr": config.distill.lr_lr,
        "distill.img_momentum": config.distill.img_momentum,
        "distill.student_momentum": config.distill.student_momentum,
        "distill.skip_loss_above": config.distill.skip_loss_above,
        "distill.graph_memory_mb": config.distill.graph_memory_mb,
        "experts.momentum": config.experts.momentum,
        "experts.weight_decay": config.experts.weight_decay,
        "evaluate.momentum": config.evaluate.momentum,
        "evaluate.weight_decay": config.evaluate.weight_decay,
    }.items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    for key, value in {
        "experts.momentum": config.experts.momentum,
        "distill.student_momentum": config.distill.student_momentum,
        "distill.img_momentum": config.distill.img_momentum,
        "distill.image_ema": config.distill.image_ema,
        "evaluate.momentum": config.evaluate.momentum,
    }.items():
        if not 0 <= value < 1:
            raise ConfigError(f"{key} must be in [0, 1), got {value}")
    if not 0 < config.evaluate.lr_decay_factor <= 1:
        raise ConfigError(
            f"evaluate.lr_decay_factor must be in (0, 1], got {config.evaluate.lr_decay_factor}"
        )
    after = config.evaluate.momentum_after_decay
    if not (after == -1 or 0 <= after < 1):
        raise ConfigError(
            f"evaluate.momentum_after_decay must be -1 (keep the momentum) or in [0, 1), got {after}"
        )
    if config.distill.guard_every <= 0:
        raise ConfigError(f"distill.guard_every must be > 0, got {config.distill.guard_every}")
    if config.distill.checkpoint_every < 0 or config.distill.max_failures < 0:
        raise ConfigError("distill.checkpoint_every and distill.max_failures must be >= 0")
    if not 0 < config.distill.backoff < 1:
        raise ConfigError(f"distill.backoff must be in (0, 1), got {config.distill.backoff}")
    if not 0 < config.experts.lr_decay_factor <= 1:
        raise ConfigError(f"experts.lr_decay_factor must be in (0, 1], got {config.experts.lr_decay_factor}")
    if config.distill.graph_memory_mb and config.distill.memory != "constant":
        raise ConfigError(
            "distill.graph_memory_mb sizes the graphs constant memory keeps; "
            f"distill.memory is {config.distill.memory!r}, which keeps every step's graph",
            hint="add --memory constant (or drop distill.graph_memory_mb)",
        )
    _check_snapshots(config)
    needed = last_needed_epoch(config.distill)
    if needed > config.experts.epochs:
        raise ConfigError(
            f"experts are trained for {config.experts.epochs} epochs but distillation needs "
            f"epoch (max_start_epoch - 1) + expert_epochs = {needed}",
            hint="raise experts.epochs or lower distill.max_start_epoch",
        )
    check_names(config)


def _check_snapshots(config: RunConfig) -> None:
    """A validation split in [0, 1); snapshot evaluation needs snapshots and a validation split."""
    if not 0 <= config.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {config.data.val_fraction}")
    if config.distill.snapshot_eval and not config.data.val_fraction:
        raise ConfigError(
            "distill.snapshot_eval needs a validation split (the test split never selects anything)",
            hint="add --set data.val_fraction=0.1",
        )
    if config.distill.snapshot_eval and not config.distill.snapshot_every:
        raise ConfigError(
            "distill.snapshot_eval evaluates snapshots, but distill.snapshot_every is 0",
            hint="add --set distill.snapshot_every=N",
        )


def _check_finite(config: RunConfig) -> None:
    """NaN or inf (``--set distill.lr_img=nan`` parses as a float) can only poison a run."""
    for section in SECTIONS:
        values = getattr(config, section)
        for item in fields(values):
            value = getattr(values, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{item.name} must be a finite number, got {value}")


def check_names(config: RunConfig) -> None:
    """Check dataset, model and augmentation names and the data path before anything is written.

    Otherwise a typo would surface only after the run directory exists, or (for
    ``evaluate.models``) after experts and distillation have run. The registries
    live in torch modules, hence the imports here rather than at the top.
    """
    from distillkit.data.augment import DSA
    from distillkit.data.datasets import IMAGEFOLDER_PREFIX, PATH_PREFIXES, SUBSET_PREFIX, dataset_names
    from distillkit.models import parse_model_name

    spec = config.data.dataset.strip()
    if spec.lower().startswith(IMAGEFOLDER_PREFIX):
        folder = _user_path(spec[len(IMAGEFOLDER_PREFIX) :], "data.dataset")
        if not folder.is_dir():
            raise ConfigError(
                f"data.dataset: image folder {folder} does not exist",
                hint="imagefolder:PATH takes a folder with train/<class>/ (and test/<class>/) images",
            )
    elif spec.lower().startswith(SUBSET_PREFIX):
        class_list = _user_path(spec[len(SUBSET_PREFIX) :], "data.dataset")
        if not class_list.is_file():
            raise ConfigError(
                f"data.dataset: ImageNet class list {class_list} does not exist",
                hint="imagenet-subset:PATH takes a file of WordNet ids (one a line); "
                "--data-path is the ImageNet folder",
            )
    elif spec.lower() not in dataset_names():
        known = [n for n in dataset_names() if not n.startswith(PATH_PREFIXES)]
        raise ConfigError(
            f"Unknown dataset '{spec}'",
            hint=suggest(spec.lower(), known) or f"known datasets: {', '.join(dataset_names())}",
        )
    data_path = _user_path(config.data.data_path, "data.data_path")
    if config.data.data_path and not config.data.download and not data_path.is_dir():
        raise ConfigError(
            f"data.data_path {data_path} is not a directory",
            hint="pass the folder holding the dataset files, or add --download to fetch them there",
        )
    for name in (config.model.name, *config.evaluate.models):
        parse_model_name(name)
    DSA(config.data.augment)


def _user_path(text: str, key: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~name of an unknown user
        raise ConfigError(f"{key}: cannot expand the path '{text}'") from None
