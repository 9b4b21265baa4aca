"""What every stage shares: the prepared data, fresh models, the device, seeds, the run scope.

Split out of :mod:`distillkit.api` so the expert, distillation and evaluation stages can
use it without importing each other. Stages take their own config section and a
:class:`RunScope` (the few run-wide values), never the whole ``RunConfig``: a stage's
inputs can be read off its signature. :mod:`distillkit.api` does the unpacking.
"""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from distillkit import __version__
from distillkit.context import InitContext, RunContext
from distillkit.data import ZCA, ImageDataset, load_dataset
from distillkit.data.augment import DSA
from distillkit.data.holdout import hold_out
from distillkit.data.pixels import Images, NormalisedPixels
from distillkit.distributed import World
from distillkit.errors import ConfigError
from distillkit.host import PluginHost
from distillkit.hostmemory import allocator_mode, keep_freed_memory, return_free_memory
from distillkit.models import build_model

if TYPE_CHECKING:
    from distillkit.config import DataConfig, RunConfig


class Reporter:
    """Progress sink; the default does nothing (the CLI passes a rich one).

    ``start(stage, total, every)``: a stage of ``total`` units begins; a log that is
    not a progress bar reports every ``every`` units (``distill.log_every`` for the
    distillation, each epoch or network elsewhere).
    """

    def start(self, stage: str, total: int, every: int = 1) -> None: ...

    def advance(self, n: int = 1, **info: Any) -> None: ...

    def finish(self) -> None: ...

    def note(self, message: str) -> None: ...


@dataclass
class PreparedData:
    """The dataset after preprocessing (normalisation, optional ZCA), ready for every stage.

    Without ZCA the images are the dataset's lazily normalised pixels; ``images[index]``
    gives float tensors either way. With ``data.val_fraction`` the dataset's training split
    is already the rest: ``val_*`` holds what was held out and ``holdout`` describes it
    (it enters the expert store key).
    """

    dataset: ImageDataset
    train_images: Images
    test_images: Images
    zca: ZCA | None
    val_images: Images | None = None
    val_labels: torch.Tensor | None = None
    holdout: dict[str, float | int] | None = None

    @property
    def train(self) -> tuple[Images, torch.Tensor]:
        return self.train_images, self.dataset.train_labels

    @property
    def test(self) -> tuple[Images, torch.Tensor]:
        return self.test_images, self.dataset.test_labels

    @property
    def val(self) -> tuple[Images, torch.Tensor] | None:
        """The validation split held out of train, or None."""
        if self.val_images is None or self.val_labels is None:
            return None
        return self.val_images, self.val_labels

    def init_context(self, ipc: int, **expert_side: Any) -> InitContext:
        """The ``init_synthetic`` context for this data; ``expert_side`` fills the expert/model fields."""
        return InitContext(
            train_images=self.train_images,
            train_labels=self.dataset.train_labels,
            num_classes=self.dataset.num_classes,
            ipc=ipc,
            class_names=self.dataset.class_names,
            **expert_side,
        )

    def release_images(self) -> None:
        """Free the real images held as pixels (float tensors, e.g. after ZCA, are kept).

        For processes that are done with the real data, such as ``distillkit distill``
        once the start set is drawn: metadata (shape, classes, normalisation) stays.
        """
        dataset = self.dataset
        for images in (self.train_images, self.test_images, dataset.train_images, dataset.test_images):
            if isinstance(images, NormalisedPixels):
                images.release()
        return_free_memory()

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Synthetic images back to [0, 1] pixels for pictures (inverse ZCA, then de-normalise)."""
        images = images.detach().cpu()
        if self.zca is not None:
            images = self.zca.inverse(images)
        return self.dataset.to_pixels(images)


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Load the dataset, hold out the validation split, apply ZCA if asked (fitted on what train is left)."""
    dataset = load_dataset(cfg.dataset, cfg.data_path or None, cfg.download)
    val_images, val_labels, holdout = None, None, None
    if cfg.val_fraction > 0:
        dataset, (val_images, val_labels) = hold_out(dataset, cfg.val_fraction, cfg.val_seed)
        holdout = {"val_fraction": cfg.val_fraction, "val_seed": cfg.val_seed}
    if cfg.zca:
        # ZCA works on whole float sets: materialise them (``[:]``) for the fit and the transform.
        train, test = dataset.train_images[:], dataset.test_images[:]
        zca = ZCA.fit(train)
        val = zca.transform(val_images[:]) if val_images is not None else None
        return PreparedData(dataset, zca.transform(train), zca.transform(test), zca, val, val_labels, holdout)
    return PreparedData(
        dataset, dataset.train_images, dataset.test_images, None, val_images, val_labels, holdout
    )


def model_factory(data: PreparedData) -> Callable[[str, int], torch.nn.Module]:
    """``make(name, seed)`` builds a freshly, reproducibly initialised network for this dataset."""
    channels, height, width = data.dataset.image_shape

    def make(name: str, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(name, channels, data.dataset.num_classes, (height, width))

    return make


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; an unavailable CUDA device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # mps, xpu, meta...: not supported (or tested) here
        raise ConfigError(f"unsupported device '{name}'", hint="use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available", hint="use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device '{name}' requested but only {torch.cuda.device_count()} CUDA devices exist",
            hint=f"use cuda:0 … cuda:{torch.cuda.device_count() - 1}",
        )
    return device


def device_for(name: str, deterministic: bool) -> torch.device:
    """The run's device, with deterministic kernels switched on when ``deterministic`` is set.

    CPU kernels here are deterministic already; cuDNN and cuBLAS are not by default,
    so a resumed CUDA run matches an uninterrupted one bit for bit only with this on.
    """
    device = resolve_device(name)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return device


def stage_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for one stage/item, derived from the run seed (independent streams)."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class RunScope:
    """The run-wide values every stage takes beside its own config section.

    ``plugin_view`` is the whole config only because plugins see it (``RunContext.config``);
    stage code never reads it. ``world`` is this process's place in a ``torch.distributed`` job
    (``World()``: a single process). Build one with :func:`run_scope`.
    """

    seed: int
    model: str
    device: torch.device
    augment: DSA
    host: PluginHost
    plugin_view: RunConfig
    world: World = field(default_factory=World)

    def seed_for(self, *parts: object) -> int:
        """The seed of one stage or item (see :func:`stage_seed`)."""
        return stage_seed(self.seed, *parts)

    def context(self, *seed_parts: object, out_dir: Path | None = None) -> RunContext:
        """A hook ``RunContext`` whose generator is seeded for ``seed_parts`` of this run."""
        return RunContext(
            config=self.plugin_view,
            device=self.device,
            generator=torch.Generator(device=self.device).manual_seed(self.seed_for(*seed_parts)),
            out_dir=out_dir,
            plugin_configs=dict(self.host.configs),
        )


def run_scope(config: RunConfig, host: PluginHost, world: World = World()) -> RunScope:
    """The scope of a run: seed, architecture, device (made deterministic if asked), DSA, plugins, world.

    In a job of several ranks an unnumbered ``cuda`` device becomes this rank's GPU
    (:meth:`World.device`). Sets up the host allocator first (:mod:`distillkit.hostmemory`).
    """
    keep_freed_memory()
    return RunScope(
        seed=config.seed,
        model=config.model.name,
        device=world.device(device_for(config.device, config.deterministic)),
        augment=DSA(config.data.augment),
        host=host,
        plugin_view=config,
        world=world,
    )


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak RSS of this process (and peak CUDA allocation when on a GPU), in MiB."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = {"peak_rss_mb": rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20}
    if device.type == "cuda":
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def environment() -> dict[str, Any]:
    return {
        "distillkit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "host_allocator": allocator_mode(),
    }
