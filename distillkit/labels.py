"""Hard and soft labels of a synthetic set, and the one loss both are trained with.

A set's labels are either class indices (a long tensor [n]) or soft-label logits (a
float tensor [n, classes], the label of image i being softmax(logits[i]), given by an
``init_labels`` plugin, fixed or learned). Distillation's inner loop and evaluation both
call :func:`label_loss`, so the two cannot disagree on what a soft label means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def is_soft(labels: torch.Tensor) -> bool:
    """True for soft-label logits [n, classes], False for class indices [n]."""
    return labels.is_floating_point()


def label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of network ``logits`` [b, classes] against hard or soft ``labels``.

    Soft: mean over the batch of −Σ_c softmax(labels)_c · log softmax(logits)_c,
    differentiable in both arguments.
    """
    if is_soft(labels):
        return F.cross_entropy(logits, labels.softmax(dim=1))
    return F.cross_entropy(logits, labels)


def hard_labels(labels: torch.Tensor) -> torch.Tensor:
    """Class indices: the labels themselves, or the argmax of soft-label logits."""
    return labels.argmax(dim=1) if is_soft(labels) else labels
