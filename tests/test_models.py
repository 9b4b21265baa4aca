"""Model registry and architectures: shapes, parameter counts and order, functional calls."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from distillkit.errors import ConfigError
from distillkit.models import build_model, model_names, parse_model_name


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _forward(model: nn.Module, channels: int, size: int) -> torch.Tensor:
    torch.manual_seed(0)
    return model(torch.randn(2, channels, size, size))


@pytest.mark.parametrize(
    ("channels", "size", "params"),
    [(1, 28, 317_706), (3, 32, 320_010)],  # MTT's ConvNet on FashionMNIST and CIFAR-10
)
def test_convnet_matches_mtt_parameter_count(channels: int, size: int, params: int) -> None:
    model = build_model("convnet", channels, 10, (size, size))
    assert _count(model) == params
    assert model.classifier.in_features == 128 * 4 * 4
    assert _forward(model, channels, size).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "channels", "size", "classes", "params"),
    [("convnet-d4", 3, 64, 200, 857_160), ("convnet-d5", 3, 128, 10, 615_690)],
)
def test_deeper_convnets_match_mtt_parameter_counts(
    name: str, channels: int, size: int, classes: int, params: int
) -> None:
    assert _count(build_model(name, channels, classes, (size, size))) == params


def test_parameter_order_is_mtt_flattening_order() -> None:
    names = [name for name, _ in build_model("convnet", 1, 10, (28, 28)).named_parameters()]
    blocks = [f"{layer}{i}.{p}" for i in (1, 2, 3) for layer in ("conv", "norm") for p in ("weight", "bias")]
    assert names == [*blocks, "classifier.weight", "classifier.bias"]


@pytest.mark.parametrize(
    ("name", "channels", "size", "features"),
    [
        ("convnet", 1, 28, 2048),
        ("convnet-w32", 1, 28, 32 * 4 * 4),
        ("convnet-w32-d2", 1, 8, 32 * 2 * 2),
        ("convnet-d2-w32", 1, 8, 32 * 2 * 2),
        ("convnet-np-w8-d2", 1, 8, 8 * 8 * 8),
        ("convnet-mp-w16", 3, 32, 16 * 4 * 4),
    ],
)
def test_convnet_embed_feeds_the_head(name: str, channels: int, size: int, features: int) -> None:
    model = build_model(name, channels, 10, (size, size))
    x = torch.randn(3, channels, size, size)
    embedding = model.embed(x)
    assert embedding.shape == (3, features)
    torch.testing.assert_close(model(x), model.classifier(embedding))


@pytest.mark.parametrize(
    ("modifier", "norm_type", "norm_params"),
    [
        ("in", nn.GroupNorm, 2 * 32),
        ("bn", nn.BatchNorm2d, 2 * 32),
        ("ln", nn.GroupNorm, 2 * 32),
        ("gn", nn.GroupNorm, 2 * 32),
        ("nn", nn.Identity, 0),
    ],
)
def test_convnet_norm_modifiers(modifier: str, norm_type: type, norm_params: int) -> None:
    model = build_model(f"convnet-w32-d2-{modifier}", 1, 10, (8, 8))
    assert isinstance(model.norm1, norm_type)
    assert _count(model.norm1) == norm_params
    groups = {"in": 32, "ln": 1, "gn": 4}
    if modifier in groups:
        assert model.norm1.num_groups == groups[modifier]
    assert _forward(model, 1, 8).shape == (2, 10)


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "vgg11-bn", "resnet18", "resnet18-ap"])
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (1, 8)])
def test_evaluation_models_forward(name: str, channels: int, size: int) -> None:
    model = build_model(name, channels, 10, (size, size)).eval()
    x = torch.randn(1, channels, size, size)
    with torch.no_grad():
        embedding = model.embed(x)
        assert embedding.shape == (1, model.classifier.in_features)
        if size == 8:  # forward is classifier(embed); checked where it is cheap
            torch.testing.assert_close(model(x), model.classifier(embedding))
        assert model.classifier(embedding).shape == (1, 10)


@pytest.mark.parametrize("name", ["convnet-w8-d3", "vgg11", "resnet18", "resnet18-ap"])
@pytest.mark.parametrize("size", [8, 16])
def test_no_norm_sees_a_single_pixel(name: str, size: int) -> None:
    # Instance norm of a 1×1 map returns only its bias: the output would ignore the input.
    model = build_model(name, 1, 10, (size, size)).eval()
    maps: list[tuple[int, ...]] = []
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            module.register_forward_hook(lambda _m, args, _o: maps.append(args[0].shape[2:]))
    with torch.no_grad():
        first, second = model.embed(torch.randn(2, 1, size, size)).unbind()
    assert maps and min(h * w for h, w in maps) > 1
    assert not torch.allclose(first, second)


@pytest.mark.parametrize(
    ("name", "channels", "size", "features"),
    [
        ("alexnet", 1, 28, 192 * 4 * 4),
        ("alexnet", 3, 32, 192 * 4 * 4),
        ("vgg11", 1, 28, 512),
        ("resnet18", 3, 32, 512),
        ("resnet18-ap", 1, 28, 512 * 3 * 3),
        ("resnet18-ap", 3, 32, 512 * 4 * 4),
        ("vgg11", 1, 8, 512),
        ("resnet18-ap", 1, 8, 512 * 2 * 2),
    ],
)
def test_evaluation_heads_match_mtt(name: str, channels: int, size: int, features: int) -> None:
    assert build_model(name, channels, 10, (size, size)).classifier.in_features == features


def test_evaluation_model_norms() -> None:
    assert isinstance(build_model("vgg11", 3, 10, (32, 32)).features.norm1, nn.GroupNorm)
    assert isinstance(build_model("vgg11-bn", 3, 10, (32, 32)).features.norm1, nn.BatchNorm2d)
    assert isinstance(build_model("resnet18", 3, 10, (32, 32)).norm1, nn.GroupNorm)
    assert isinstance(build_model("resnet18-bn", 3, 10, (32, 32)).norm1, nn.BatchNorm2d)
    alexnet = build_model("alexnet", 3, 10, (32, 32))
    assert not any(isinstance(m, nn.GroupNorm | nn.BatchNorm2d) for m in alexnet.modules())


@pytest.mark.parametrize("name", ["convnet-w16-d2", "resnet18-bn-ap"])
def test_functional_call_uses_the_given_parameters(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 1, 10, (8, 8)).eval()
    x = torch.randn(4, 1, 8, 8)
    params = {k: v.detach() * 1.5 for k, v in model.named_parameters()}
    out = functional_call(model, params, (x,))
    with torch.no_grad():
        for key, value in model.named_parameters():
            value.copy_(params[key])
    torch.testing.assert_close(out, model(x))


def test_functional_call_is_differentiable_in_the_parameters() -> None:
    model = build_model("convnet-w8-d2", 1, 3, (8, 8))
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    loss = functional_call(model, params, (torch.randn(2, 1, 8, 8),)).square().sum()
    grads = torch.autograd.grad(loss, list(params.values()))
    assert all(g.shape == p.shape for g, p in zip(grads, params.values(), strict=True))


def test_names_are_case_insensitive_and_modifiers_unordered() -> None:
    assert parse_model_name("ConvNet-D2-W32") == parse_model_name("convnet-w32-d2")
    spec = parse_model_name("resnet18-ap-bn")
    assert (spec.family, spec.norm, spec.pool) == ("resnet18", "bn", "ap")


def test_model_names_lists_every_family() -> None:
    names = model_names()
    for family in ("convnet", "alexnet", "vgg11", "resnet18", "resnet18-ap"):
        assert family in names


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("convnt", "convnet"), ("resnet-ap", "resnet18-ap"), ("resnet18-bm", "resnet18-bn")],
)
def test_unknown_names_suggest_the_closest(name: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=r"Unknown model|unknown modifier") as info:
        build_model(name, 1, 10, (28, 28))
    assert f"'{suggestion}'" in (info.value.hint or "")


@pytest.mark.parametrize("name", ["convnet-d0", "convnet-in-bn", "vgg11-ap", "alexnet-bn", "mlp"])
def test_invalid_names_raise_config_error(name: str) -> None:
    with pytest.raises(ConfigError):
        parse_model_name(name)


def test_too_small_image_for_depth_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="too small"):
        build_model("convnet-d4", 1, 10, (8, 8))


def test_group_norm_needs_width_divisible_by_four() -> None:
    with pytest.raises(ConfigError, match="divide"):
        build_model("convnet-gn-w30", 1, 10, (8, 8))
