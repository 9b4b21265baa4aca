"""``wandb``: every metric of a run in a Weights & Biases run, offline by default (``RUN_DIR/wandb/``).

Keys as the ``tensorboard`` plugin's tags (``distill/loss``, ``experts/0/test_acc``,
``evaluate/distilled/convnet/mean``), each group with its own x axis ``<group>/step``
(``define_metric``), so expert epochs and distillation iterations do not share one step
counter. ``wandb.mode`` "offline" (the default) writes the run under ``RUN_DIR/wandb/`` and
never touches the network (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it later);
"online" streams it to the server (log in first: ``wandb login``). The run's config is the
run's resolved ``RunConfig``. Needs ``pip install 'distillkit[wandb]'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from distillkit.config import check_choices
from distillkit.hookspecs import hookimpl
from distillkit_plugins.trackers import metric_prefix, require, run_dir_of

if TYPE_CHECKING:
    from distillkit.context import CloseContext, MetricsContext, RunContext


class WandB:
    """Every metric of a run in one wandb run, by default offline under RUN_DIR/wandb/ (the wandb extra)."""

    name: ClassVar[str] = "wandb"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        #: "offline" (files under RUN_DIR/wandb/, no network) or "online" (needs `wandb login`).
        mode: Literal["offline", "online"] = "offline"
        #: The wandb project the run belongs to.
        project: str = "distillkit"
        #: The wandb entity (user or team); empty: your default entity.
        entity: str = ""
        #: The run's display name; empty: wandb picks one.
        run_name: str = ""

        def __post_init__(self) -> None:
            check_choices(self, "wandb")

    config_defaults: ClassVar[dict[str, object]] = {}

    def __init__(self, config: Config) -> None:
        require(self.name, "wandb")
        self.config = config
        self.session: Any = None
        self.groups: set[str] = set()

    def _start(self, run: RunContext, ctx: MetricsContext) -> Any:
        import wandb

        from distillkit.config import to_dict

        cfg = self.config
        return wandb.init(
            project=cfg.project,
            entity=cfg.entity or None,
            name=cfg.run_name or None,
            dir=str(run_dir_of(self.name, ctx)),
            mode=cfg.mode,
            config=to_dict(run.config),
            settings=wandb.Settings(console="off"),  # distillkit's own output stays as it is
        )

    @hookimpl
    def on_metrics(self, run: RunContext, ctx: MetricsContext) -> None:
        if self.session is None:
            self.session = self._start(run, ctx)
        group = metric_prefix(ctx)
        if group not in self.groups:
            self.session.define_metric(f"{group}/step")
            self.session.define_metric(f"{group}/*", step_metric=f"{group}/step")
            self.groups.add(group)
        record = {f"{group}/{key}": value for key, value in ctx.values.items()}
        self.session.log({**record, f"{group}/step": ctx.step})

    @hookimpl
    def on_close(self, run: RunContext, ctx: CloseContext) -> None:
        if self.session is not None:
            self.session.finish(exit_code=0 if ctx.status == "finished" else 1)
            self.session, self.groups = None, set()
