"""``herding-init``: initialise the synthetic set by herding (Welling, ICML 2009).

Per class c with expert features φ(x) and class mean μ_c, herding picks real
samples greedily so that the running mean of the picks tracks μ_c:

    x_k = argmin_{x ∉ S} ‖ μ_c − (Σ_{s ∈ S} φ(s) + φ(x)) / k ‖₂,   k = 1 … ipc

The first pick is the sample nearest the class mean. This is the "Herding"
coreset baseline of the DC / MTT / AST tables, here used as the starting point
of distillation instead of random real images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from distillkit.context import SyntheticInit
from distillkit.errors import ConfigError, DataError
from distillkit.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch
    from distillkit.context import InitContext, RunContext

__version__ = "0.1.0"

FEATURES = ("embed", "logits")
#: Images per forward pass when embedding the training set.
BATCH = 512


def herding(features: torch.Tensor, count: int) -> list[int]:
    """Indices of ``count`` distinct rows of ``features`` [n, d] chosen by greedy herding."""
    import torch

    mean = features.mean(0)
    total = torch.zeros_like(mean)
    available = torch.ones(len(features), dtype=torch.bool, device=features.device)
    picks: list[int] = []
    for k in range(1, count + 1):
        gap = torch.linalg.vector_norm(mean - (total + features) / k, dim=1)
        gap[~available] = torch.inf
        i = int(gap.argmin())
        picks.append(i)
        available[i] = False
        total += features[i]
    return picks


def embed(
    model: torch.nn.Module, images: torch.Tensor, features: str, device: torch.device
) -> torch.Tensor:
    """Float64 features [n, d] of ``images``, pre-classifier (``model.embed``) or logits."""
    import torch

    chunks = []
    with torch.no_grad():
        for batch in images.split(BATCH):
            x = batch.to(device)
            chunks.append((model.embed(x) if features == "embed" else model(x)).flatten(1))
    return torch.cat(chunks).double()


class HerdingInit:
    """Replace the random-real initialisation with per-class herding on expert features."""

    name: ClassVar[str] = "herding-init"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """Options of ``herding-init`` (``--set herding-init.<key>=<value>``)."""

        #: "embed" = features before the classifier; "logits" = network outputs.
        features: str = "embed"

        def __post_init__(self) -> None:
            if self.features not in FEATURES:
                raise ConfigError(
                    f"herding-init.features must be one of {', '.join(FEATURES)}, "
                    f"got '{self.features}'"
                )

    config_defaults: ClassVar[dict[str, object]] = {}

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def init_synthetic(self, run: RunContext, ctx: InitContext) -> SyntheticInit:
        """Embed each class with the first expert's final parameters and herd ``ipc`` images."""
        import torch

        model = ctx.make_model()
        ctx.load_flat(model, ctx.expert_params(-1))
        model.to(run.device).eval()
        chosen = []
        for c in range(ctx.num_classes):
            index = (ctx.train_labels == c).nonzero().flatten()
            if len(index) < ctx.ipc:
                raise DataError(
                    f"herding-init: class {c} has {len(index)} training images, "
                    f"fewer than ipc={ctx.ipc}"
                )
            feats = embed(model, ctx.train_images[index], self.config.features, run.device)
            chosen.append(index[herding(feats, ctx.ipc)])
        images = ctx.train_images[torch.cat(chosen)]  # index tensor: a fresh copy, not a view
        labels = torch.arange(ctx.num_classes).repeat_interleave(ctx.ipc)
        return SyntheticInit(images=images, labels=labels, source="herding-init")
