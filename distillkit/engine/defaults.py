"""Core default hook implementations (registered as ``distillkit.core``, always last).

Only ``init_synthetic`` and ``sample_segment`` need a default: the other hooks are reduced by sum or
product, whose empty values (no loss terms, weight 1, zero delta) are the
baseline MTT behaviour.
"""

from __future__ import annotations

from typing import Any

from distillkit.context import InitContext, Segment, SegmentContext, SyntheticInit
from distillkit.errors import DataError
from distillkit.hookspecs import hookimpl


@hookimpl(trylast=True)
def init_synthetic(run: Any, ctx: InitContext) -> SyntheticInit:
    """``ipc`` real training images per class, drawn at random with the run's generator."""
    import torch  # imported here so that building a PluginHost stays torch-free

    images, labels = [], []
    for c in range(ctx.num_classes):
        pool = (ctx.train_labels == c).nonzero().flatten()
        if len(pool) < ctx.ipc:
            raise DataError(
                f"class {ctx.class_names[c]!r} has {len(pool)} training images, fewer than ipc={ctx.ipc}",
                hint="lower --ipc",
            )
        order = torch.randperm(len(pool), generator=run.generator, device=run.generator.device)
        chosen = pool[order[: ctx.ipc].cpu()]
        images.append(ctx.train_images[chosen].clone())
        labels.append(torch.full((ctx.ipc,), c, dtype=torch.long))
    return SyntheticInit(torch.cat(images), torch.cat(labels), source="random-real")


@hookimpl(trylast=True)
def sample_segment(run: Any, ctx: SegmentContext) -> Segment:
    """An expert, then t in 0 … T⁺ − 1, uniform, in that order (the draws every earlier run made)."""
    expert = ctx.randint(ctx.experts)
    return Segment(expert, ctx.randint(ctx.max_start_epoch), source="uniform")
