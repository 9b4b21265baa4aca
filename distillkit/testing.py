"""A kit for plugin authors: each hook's context on tiny tensors, and a smoke run of a plugin.

Unit tests call a hook method directly with these contexts and check its answer
against a formula; :func:`check_hooks` also passes every hook the plugin
implements through the core's own combiners (:mod:`distillkit.hookcalls`), so an
answer the engine would refuse fails the test with the same message a run would
give. :func:`run_plugin_smoke` runs the plugin end to end on sklearn digits with
a budget of seconds. Nothing here is mocked: the contexts hold real tensors and a
real (tiny) network, and the smoke run is a real ``distillkit run``.

    from distillkit.testing import check_hooks, run_plugin_smoke, tiny_run

    def test_my_plugin_answers_every_hook_validly():
        check_hooks(MyPlugin(MyPlugin.Config()))

    def test_my_plugin_runs(tmp_path):
        summary = run_plugin_smoke(MyPlugin(MyPlugin.Config()), tmp_path)
        assert 0 <= summary["distilled"]["mean"] <= 1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distillkit.config import RunConfig
from distillkit.context import (
    CloseContext,
    ExpertStepContext,
    InitContext,
    InnerLossContext,
    LabelInitContext,
    MatchContext,
    MetricsContext,
    PerturbContext,
    RunContext,
    SegmentContext,
)
from distillkit.engine.unroll import normalised_distance
from distillkit.hookcalls import (
    combine_deltas,
    combine_expert_loss,
    combine_terms,
    combine_weights,
    first_init,
    first_labels,
    first_segment,
)
from distillkit.models.flat import flatten_params, load_flat, param_layout

#: The shape of the tiny images every context here uses: [channels, height, width].
IMAGE_SHAPE = (1, 4, 4)
CLASSES = 3

#: A digits run that takes seconds: what :func:`run_plugin_smoke` distils with.
SMOKE_BUDGET: dict[str, Any] = {
    "experts.count": 1,
    "experts.epochs": 3,
    "distill.max_start_epoch": 1,
    "distill.syn_steps": 4,
    "distill.iterations": 3,
    "evaluate.runs": 1,
    "evaluate.epochs": 5,
    "device": "cpu",
}


class TinyNet(nn.Module):
    """Conv → ReLU → pool → Linear on 1×4×4 images, with ``embed`` (pre-FC features) like the ConvNets."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.conv = nn.Conv2d(IMAGE_SHAPE[0], 4, 3, padding=1)
        self.classifier = nn.Linear(16, classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def tiny_run(seed: int = 0, config: RunConfig | None = None) -> tuple[RunContext, dict[str, Any]]:
    """A CPU ``RunContext`` and the dict its ``run.log(name, value)`` writes into."""
    logged: dict[str, Any] = {}
    run = RunContext(
        config=config or RunConfig(),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        out_dir=None,
        log=logged.__setitem__,
    )
    return run, logged


def tiny_net(seed: int = 0) -> TinyNet:
    """A :class:`TinyNet` with seeded weights."""
    torch.manual_seed(seed)
    return TinyNet()


def expert_step_context(batch: int = 8, epoch: int = 0, seed: int = 0) -> ExpertStepContext:
    """One expert-training step of a :class:`TinyNet` on a random batch (``expert_loss``)."""
    g = torch.Generator().manual_seed(seed)
    model = tiny_net(seed)
    raw = torch.randn(batch, *IMAGE_SHAPE, generator=g)
    images = raw + 0.1 * torch.randn(raw.shape, generator=g)  # stands in for the augmented batch
    labels = torch.randint(CLASSES, (batch,), generator=g)
    logits = model(images)
    return ExpertStepContext(
        model=model,
        images=images,
        raw_images=raw,
        labels=labels,
        logits=logits,
        base_loss=F.cross_entropy(logits, labels),
        epoch=epoch,
        step=0,
        steps_per_epoch=1,
        total_epochs=max(epoch + 1, 2),
    )


def init_context(ipc: int = 1, per_class: int = 10, seed: int = 0) -> InitContext:
    """A 3-class training set of 1×4×4 images and a :class:`TinyNet` expert (``init_synthetic``)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat(per_class)
    images = torch.randn(CLASSES, *IMAGE_SHAPE, generator=g)[labels]
    images = images + 0.5 * torch.randn(len(labels), *IMAGE_SHAPE, generator=g)
    expert = flatten_params(tiny_net(seed)).detach()
    return InitContext(
        train_images=images,
        train_labels=labels,
        num_classes=CLASSES,
        ipc=ipc,
        class_names=tuple(f"class {c}" for c in range(CLASSES)),
        expert_params=lambda epoch: expert.clone(),
        expert_epochs_available=1,
        make_model=TinyNet,
        load_flat=load_flat,
    )


def label_context(ipc: int = 1, experts: int = 2, epochs: int = 2, seed: int = 0) -> LabelInitContext:
    """``ipc`` images per class and ``experts`` TinyNet trajectories, epochs 0..``epochs`` (``init_labels``).

    Expert e at epoch k is a seeded TinyNet moved by k small random steps, so experts and
    epochs differ; ``predict`` runs a real TinyNet with the given flat parameters.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat_interleave(ipc)
    images = torch.randn(len(labels), *IMAGE_SHAPE, generator=g)
    trajectories = []
    for e in range(experts):
        start = flatten_params(tiny_net(seed + e)).detach()
        steps = 0.1 * torch.randn(epochs, *start.shape, generator=g)
        trajectories.append(torch.cat([start[None], start + steps.cumsum(0)]))

    def expert_params(expert: int, epoch: int) -> torch.Tensor:
        return trajectories[expert][epochs if epoch == -1 else epoch].clone()

    def predict(theta: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        model = TinyNet()
        load_flat(model, theta)
        with torch.no_grad():
            return model.eval()(batch)

    return LabelInitContext(
        images=images,
        labels=labels,
        num_classes=CLASSES,
        experts=experts,
        epochs_held=(epochs,) * experts,
        expert_params=expert_params,
        predict=predict,
    )


def segment_context(iteration: int = 0, experts: int = 2, epochs: int = 30, seed: int = 0) -> SegmentContext:
    """``experts`` trajectories holding epochs 0..``epochs``, T⁺ 5, M 2 (``sample_segment``)."""
    generator = torch.Generator().manual_seed(seed)
    return SegmentContext(iteration, 100, experts, (epochs,) * experts, 5, 2, generator)


def inner_loss_context(start_epoch: int = 0, max_start_epoch: int = 5) -> InnerLossContext:
    """An outer iteration starting at ``start_epoch`` (``inner_loss_weight``)."""
    return InnerLossContext(0, start_epoch, max_start_epoch, expert_epochs=2, syn_steps=4)


def perturb_context(seed: int = 0) -> PerturbContext:
    """A :class:`TinyNet`'s flat parameters as the expert start, with their layout (``perturb_expert``)."""
    model = tiny_net(seed)
    return PerturbContext(0, flatten_params(model).detach(), 0, param_layout(model))


def match_context(syn_steps: int = 4, expert_epochs: int = 2, seed: int = 0) -> MatchContext:
    """A student unrolled ``syn_steps`` steps beside an expert segment (``intermediate_match``)."""
    g = torch.Generator().manual_seed(seed)
    start = flatten_params(tiny_net(seed)).detach()
    experts = [start + 0.1 * k * torch.randn(start.shape, generator=g) for k in range(expert_epochs + 1)]
    students = tuple(
        (start + 0.05 * n * torch.randn(start.shape, generator=g)).requires_grad_(True)
        for n in range(syn_steps + 1)
    )
    return MatchContext(
        iteration=0,
        start_epoch=0,
        expert_epochs=expert_epochs,
        syn_steps=syn_steps,
        student_params=students,
        expert_params=experts.__getitem__,
        start=start,
        unperturbed_start=start,
        reference=start,
        distance=normalised_distance,
    )


def metrics_contexts(run_dir: Path | None = None) -> list[MetricsContext]:
    """A record of each stage in run order: an expert epoch, an iteration, a result (``on_metrics``)."""
    return [
        MetricsContext("experts", 0, {"loss": 2.0, "ce": 2.0, "train_acc": 0.25}, run_dir, expert=0),
        MetricsContext(
            "distill",
            0,
            {"loss": 0.9, "match_loss": 0.9, "alpha": 0.01, "start_epoch": 0, "terms/x": 0.1},
            run_dir,
            expert=0,
        ),
        MetricsContext(
            "evaluate",
            1,
            {"mean": 0.5, "std": 0.1, "run/0": 0.4, "run/1": 0.6},
            run_dir,
            subject="distilled/tinynet",
        ),
    ]


def close_context(run_dir: Path | None = None, status: str = "finished") -> CloseContext:
    """The end of a command (``on_close``)."""
    return CloseContext(run_dir, status)  # type: ignore[arg-type]


def check_hooks(plugin: Any, seed: int = 0, run_dir: Path | None = None) -> dict[str, Any]:
    """Call every hook ``plugin`` implements on these contexts and combine it as the core does.

    Returns ``{hook name: combined result}``; a result the engine would refuse raises the
    same :class:`~distillkit.errors.PluginRuntimeError` a run would. A replace-style hook that
    defers (answers ``None``: the core default, or hard labels for ``init_labels`` on
    :func:`label_context`) has the entry ``None``. Observer hooks
    (``on_metrics`` with :func:`metrics_contexts`, then ``on_close``; ``run_dir`` is their
    run directory) combine nothing: their entry is ``None``, and what they raise propagates.
    """
    name = getattr(plugin, "name", type(plugin).__name__)
    implemented = _registered_hooks(plugin, name)
    run, _logged = tiny_run(seed)
    done: dict[str, Any] = {}
    if "expert_loss" in implemented:
        ctx = expert_step_context(seed=seed)
        done["expert_loss"] = combine_expert_loss(
            ctx.base_loss, _answer(name, implemented["expert_loss"](run, ctx))
        )[0]
    if "init_synthetic" in implemented:
        ctx = init_context(seed=seed)
        shape, count = ctx.train_images.shape[1:], ctx.ipc * CLASSES
        answer = _answer(name, implemented["init_synthetic"](run, ctx))
        done["init_synthetic"] = first_init(answer, count, shape, CLASSES) if answer else None
    if "init_labels" in implemented:
        ctx = label_context(seed=seed)
        found = first_labels(_answer(name, implemented["init_labels"](run, ctx)), len(ctx.images), CLASSES)
        done["init_labels"] = found[1] if found else None
    if "sample_segment" in implemented:
        ctx = segment_context(seed=seed)
        answer = _answer(name, implemented["sample_segment"](run, ctx))
        done["sample_segment"] = first_segment(answer, ctx) if answer else None
    if "inner_loss_weight" in implemented:
        done["inner_loss_weight"] = combine_weights(
            _answer(name, implemented["inner_loss_weight"](run, inner_loss_context()))
        )
    if "perturb_expert" in implemented:
        ctx = perturb_context(seed)
        done["perturb_expert"] = combine_deltas(
            _answer(name, implemented["perturb_expert"](run, ctx)), ctx.start
        )
    if "intermediate_match" in implemented:
        ctx = match_context(seed=seed)
        done["intermediate_match"] = combine_terms(
            _answer(name, implemented["intermediate_match"](run, ctx)), ctx.start.device
        )
    if "on_metrics" in implemented:
        for ctx in metrics_contexts(run_dir):
            implemented["on_metrics"](run, ctx)
        done["on_metrics"] = None
    if "on_close" in implemented:
        implemented["on_close"](run, close_context(run_dir))
        done["on_close"] = None
    return done


def _registered_hooks(plugin: Any, name: str) -> dict[str, Any]:
    """The plugin's hooks as pluggy sees them, each callable as ``(run, ctx)``.

    Registering it with a real plugin manager catches what a run would: a misspelt hook,
    wrong argument names; a hook-named method without ``@hookimpl`` would be ignored by
    a run, so it is an error here.
    """
    import pluggy

    from distillkit import hookspecs
    from distillkit.errors import PluginError

    pm = pluggy.PluginManager("distillkit")
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin '{name}': {exc}") from None
    callers = {caller.name: caller for caller in pm.get_hookcallers(plugin) or []}
    hooks = [h for h in dir(pm.hook) if not h.startswith("_")]
    unmarked = [h for h in hooks if h not in callers and callable(getattr(plugin, h, None))]
    if unmarked:
        raise PluginError(
            f"plugin '{name}': {', '.join(unmarked)} is not marked @hookimpl, so a run never calls it",
            hint="decorate it with distillkit.hookspecs.hookimpl",
        )
    return {
        hook: (lambda run, ctx, caller=caller: _only(caller(run=run, ctx=ctx)))
        for hook, caller in callers.items()
    }


def _only(results: Any) -> Any:
    """The one plugin's answer from a pluggy call (a list, or the value of a ``firstresult`` hook)."""
    if isinstance(results, list):
        return results[0] if results else None
    return results


def _answer(name: str, result: Any) -> list[tuple[str, Any]]:
    return [] if result is None else [(name, result)]


def run_plugin_smoke(plugin: Any, out_dir: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A real ``distillkit run`` on sklearn digits with ``plugin`` selected, in seconds; its summary.

    ``plugin`` is a ready-made instance (no entry point needed). ``overrides`` are
    extra config keys (``<plugin>.<key>`` options included) on top of :data:`SMOKE_BUDGET`.
    """
    from distillkit import api
    from distillkit.resolve import resolve_config

    config, host = resolve_config(overrides={**SMOKE_BUDGET, **(overrides or {})}, extra_plugins=[plugin])
    return api.run(config, host, Path(out_dir) / "run")
