"""ZCA whitening: round trip, decorrelation with eps shrinkage, state dicts and chunking."""

from __future__ import annotations

import pytest
import torch

from distillkit.data import ZCA
from distillkit.data import zca as zca_module
from distillkit.errors import DataError


def _correlated_images(n: int = 400, shape: tuple[int, ...] = (3, 4, 4), scale: float = 1.0):
    generator = torch.Generator().manual_seed(0)
    dim = torch.Size(shape).numel()
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    latent = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    return (scale * latent @ mixing + 0.5).float().reshape(n, *shape)


def test_round_trip() -> None:
    images = _correlated_images()
    zca = ZCA.fit(images)
    assert torch.allclose(zca.inverse(zca.transform(images)), images, atol=1e-4)


def test_whitened_covariance_is_identity_shrunk_by_eps() -> None:
    eps = 0.1
    images = _correlated_images()
    zca = ZCA.fit(images, eps=eps)
    white = zca.transform(images).reshape(len(images), -1).double()
    cov = torch.cov(white.T)
    flat = images.reshape(len(images), -1).double()
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(flat.T))
    expected = (eigenvectors * (eigenvalues / (eigenvalues + eps))) @ eigenvectors.T
    assert torch.allclose(cov, expected, atol=1e-3)
    assert torch.all(torch.diag(cov) < 1.0)  # eps shrinks every direction a little
    # Decorrelated: the strongest pairwise correlation drops from strong to weak.
    assert _max_correlation(white) < 0.25 < 0.5 < _max_correlation(flat)


def _max_correlation(rows: torch.Tensor) -> float:
    corr = torch.corrcoef(rows.T)
    return (corr - torch.eye(len(corr), dtype=corr.dtype)).abs().max().item()


def test_large_variance_whitens_to_identity() -> None:
    images = _correlated_images(n=2000, scale=30.0)
    white = ZCA.fit(images).transform(images).reshape(2000, -1).double()
    assert torch.allclose(torch.cov(white.T), torch.eye(white.shape[1], dtype=torch.float64), atol=0.02)


def test_state_dict_round_trip_is_exact() -> None:
    images = _correlated_images()
    zca = ZCA.fit(images)
    state = zca.state_dict()
    assert set(state) == {"mean", "basis", "eigenvalues", "eps"}
    restored = ZCA.from_state_dict({k: v.clone() for k, v in state.items()})
    assert torch.equal(restored.inverse(images), zca.inverse(images))
    # The restored dense matrix is rebuilt from the basis (float32 there): the same transform to rounding.
    torch.testing.assert_close(restored.transform(images), zca.transform(images), atol=1e-4, rtol=0)


def test_a_saved_low_rank_fit_holds_the_images_span_not_two_dense_matrices() -> None:
    """40 images of 108 values: a 108×40 basis instead of two 108×108 matrices."""
    images = torch.randn(40, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    state = ZCA.fit(images).state_dict()
    assert tuple(state["basis"].shape) == (108, 40) and tuple(state["eigenvalues"].shape) == (40,)
    assert tuple(ZCA.fit(_correlated_images()).state_dict()["basis"].shape) == (48, 48)  # 400 images


def test_sets_saved_with_the_dense_matrices_still_load() -> None:
    """Before the eigenbasis, ``zca.matrix`` and ``zca.inverse`` were saved; such sets still draw."""
    images = _correlated_images()
    zca = ZCA.fit(images)
    inverse = torch.linalg.inv(zca.matrix.double()).float()
    legacy = ZCA.from_state_dict({"mean": zca.mean, "matrix": zca.matrix, "inverse": inverse})
    assert torch.equal(legacy.transform(images), zca.transform(images))
    torch.testing.assert_close(legacy.inverse(images), zca.inverse(images), atol=1e-4, rtol=1e-5)
    assert set(legacy.state_dict()) == {"mean", "matrix", "inverse"}


def test_state_dict_missing_or_misshapen_parts() -> None:
    state = ZCA.fit(_correlated_images()).state_dict()
    with pytest.raises(DataError, match="eigenvalues"):
        ZCA.from_state_dict({k: v for k, v in state.items() if k != "eigenvalues"})
    with pytest.raises(DataError, match="basis"):
        ZCA.from_state_dict({**state, "basis": state["basis"][:, :5]})
    with pytest.raises(DataError, match="eps"):
        ZCA.from_state_dict({**state, "eps": torch.tensor(0.0)})


def test_chunked_transform_matches_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    images = _correlated_images(n=50)
    zca = ZCA.fit(images)
    whole = zca.transform(images)
    monkeypatch.setattr(zca_module, "_CHUNK", 7)
    assert torch.allclose(zca.transform(images), whole, atol=1e-5)
    assert torch.allclose(ZCA.fit(images).matrix, zca.matrix, atol=1e-5)


def test_single_image_and_gradients() -> None:
    images = _correlated_images()
    zca = ZCA.fit(images)
    single = images[3].clone().requires_grad_(True)
    out = zca.transform(single)
    assert out.shape == single.shape
    assert torch.allclose(out, zca.transform(images)[3], atol=1e-5)
    out.square().sum().backward()
    assert single.grad is not None and single.grad.abs().sum() > 0


def test_shape_mismatch_and_too_few_images() -> None:
    zca = ZCA.fit(_correlated_images())
    with pytest.raises(DataError, match="fitted on images of shape"):
        zca.transform(torch.zeros(2, 1, 4, 4))
    with pytest.raises(DataError, match="at least two"):
        ZCA.fit(torch.zeros(1, 3, 4, 4))


def test_the_low_rank_fit_equals_the_covariance_fit_when_there_are_fewer_images_than_pixels() -> None:
    """N ≤ D takes a thin SVD instead of a D×D eigendecomposition; both give the same transform."""
    from distillkit.data import zca

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(40, 3, 6, 6, generator=gen) * torch.linspace(0.1, 3.0, 108).reshape(3, 6, 6)
    flat = images.reshape(40, -1)
    mean = flat.double().mean(dim=0)
    fitted = zca.ZCA.fit(images)
    matrix, basis, eigenvalues = zca._covariance_fit(flat, mean, 0.1)
    torch.testing.assert_close(fitted.matrix.double(), matrix, atol=1e-6, rtol=0)
    dense = ZCA(mean.reshape(3, 6, 6), basis, eigenvalues, 0.1)
    torch.testing.assert_close(fitted.inverse(images), dense.inverse(images), atol=1e-5, rtol=1e-5)
