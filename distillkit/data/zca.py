"""ZCA whitening (as in MTT, after kornia): fitted on the training set, inverted for pictures.

``eps`` (0.1 by default) is added to every eigenvalue; at that size it acts as a strong
regulariser that damps low-variance directions, not just as numerical safety.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from distillkit.errors import DataError

_CHUNK = 4096


class ZCA:
    """A fitted ZCA transform: ``x ↦ (x − mean) W`` and its inverse ``z ↦ z W⁻¹ + mean``.

    ``mean`` keeps the image shape ``[C, H, W]`` so the transform can check its input;
    ``matrix`` and ``inverse`` are symmetric ``[D, D]`` with ``D = C·H·W``. Everything is
    float32 (fitted in float64).
    """

    def __init__(self, mean: torch.Tensor, matrix: torch.Tensor, inverse: torch.Tensor) -> None:
        dim = mean.numel()
        for key, value in (("matrix", matrix), ("inverse", inverse)):
            if tuple(value.shape) != (dim, dim):
                raise DataError(
                    f"ZCA {key} has shape {tuple(value.shape)} but the mean has {dim} values; "
                    f"expected ({dim}, {dim}).",
                    hint="The saved ZCA state is corrupt or from another dataset; refit it.",
                )
        self.mean = mean.detach().float().contiguous()
        self.matrix = matrix.detach().float().contiguous()
        self.inverse_matrix = inverse.detach().float().contiguous()

    @classmethod
    def fit(cls, images: torch.Tensor, eps: float = 0.1) -> ZCA:
        """Fit on ``images`` ``[N, ...]`` (the whole train split): unbiased covariance + eps."""
        if images.ndim < 2 or images.shape[0] < 2:
            raise DataError(f"ZCA needs at least two images to fit, got shape {tuple(images.shape)}.")
        if not eps > 0:
            raise DataError(f"ZCA eps must be positive, got {eps}.", hint="The usual value is 0.1.")
        flat = images.detach().reshape(images.shape[0], -1)
        count, dim = flat.shape
        with torch.no_grad():
            mean = torch.zeros(dim, dtype=torch.float64, device=flat.device)
            for chunk in flat.split(_CHUNK):
                mean += chunk.double().sum(dim=0)
            mean /= count
            if count <= dim:
                matrix, inverse = _low_rank_fit(flat.double() - mean, eps)
            else:
                matrix, inverse = _covariance_fit(flat, mean, eps)
        return cls(mean.reshape(images.shape[1:]), matrix, inverse)

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """Whiten ``images`` (``[..., C, H, W]``); differentiable, processed in row chunks."""
        flat = self._flatten(images)
        mean = self.mean.reshape(1, -1).to(flat)
        matrix = self.matrix.to(flat)
        return _chunked(flat, lambda rows: (rows - mean) @ matrix).reshape(images.shape)

    def inverse(self, images: torch.Tensor) -> torch.Tensor:
        """Map whitened images back to the space the ZCA was fitted in (e.g. to draw them)."""
        flat = self._flatten(images)
        mean = self.mean.reshape(1, -1).to(flat)
        inverse = self.inverse_matrix.to(flat)
        return _chunked(flat, lambda rows: rows @ inverse + mean).reshape(images.shape)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to save with an artifact (e.g. in a safetensors file)."""
        return {"mean": self.mean, "matrix": self.matrix, "inverse": self.inverse_matrix}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ZCA:
        missing = [key for key in ("mean", "matrix", "inverse") if key not in state]
        if missing:
            raise DataError(
                f"The saved ZCA state lacks {', '.join(missing)}.",
                hint="The file is corrupt or was not written by distillkit; refit the ZCA.",
            )
        return cls(state["mean"], state["matrix"], state["inverse"])

    def _flatten(self, images: torch.Tensor) -> torch.Tensor:
        shape = tuple(self.mean.shape)
        if tuple(images.shape[-len(shape) :]) != shape:
            raise DataError(
                f"This ZCA was fitted on images of shape {shape}, "
                f"but got a tensor of shape {tuple(images.shape)}."
            )
        return images.reshape(-1, self.mean.numel())


def _covariance_fit(flat: torch.Tensor, mean: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C + eps)^(∓1/2)`` from the eigenvectors of the unbiased covariance C (chunked, float64)."""
    dim = mean.numel()
    cov = torch.zeros(dim, dim, dtype=torch.float64, device=flat.device)
    for chunk in flat.split(_CHUNK):
        centred = chunk.double() - mean
        cov.addmm_(centred.T, centred)
    cov /= flat.shape[0] - 1
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    # Round-off can make tiny eigenvalues of a PSD matrix slightly negative.
    shifted = eigenvalues.clamp_min(0.0) + eps
    matrix = (eigenvectors * shifted.rsqrt()) @ eigenvectors.T
    inverse = (eigenvectors * shifted.sqrt()) @ eigenvectors.T
    return matrix, inverse


def _low_rank_fit(centred: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The same two matrices when there are no more images than pixels, from a thin SVD.

    With N ≤ D the covariance has rank < N: on the span V of the centred images its
    eigenvalues are S²/(N−1), elsewhere 0, so ``(C + eps)^p = eps^p I + V (diag(λ + eps)^p −
    eps^p) Vᵀ`` — an N×D decomposition instead of a D×D one (a CIFAR-sized fit on a few
    hundred images: milliseconds instead of seconds).
    """
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    shifted = singular.square() / (centred.shape[0] - 1) + eps
    eye = torch.eye(centred.shape[1], dtype=centred.dtype, device=centred.device)
    matrix = eye * eps**-0.5 + (vh.T * (shifted.rsqrt() - eps**-0.5)) @ vh
    inverse = eye * eps**0.5 + (vh.T * (shifted.sqrt() - eps**0.5)) @ vh
    return matrix, inverse


def _chunked(flat: torch.Tensor, step: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``step`` to row blocks so intermediates stay small; the output is filled in place."""
    out = torch.empty_like(flat)
    for start in range(0, flat.shape[0], _CHUNK):
        out[start : start + _CHUNK] = step(flat[start : start + _CHUNK])
    return out
