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

    ``W = (C + eps·I)^(−1/2)`` for the training covariance ``C = V diag(λ) Vᵀ``. The transform
    applies the dense ``W`` (``matrix``, ``[D, D]``, ``D = C·H·W``), built in float64 when fitted.
    The inverse — needed only to draw whitened images — and the saved state use the eigenbasis:
    ``W⁻¹ = √eps·I + V diag(√(λ + eps) − √eps) Vᵀ``, exact whether ``V`` spans every direction
    (more images than pixels: ``[D, D]``) or only the images' span (``[D, N]``). So a saved set
    carries one basis instead of two dense ``D×D`` matrices: half the bytes for a CIFAR fit,
    megabytes instead of 1.2 GB for a 64×64 fit on a few hundred images. ``mean`` keeps the
    image shape ``[C, H, W]`` so the transform can check its input.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        basis: torch.Tensor | None,
        eigenvalues: torch.Tensor | None,
        eps: float,
        matrix: torch.Tensor | None = None,
        dense_inverse: torch.Tensor | None = None,
    ) -> None:
        dim = mean.numel()
        self.mean = mean.detach().float().contiguous()
        self.eps = float(eps)
        self.basis = None if basis is None else basis.detach().float().contiguous()
        self.eigenvalues = None if eigenvalues is None else eigenvalues.detach().double().contiguous()
        self._matrix = None if matrix is None else matrix.detach().float().contiguous()
        # Sets saved before the eigenbasis was (zca.matrix + zca.inverse) carry W⁻¹ itself.
        self._dense_inverse = None if dense_inverse is None else dense_inverse.detach().float().contiguous()
        shapes = {"matrix": self._matrix, "inverse": self._dense_inverse}
        for key, value in shapes.items():
            if value is not None and tuple(value.shape) != (dim, dim):
                raise _corrupt(f"ZCA {key} has shape {tuple(value.shape)} but the mean has {dim} values")
        if self.basis is not None and self.eigenvalues is not None:
            rank = self.eigenvalues.numel()
            if self.basis.ndim != 2 or tuple(self.basis.shape) != (dim, rank) or self.eigenvalues.ndim != 1:
                raise _corrupt(
                    f"ZCA basis {tuple(self.basis.shape)} and eigenvalues {tuple(self.eigenvalues.shape)} "
                    f"do not fit a mean of {dim} values"
                )
        elif self._dense_inverse is None or self._matrix is None:
            raise _corrupt("a ZCA needs its eigenbasis (or, as saved before, its matrix and inverse)")
        if not self.eps > 0:
            raise _corrupt(f"ZCA eps must be positive, got {self.eps}")

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
                matrix, basis, eigenvalues = _low_rank_fit(flat.double() - mean, eps)
            else:
                matrix, basis, eigenvalues = _covariance_fit(flat, mean, eps)
        return cls(mean.reshape(images.shape[1:]), basis, eigenvalues, eps, matrix=matrix)

    @property
    def matrix(self) -> torch.Tensor:
        """The dense whitening matrix ``W`` (built from the eigenbasis, in float64, if not fitted here)."""
        if self._matrix is None:
            assert self.basis is not None and self.eigenvalues is not None
            scale = (self.eigenvalues + self.eps).rsqrt() - self.eps**-0.5
            self._matrix = _identity_plus(self.eps**-0.5, self.basis.double(), scale).float()
        return self._matrix

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
        if self._dense_inverse is not None:
            inverse = self._dense_inverse.to(flat)
            return _chunked(flat, lambda rows: rows @ inverse + mean).reshape(images.shape)
        assert self.basis is not None and self.eigenvalues is not None
        basis = self.basis.to(flat)
        root = self.eps**0.5
        scale = ((self.eigenvalues + self.eps).sqrt() - root).to(flat)
        return _chunked(flat, lambda rows: rows * root + ((rows @ basis) * scale) @ basis.T + mean).reshape(
            images.shape
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to save with an artifact (e.g. in a safetensors file): the eigenbasis form."""
        if self.basis is None or self.eigenvalues is None:
            assert self._matrix is not None and self._dense_inverse is not None
            return {"mean": self.mean, "matrix": self._matrix, "inverse": self._dense_inverse}
        eps = torch.tensor(self.eps, dtype=torch.float64)
        return {"mean": self.mean, "basis": self.basis, "eigenvalues": self.eigenvalues, "eps": eps}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ZCA:
        """A ZCA from :meth:`state_dict`, or from the ``mean``/``matrix``/``inverse`` of older sets."""
        if "basis" not in state and {"matrix", "inverse"} <= set(state) and "mean" in state:
            # eps was not saved then and is not needed: both directions are the dense matrices.
            return cls(state["mean"], None, None, 0.1, matrix=state["matrix"], dense_inverse=state["inverse"])
        missing = [key for key in ("mean", "basis", "eigenvalues", "eps") if key not in state]
        if missing:
            raise DataError(
                f"The saved ZCA state lacks {', '.join(missing)}.",
                hint="The file is corrupt or was not written by distillkit; refit the ZCA.",
            )
        return cls(state["mean"], state["basis"], state["eigenvalues"], float(state["eps"]))

    def _flatten(self, images: torch.Tensor) -> torch.Tensor:
        shape = tuple(self.mean.shape)
        if tuple(images.shape[-len(shape) :]) != shape:
            raise DataError(
                f"This ZCA was fitted on images of shape {shape}, "
                f"but got a tensor of shape {tuple(images.shape)}."
            )
        return images.reshape(-1, self.mean.numel())


def _corrupt(message: str) -> DataError:
    return DataError(f"{message}.", hint="The saved ZCA state is corrupt or from another dataset; refit it.")


def _covariance_fit(
    flat: torch.Tensor, mean: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(C + eps)^(−1/2)`` and the eigenbasis of the unbiased covariance C (chunked, float64)."""
    dim = mean.numel()
    cov = torch.zeros(dim, dim, dtype=torch.float64, device=flat.device)
    for chunk in flat.split(_CHUNK):
        centred = chunk.double() - mean
        cov.addmm_(centred.T, centred)
    cov /= flat.shape[0] - 1
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    # Round-off can make tiny eigenvalues of a PSD matrix slightly negative.
    eigenvalues = eigenvalues.clamp_min(0.0)
    matrix = (eigenvectors * (eigenvalues + eps).rsqrt()) @ eigenvectors.T
    return matrix, eigenvectors, eigenvalues


def _low_rank_fit(centred: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same when there are no more images than pixels, from a thin SVD.

    With N ≤ D the covariance has rank < N: on the span V of the centred images its
    eigenvalues are S²/(N−1), elsewhere 0, so ``(C + eps)^p = eps^p I + V (diag(λ + eps)^p −
    eps^p) Vᵀ`` — an N×D decomposition instead of a D×D one (a CIFAR-sized fit on a few
    hundred images: milliseconds instead of seconds).
    """
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    eigenvalues = singular.square() / (centred.shape[0] - 1)
    return _identity_plus(eps**-0.5, vh.T, (eigenvalues + eps).rsqrt() - eps**-0.5), vh.T, eigenvalues


def _identity_plus(diagonal: float, basis: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``diagonal·I + basis diag(scale) basisᵀ``, the identity added in place (no second D×D buffer)."""
    matrix = (basis * scale) @ basis.T
    matrix.diagonal().add_(diagonal)
    return matrix


def _chunked(flat: torch.Tensor, step: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``step`` to row blocks so intermediates stay small; the output is filled in place."""
    out = torch.empty_like(flat)
    for start in range(0, flat.shape[0], _CHUNK):
        out[start : start + _CHUNK] = step(flat[start : start + _CHUNK])
    return out
