"""The contract every model keeps: ``embed`` gives pre-head features, ``classifier`` maps them to logits.

Representative initialisation (``kmeans-init``) and herding read ``embed``; the
engine only calls ``forward``.
"""

from __future__ import annotations

from torch import Tensor, nn


class EmbedClassifier(nn.Module):
    """``forward(x) = classifier(embed(x))``; subclasses define ``embed`` and ``classifier``."""

    classifier: nn.Linear

    def embed(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class SequentialFeatures(EmbedClassifier):
    """A model whose features are one ``nn.Sequential`` called ``features``, flattened before the head."""

    features: nn.Sequential

    def embed(self, x: Tensor) -> Tensor:
        """Flattened features right before the head, shape ``[B, F]``."""
        return self.features(x).flatten(1)
