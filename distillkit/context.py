"""What hooks receive and return.

Every hook gets two keyword arguments: ``run`` (a :class:`RunContext`, the same
object for the whole run) and ``ctx`` (a frozen per-hook dataclass). New
information is added as new *fields*, never as new arguments, so plugins written
today keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

    from distillkit.config import RunConfig
    from distillkit.data.pixels import Images


@dataclass(frozen=True, slots=True)
class ParamSlot:
    """One parameter tensor inside the flat parameter vector ``theta[offset:offset+numel]``."""

    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int


@dataclass(slots=True)
class RunContext:
    """Run-wide state handed to every hook.

    ``generator`` lives on ``device``: plugins that draw random numbers must use it
    so that one seed reproduces the whole run. ``log(name, value)`` records a metric
    (floats or 0-dim tensors; tensors are detached lazily).
    """

    config: RunConfig
    device: torch.device
    generator: torch.Generator
    out_dir: Path | None
    plugin_configs: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str, Any], None] = lambda name, value: None

    def plugin_config(self, name: str) -> Any:
        """Return the resolved ``Config`` instance of the plugin called ``name``."""
        return self.plugin_configs[name]


@dataclass(frozen=True, slots=True)
class LossTerm:
    """An additive loss term named for the metrics (``loss/<name>``); ``value`` is a 0-dim tensor."""

    name: str
    value: torch.Tensor


@dataclass(frozen=True, slots=True)
class LossScale:
    """A factor on the base cross-entropy of an expert step (factors of all plugins multiply)."""

    name: str
    factor: float


@dataclass(frozen=True, slots=True)
class ExpertStepContext:
    """One mini-batch step of expert training (``expert_loss``).

    ``images`` is the augmented batch the base loss uses; ``raw_images`` the same
    batch before augmentation; ``logits`` the model output on ``images``.
    ``epoch`` counts from 0; ``step`` is the step index within the epoch.
    """

    model: nn.Module
    images: torch.Tensor
    raw_images: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    base_loss: torch.Tensor
    epoch: int
    step: int
    steps_per_epoch: int
    total_epochs: int


@dataclass(frozen=True, slots=True)
class ExpertOptimContext:
    """The parameter update of one expert-training step (``expert_step``).

    ``loss`` is the step's loss, already computed (graph attached, no backward yet);
    ``compute_loss()`` evaluates the same loss again at the model's current weights, on the
    same augmented batch with the same ``expert_loss`` terms and no new random draws, so a
    plugin can take a second forward/backward at perturbed weights. Gradients are zeroed
    before the hook; the plugin calls ``backward`` and ``optimizer.step()`` itself.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    compute_loss: Callable[[], torch.Tensor]
    loss: torch.Tensor
    epoch: int
    step: int
    steps_per_epoch: int
    total_epochs: int


@dataclass(frozen=True, slots=True)
class ExpertStepResult:
    """What an ``expert_step`` plugin did: ``values`` go to the expert history as ``<name>/<key>``."""

    name: str
    values: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class SyntheticInit:
    """Initial synthetic set: ``images`` [n, C, H, W] in the dataset's (normalised) space, ``labels`` [n]."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str


@dataclass(frozen=True, slots=True)
class InitContext:
    """Everything needed to choose the initial synthetic images (``init_synthetic``).

    ``train_images``/``train_labels`` are the whole (preprocessed) training set on
    the CPU. The images are a float tensor or, without ZCA, 8-bit pixels normalised
    per access (:class:`~distillkit.data.pixels.NormalisedPixels`, a quarter of the
    memory): either way ``train_images[index]`` (int, slice, index tensor, boolean
    mask) is a float tensor. Treat it as read-only (from a plain tensor an int or a
    slice gives a view) and select per class rather than materialising the whole set.
    ``expert_params(e)`` returns the flat parameters of the first expert
    after ``e`` epochs (``-1`` = last); ``make_model()`` builds a fresh network of
    the run's architecture and ``load_flat(model, theta)`` copies a flat vector
    into it.
    """

    train_images: Images
    train_labels: torch.Tensor
    num_classes: int
    ipc: int
    class_names: tuple[str, ...]
    expert_params: Callable[[int], torch.Tensor]
    expert_epochs_available: int
    make_model: Callable[[], nn.Module]
    load_flat: Callable[[nn.Module, torch.Tensor], None]


@dataclass(frozen=True, slots=True)
class SoftLabels:
    """Soft labels of the synthetic set (``init_labels``).

    ``logits`` [n, classes]: the label of image i is softmax(logits[i]). ``lr`` > 0 learns
    them with the images (SGD with ``momentum``); 0 keeps them fixed. ``source`` names how
    they were made (recorded with the set).
    """

    logits: torch.Tensor
    lr: float
    momentum: float
    source: str


@dataclass(frozen=True, slots=True)
class LabelInitContext:
    """The initial synthetic set and the experts, for choosing soft labels (``init_labels``).

    ``images`` [n, C, H, W] (detached, on the run's device) and their hard ``labels`` [n].
    ``expert_params(e, epoch)`` returns the flat parameters of expert ``e`` after ``epoch``
    epochs (``-1`` = the last held, ``epochs_held[e]``); ``predict(theta, images)`` returns the
    logits of the run's network with flat parameters ``theta`` (no graph, batched).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    experts: int
    epochs_held: tuple[int, ...]
    expert_params: Callable[[int, int], torch.Tensor]
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class Segment:
    """The expert trajectory and start epoch t one outer iteration matches; ``source`` names who chose it."""

    expert: int
    start_epoch: int
    source: str


@dataclass(frozen=True, slots=True)
class SegmentContext:
    """What a segment sampler may use (``sample_segment``).

    ``experts`` is the number of expert trajectories; ``epochs_available[e]`` the latest
    epoch held for expert ``e`` (a segment needs ``start_epoch + expert_epochs`` ≤ it);
    ``max_start_epoch`` is the config's T⁺. ``randint(high)`` draws one integer in
    ``0 … high − 1`` from ``generator`` (the run's, per rank), so one seed reproduces the run.
    """

    iteration: int
    total_iterations: int
    experts: int
    epochs_available: tuple[int, ...]
    max_start_epoch: int
    expert_epochs: int
    generator: torch.Generator

    def randint(self, high: int) -> int:
        """One uniform integer in ``0 … high − 1`` from the run's generator."""
        import torch

        g = self.generator
        return int(torch.randint(high, (1,), generator=g, device=g.device).item())


@dataclass(frozen=True, slots=True)
class InnerLossContext:
    """The sampled segment of one outer iteration (``inner_loss_weight``)."""

    iteration: int
    start_epoch: int
    max_start_epoch: int
    expert_epochs: int
    syn_steps: int


@dataclass(frozen=True, slots=True)
class PerturbContext:
    """The sampled expert start point of one outer iteration (``perturb_expert``).

    ``start`` is the unperturbed flat vector θ*_t; return a delta of the same
    shape. ``layout`` maps the flat vector back to named tensors.
    """

    iteration: int
    start: torch.Tensor
    start_epoch: int
    layout: tuple[ParamSlot, ...]


@dataclass(frozen=True, slots=True)
class MatchContext:
    """The unrolled student of one outer iteration (``intermediate_match``).

    ``student_params[n]`` is θ̂ after ``n`` inner steps (``n = 0..syn_steps``),
    still attached to the autograd graph. ``expert_params(k)`` returns θ*_{t+k}
    for ``k = 0..expert_epochs``. ``start`` is the (perturbed) start the student
    began from; ``unperturbed_start`` is θ*_t itself; ``reference`` is the one of
    the two that every matching denominator uses (the core's ``distill.match_denominator``:
    θ*_t by default, the perturbed start as in the official AST code). ``distance(a, b, ref)``
    is the normalised ‖a − b‖² / ‖ref − b‖² used by the core.
    """

    iteration: int
    start_epoch: int
    expert_epochs: int
    syn_steps: int
    student_params: tuple[torch.Tensor, ...]
    expert_params: Callable[[int], torch.Tensor]
    start: torch.Tensor
    unperturbed_start: torch.Tensor
    reference: torch.Tensor
    distance: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


#: The stages that report metrics (``MetricsContext.stage``).
Stage = Literal["experts", "distill", "evaluate"]


@dataclass(frozen=True, slots=True)
class MetricsContext:
    """One record of numbers for observers such as experiment trackers (``on_metrics``).

    ``stage`` "experts": one expert epoch, ``step`` the 0-based epoch, ``expert`` its index,
    ``values`` that epoch's history row (loss, ce, train_acc, loss/<term>, test_acc when tested).
    ``stage`` "distill": one outer iteration, ``step`` its 0-based index, ``expert`` the expert
    drawn, ``values`` the numbers of its ``metrics.jsonl`` line (terms as ``terms/<name>``).
    ``stage`` "evaluate": one evaluation result, ``subject`` "<set>/<model>", ``step`` the
    distillation iterations behind the set, ``values`` mean, std and ``run/<k>`` accuracies.
    ``run_dir`` is where a run writes its files (``None`` for commands that have none).
    """

    stage: Stage
    step: int
    values: Mapping[str, float]
    run_dir: Path | None
    expert: int | None = None
    subject: str = ""


@dataclass(frozen=True, slots=True)
class CloseContext:
    """The end of a command that reported metrics (``on_close``): flush and close writers.

    ``status`` is "finished", "failed" (an error stops it) or "interrupted" (Ctrl-C/SIGTERM;
    the run can be resumed, and then reports from its checkpoint on).
    """

    run_dir: Path | None
    status: Literal["finished", "failed", "interrupted"]
