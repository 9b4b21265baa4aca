"""``tensorboard``: every metric of a run as TensorBoard scalars under ``RUN_DIR/tensorboard/``.

Tags: ``distill/<key>`` per outer iteration (step = iteration), ``experts/<i>/<key>`` per
expert epoch (step = epoch), ``evaluate/<set>/<model>/<key>`` per evaluation result (step =
the distillation iterations behind the set). Written with
``torch.utils.tensorboard.SummaryWriter``, which needs the ``tensorboard`` package
(``pip install 'distillkit[tensorboard]'``). View with ``tensorboard --logdir RUN_DIR/tensorboard``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from distillkit.errors import ConfigError
from distillkit.hookspecs import hookimpl
from distillkit_plugins.trackers import metric_prefix, require, run_dir_of

if TYPE_CHECKING:
    from distillkit.context import CloseContext, MetricsContext, RunContext


class TensorBoard:
    """Every metric of a run as TensorBoard scalars under RUN_DIR/tensorboard/ (the tensorboard extra)."""

    name: ClassVar[str] = "tensorboard"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        #: Seconds between flushes of the event file to disk (it is always flushed at the end).
        flush_secs: int = 30

        def __post_init__(self) -> None:
            if self.flush_secs < 1:
                raise ConfigError(f"tensorboard.flush_secs must be >= 1, got {self.flush_secs}")

    config_defaults: ClassVar[dict[str, object]] = {}

    def __init__(self, config: Config) -> None:
        require(self.name, "tensorboard")
        self.config = config
        self.writer: Any = None

    @hookimpl
    def on_metrics(self, run: RunContext, ctx: MetricsContext) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            logdir = run_dir_of(self.name, ctx) / "tensorboard"
            self.writer = SummaryWriter(str(logdir), flush_secs=self.config.flush_secs)
        prefix = metric_prefix(ctx)
        for key, value in ctx.values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, ctx.step)

    @hookimpl
    def on_close(self, run: RunContext, ctx: CloseContext) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
