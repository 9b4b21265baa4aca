"""DSA: each op's semantics, differentiability and reproducibility from the generator."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from distillkit.data.augment import DSA, GROUPS
from distillkit.errors import ConfigError

ALL_OPS = list(GROUPS)
DEFAULT = "color_crop_cutout_flip_scale_rotate"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(batch: int = 16, channels: int = 1, size: int = 28, dtype=torch.float32) -> Tensor:
    return torch.randn(batch, channels, size, size, generator=_gen(123), dtype=dtype)


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_op_keeps_shape_and_dtype(op: str, dtype: torch.dtype) -> None:
    x = _images(channels=3, dtype=dtype)
    out = DSA(op)(x, _gen())
    assert out.shape == x.shape
    assert out.dtype == dtype


@pytest.mark.parametrize("op", ALL_OPS)
def test_op_is_differentiable(op: str) -> None:
    x = _images(channels=3).requires_grad_()
    weights = torch.randn(x.shape, generator=_gen(7))
    (DSA(op)(x, _gen()) * weights).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("strategy", [*ALL_OPS, DEFAULT])
def test_same_seed_same_output_other_seed_other_output(strategy: str) -> None:
    x = _images(batch=64, channels=3)
    dsa = DSA(strategy)
    assert torch.equal(dsa(x, _gen(1)), dsa(x, _gen(1)))
    assert not torch.equal(dsa(x, _gen(1)), dsa(x, _gen(2)))


def test_global_rng_is_untouched() -> None:
    state = torch.get_rng_state()
    DSA(DEFAULT)(_images(), _gen())
    assert torch.equal(torch.get_rng_state(), state)


def test_mode_s_draws_every_group() -> None:
    x = torch.ones(8, 1, 8, 8)
    dsa = DSA("flip_brightness")
    outputs = [dsa(x, _gen(seed)) for seed in range(40)]
    assert any(torch.equal(out, x) for out in outputs)  # flip leaves a constant image as is
    assert any(not torch.equal(out, x) for out in outputs)


def test_flip_mirrors_about_half_of_the_images() -> None:
    x = _images(batch=64)
    out = DSA("flip")(x, _gen())
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def _shifted(image: Tensor, dy: int, dx: int) -> Tensor:
    """``image`` moved so that out[i, j] = image[i + dy, j + dx], zeros outside."""
    _, height, width = image.shape
    out = torch.zeros_like(image)
    rows, cols = (
        slice(max(0, -dy), min(height, height - dy)),
        slice(max(0, -dx), min(width, width - dx)),
    )
    src_rows = slice(rows.start + dy, rows.stop + dy)
    src_cols = slice(cols.start + dx, cols.stop + dx)
    out[:, rows, cols] = image[:, src_rows, src_cols]
    return out


def test_crop_shifts_by_whole_pixels_and_fills_zeros() -> None:
    x = torch.rand(32, 2, 28, 28, generator=_gen(5)) + 1.0  # no zeros of its own
    out = DSA("crop")(x, _gen())
    limit = 4  # int(0.125 · 28 + 0.5)
    shifts = set()
    for image, moved in zip(x, out, strict=True):
        matches = [
            (dy, dx)
            for dy in range(-limit, limit + 1)
            for dx in range(-limit, limit + 1)
            if torch.equal(moved, _shifted(image, dy, dx))
        ]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 1


def test_cutout_zeroes_one_square_clipped_at_borders() -> None:
    size, side = 28, 14  # int(0.5 · 28 + 0.5)
    x = torch.ones(64, 3, size, size)
    out = DSA("cutout")(x, _gen())
    assert torch.equal(out[:, :1].expand_as(out), out)  # same hole in every channel
    full_squares = 0
    for image in out[:, 0]:
        rows = (image == 0).any(dim=1).nonzero().flatten()
        cols = (image == 0).any(dim=0).nonzero().flatten()
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert (image[top:bottom, left:right] == 0).all()  # a filled rectangle
        assert int((image == 0).sum()) == int((bottom - top) * (right - left))
        for low, high in ((top, bottom), (left, right)):
            assert high - low == side or low == 0 or high == size
        full_squares += int(bottom - top == side and right - left == side)
    assert full_squares > 0


def test_brightness_adds_a_bounded_per_image_offset() -> None:
    x = _images(batch=32)
    offset = DSA("brightness")(x, _gen()) - x
    per_image = offset.flatten(1)
    torch.testing.assert_close(per_image, per_image[:, :1].expand_as(per_image))
    assert per_image.abs().max() <= 0.5


def test_contrast_keeps_each_image_mean() -> None:
    x = _images(batch=32, channels=3)
    out = DSA("contrast")(x, _gen())
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)))


def test_saturation_keeps_channel_mean_and_is_a_no_op_for_one_channel() -> None:
    x = _images(batch=32, channels=3)
    out = DSA("saturation")(x, _gen())
    torch.testing.assert_close(out.mean(dim=1), x.mean(dim=1))
    gray = _images(batch=32, channels=1)
    assert torch.equal(DSA("saturation")(gray, _gen()), gray)


@pytest.mark.parametrize("op", ["scale", "rotate"])
def test_geometric_ops_keep_the_centre_pixel(op: str) -> None:
    x = _images(batch=16, size=15)
    out = DSA(op)(x, _gen())
    torch.testing.assert_close(out[..., 7, 7], x[..., 7, 7])
    assert not torch.allclose(out, x)


@pytest.mark.parametrize("strategy", ["", "none", " None "])
def test_identity_strategy_returns_input(strategy: str) -> None:
    x = _images()
    dsa = DSA(strategy)
    assert dsa.ops == ()
    assert dsa(x, _gen()) is x


def test_ops_lists_the_strategy_groups() -> None:
    assert DSA().ops == ("color", "crop", "cutout", "flip", "scale", "rotate")


def test_unknown_op_is_a_config_error_with_suggestion() -> None:
    with pytest.raises(ConfigError, match="colour") as info:
        DSA("colour_crop")
    assert "'color'" in (info.value.hint or "")
