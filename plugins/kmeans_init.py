"""``kmeans-init``: representative initialisation of the synthetic set (AST §3.2.1).

Per class, the real images are embedded by a trained expert, clustered with
K-Means, and the real images nearest to the centroids become the initial
synthetic images. Starting from representative samples instead of random ones
lowers the variance the random initialisation brings into distillation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from distillkit.config import check_choices
from distillkit.context import SyntheticInit
from distillkit.errors import ConfigError, DataError
from distillkit.hookspecs import hookimpl

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from distillkit.context import InitContext, RunContext

#: Images per forward pass when embedding the training set.
BATCH = 512


def cluster_sizes(ipc: int, clusters: int, max_clusters: int) -> list[int]:
    """How many images each centroid contributes; ``len`` is K, the sum is ``ipc``.

    ``clusters == 0`` (paper): K = ipc, capped at ``max_clusters`` (ipc 50 → 10
    clusters of 5, the paper's "10 sub-clusters, each selecting extra 4 points").
    ``clusters > 0`` (official code: 10): K is fixed; ``ipc < K`` would give
    ⌊ipc/K⌋ = 0 images, so the caller falls back to K = ipc. When K does not
    divide ipc the remainder goes to the first clusters (the official code would
    return only K·⌊ipc/K⌋ images and mismatch its labels).
    """
    k = min(ipc, max_clusters) if clusters == 0 else clusters
    k = min(k, ipc)
    base, extra = divmod(ipc, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def embed_class(model: nn.Module, images: torch.Tensor, features: str, device: torch.device) -> np.ndarray:
    """Features of ``images`` as a float32 array [n, d]: pre-FC ``model.embed`` or the logits."""
    import torch

    chunks = []
    with torch.no_grad():
        for batch in images.split(BATCH):
            x = batch.to(device)
            out = model.embed(x) if features == "embed" else model(x)
            chunks.append(out.flatten(1).float().cpu())
    return torch.cat(chunks).numpy()


class KMeansInit:
    """Real images nearest to per-class K-Means centroids of expert features (AST §3.2.1)."""

    name: ClassVar[str] = "kmeans-init"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """Options of §3.2.1; defaults are the paper's (official-code values in the comments)."""

        #: "embed" = features before the fully connected layer (paper); "logits" (code).
        features: Literal["embed", "logits"] = "embed"
        #: K; 0 = K chosen from ipc, i.e. min(ipc, max_clusters) (paper); the code fixes 10
        #: and takes ⌊ipc/10⌋ nearest images per centroid.
        clusters: int = 0
        #: cap on K when ``clusters = 0`` (paper: ipc 50 → 10 clusters).
        max_clusters: int = 10
        #: K-Means restarts (sklearn's ``n_init``; the code used that sklearn's default, 10).
        n_init: int = 10

        def __post_init__(self) -> None:
            check_choices(self, "kmeans-init")
            if self.clusters < 0:
                raise ConfigError(f"kmeans-init.clusters must be >= 0, got {self.clusters}")
            if self.max_clusters < 1:
                raise ConfigError(f"kmeans-init.max_clusters must be >= 1, got {self.max_clusters}")
            if self.n_init < 1:
                raise ConfigError(f"kmeans-init.n_init must be >= 1, got {self.n_init}")

    config_defaults: ClassVar[dict[str, object]] = {}

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def init_synthetic(self, run: RunContext, ctx: InitContext) -> SyntheticInit:
        """Cluster each class's expert features and take the real images nearest each centroid."""
        import torch
        from sklearn.cluster import KMeans

        cfg = self.config
        if cfg.clusters > 0 and ctx.ipc < cfg.clusters:
            warnings.warn(
                f"kmeans-init: clusters={cfg.clusters} with ipc={ctx.ipc} would select "
                f"⌊{ctx.ipc}/{cfg.clusters}⌋ = 0 images per centroid; using K = ipc = {ctx.ipc}",
                stacklevel=2,
            )
            run.log("kmeans-init/fallback", 1)
        sizes = cluster_sizes(ctx.ipc, cfg.clusters, cfg.max_clusters)
        run.log("kmeans-init/clusters", len(sizes))

        model = ctx.make_model()
        ctx.load_flat(model, ctx.expert_params(-1))
        model.to(run.device).eval()

        chosen: list[torch.Tensor] = []
        for c in range(ctx.num_classes):
            index = (ctx.train_labels == c).nonzero().flatten()
            if len(index) < ctx.ipc:
                raise DataError(
                    f"kmeans-init: class {c} has {len(index)} training images, fewer than ipc={ctx.ipc}"
                )
            feats = embed_class(model, ctx.train_images[index], cfg.features, run.device)
            kmeans = KMeans(n_clusters=len(sizes), random_state=run.config.seed, n_init=cfg.n_init)
            kmeans.fit(feats)
            distances = torch.from_numpy(kmeans.transform(feats))  # [n, K]
            taken = torch.zeros(len(index), dtype=torch.bool)
            for k, size in enumerate(sizes):
                order = distances[:, k].argsort(stable=True)
                picks = order[~taken[order]][:size]
                taken[picks] = True
                chosen.append(index[picks])

        images = ctx.train_images[torch.cat(chosen)]  # index tensor: a fresh copy, not a view
        labels = torch.arange(ctx.num_classes).repeat_interleave(ctx.ipc)
        return SyntheticInit(images=images, labels=labels, source="kmeans-init")
