"""The hook specifications of distillkit (pluggy project name ``distillkit``).

Rules every hook follows:

* it is called with two keyword arguments, ``run`` and ``ctx``;
* call order never changes results: collected hooks are reduced by sum or
  product; replace-style hooks are ``firstresult`` *and exclusive* (at most one
  selected plugin may implement them); observer hooks (``on_metrics``,
  ``on_close``) change nothing: their answers are ignored;
* implementations must not give their parameters default values (pluggy never
  passes a parameter that has one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import torch

    from distillkit.context import (
        CloseContext,
        ExpertOptimContext,
        ExpertStepContext,
        ExpertStepResult,
        InitContext,
        InnerLossContext,
        LabelInitContext,
        LossScale,
        LossTerm,
        MatchContext,
        MetricsContext,
        PerturbContext,
        RunContext,
        Segment,
        SegmentContext,
        SoftLabels,
        SyntheticInit,
    )

PROJECT = "distillkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Hooks of the expert stage: a plugin implementing one changes the trajectories, so it is
#: part of an expert store's key.
EXPERT_HOOKS: frozenset[str] = frozenset({"expert_loss", "expert_step"})

#: Replace-style hooks: at most one selected plugin may implement them.
EXCLUSIVE_HOOKS: frozenset[str] = frozenset(
    {"init_synthetic", "init_labels", "sample_segment", "expert_step"}
)

# -- expert stage ----------------------------------------------------------------


@hookspec
def expert_loss(
    run: RunContext, ctx: ExpertStepContext
) -> LossTerm | LossScale | list[LossTerm | LossScale] | None:
    """Add terms to (or scale) the loss of one expert-training step.

    Fires on every mini-batch of ``distillkit experts``. The step loss is
    ``base_loss · ∏ LossScale.factor + Σ LossTerm.value`` over all plugins.

    :return: loss terms and/or scale factors, or ``None`` to leave the loss alone.
    """


@hookspec(firstresult=True)
def expert_step(run: RunContext, ctx: ExpertOptimContext) -> ExpertStepResult | None:
    """Replace ``loss.backward(); optimizer.step()`` of one expert-training step.

    Fires on every mini-batch of ``distillkit experts``, after ``expert_loss``. Exclusive:
    at most one selected plugin may implement it. The plugin back-propagates (possibly
    several times, through ``ctx.compute_loss()``) and calls ``ctx.optimizer.step()``.

    :return: an :class:`~distillkit.context.ExpertStepResult` (its values are logged per
        epoch), or ``None`` to let the core take the plain step.
    """


# -- distillation stage ------------------------------------------------------------


@hookspec(firstresult=True)
def init_synthetic(run: RunContext, ctx: InitContext) -> SyntheticInit | None:
    """Choose the initial synthetic images and labels.

    Fires once before distillation. Exclusive: at most one selected plugin may
    implement it; the core default (``ipc`` random real images per class) answers last.

    :return: a :class:`~distillkit.context.SyntheticInit`, or ``None`` to defer.
    """


@hookspec(firstresult=True)
def init_labels(run: RunContext, ctx: LabelInitContext) -> SoftLabels | None:
    """Give the synthetic set soft labels: logits per image, fixed or learned with the images.

    Fires once when distillation starts, after ``init_synthetic`` (and again on a resume,
    where the checkpointed labels then replace the answer's tensor). Exclusive: at most one
    selected plugin may implement it. With no answer the set keeps its hard labels. With an
    answer every inner step's loss is the soft cross-entropy
    −Σ_c softmax(logits)_c · log softmax(f(x))_c; ``lr > 0`` makes the logits a parameter of
    the outer optimisation (momentum SGD); the logits are saved with the set and used by
    evaluation with the same loss.

    :return: :class:`~distillkit.context.SoftLabels`, or ``None`` to keep hard labels.
    """


@hookspec(firstresult=True)
def sample_segment(run: RunContext, ctx: SegmentContext) -> Segment | None:
    """Choose the expert and start epoch t of this outer iteration.

    Fires once per outer iteration (again on a retry after a rollback). Exclusive: at
    most one selected plugin may implement it; the core default (expert, then t uniform
    in 0 … T⁺ − 1, both with ``ctx.randint``) answers last. Draw random numbers only
    through ``ctx.randint``/``ctx.generator`` so resumes and rollbacks replay them. The
    core checks the answer: ``0 ≤ expert < ctx.experts``, ``0 ≤ start_epoch`` and
    ``start_epoch + ctx.expert_epochs ≤ ctx.epochs_available[expert]``.

    :return: a :class:`~distillkit.context.Segment`, or ``None`` to defer.
    """


@hookspec
def inner_loss_weight(run: RunContext, ctx: InnerLossContext) -> float | None:
    """Weight the student's inner-loop loss for this outer iteration.

    Fires once per outer iteration, after the start epoch is drawn. Factors of all
    plugins multiply (core default 1).
    """


@hookspec
def perturb_expert(run: RunContext, ctx: PerturbContext) -> torch.Tensor | None:
    """Return a delta to add to the expert start point θ*_t.

    Fires once per outer iteration. Each delta is computed from the unperturbed
    start; the student begins at ``start + Σ deltas``.
    """


@hookspec
def intermediate_match(run: RunContext, ctx: MatchContext) -> LossTerm | list[LossTerm] | None:
    """Add matching-loss terms on the student's intermediate parameters.

    Fires once per outer iteration after the unroll; the terms are added to the
    normalised parameter-matching loss and back-propagated with it.
    """


# -- observers (experiment trackers) ---------------------------------------------------


@hookspec
def on_metrics(run: RunContext, ctx: MetricsContext) -> None:
    """Observe one record of numbers: an expert epoch, a distillation iteration, an evaluation result.

    Fires after the record is written to the run's own files (the store's history,
    ``metrics.jsonl``, ``results.json``), in stage order. Every implementation is
    called and the answer is ignored; ``run`` is a context of its own (its generator
    and ``log`` drive nothing). A plugin that raises here is reported by name and gets
    no further observer calls in that command; the run itself carries on unchanged.
    """


@hookspec
def on_close(run: RunContext, ctx: CloseContext) -> None:
    """The command that reported metrics ends (finished, failed or interrupted): flush and close.

    Fires once per ``run``, ``distill`` or ``experts`` command, after its last ``on_metrics``,
    also when it stops with an error. Answers are ignored; a raising plugin is reported.
    """
