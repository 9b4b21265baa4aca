"""The five AST plugins against their equations on small hand-checkable cases (CPU, seeded)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from distillkit.config import RunConfig
from distillkit.context import (
    ExpertStepContext,
    InitContext,
    InnerLossContext,
    LossScale,
    LossTerm,
    MatchContext,
    ParamSlot,
    PerturbContext,
    RunContext,
)
from distillkit.errors import ConfigError
from distillkit_plugins.bil import BalancedInnerLoss, balance_factor
from distillkit_plugins.itm import IntermediateMatching, matching_points
from distillkit_plugins.kmeans_init import KMeansInit, cluster_sizes
from distillkit_plugins.smooth import SmoothExperts, clip_factor
from distillkit_plugins.wp import WeightPerturbation, filter_delta


def make_run(seed: int = 0) -> tuple[RunContext, dict[str, Any]]:
    logged: dict[str, Any] = {}
    run = RunContext(
        config=RunConfig(),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        out_dir=None,
        log=logged.__setitem__,
    )
    return run, logged


# -- smooth (Eq. 1) ------------------------------------------------------------------


def test_clip_schedule_paper_and_code() -> None:
    paper = [clip_factor(e, 0.5, 5) for e in range(13)]
    code = [clip_factor(e, 0.5, 10) for e in range(13)]
    assert paper == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9] + [1.0] * 8)
    assert code == pytest.approx([0.5 + 0.05 * e for e in range(10)] + [1.0] * 3)


def step_ctx(model: nn.Module, images: torch.Tensor, raw: torch.Tensor, epoch: int = 0):
    logits = model(images)
    labels = torch.zeros(len(images), dtype=torch.long)
    return ExpertStepContext(
        model=model,
        images=images,
        raw_images=raw,
        labels=labels,
        logits=logits,
        base_loss=nn.functional.cross_entropy(logits, labels),
        epoch=epoch,
        step=0,
        steps_per_epoch=1,
        total_epochs=20,
    )


def linear_model(c: int = 3, h: int = 2, w: int = 2, classes: int = 4) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes))


def test_gp_linear_model_sample_norm_closed_form_and_double_backprop() -> None:
    run, _ = make_run()
    model = linear_model()
    a = model[1].weight.detach()
    x = torch.randn(5, 3, 2, 2)
    paper = {"lam_epochs": 5, "gp_input": "augmented", "gp_norm": "sample"}
    plugin = SmoothExperts(SmoothExperts.Config(gp_weight=2.0, gp_target=1.0, **paper))
    scale, gp = plugin.expert_loss(run, step_ctx(model, x, x, epoch=2))
    assert isinstance(scale, LossScale) and scale.factor == pytest.approx(0.7)
    assert isinstance(gp, LossTerm) and gp.name == "gp"
    s = a.sum(0)  # ∇ₓ Σ_c (Ax + b)_c = Σ_c A_c, the same for every sample
    expected = 2.0 * (s.norm() - 1.0) ** 2
    torch.testing.assert_close(gp.value, expected)
    gp.value.backward()
    # d/dA_c of μ(‖s‖ − K)² = 2μ(‖s‖ − K)·s/‖s‖ for every row c; the bias does not enter.
    row = 2 * 2.0 * (s.norm() - 1.0) * s / s.norm()
    torch.testing.assert_close(model[1].weight.grad, row.expand_as(a))
    bias_grad = model[1].bias.grad
    assert bias_grad is None or torch.count_nonzero(bias_grad) == 0


def test_gp_linear_model_pixel_norm_closed_form() -> None:
    run, _ = make_run()
    model = linear_model()
    x = torch.randn(5, 3, 2, 2)
    plugin = SmoothExperts(SmoothExperts.Config(gp_weight=1.0, gp_norm="pixel"))
    _, gp = plugin.expert_loss(run, step_ctx(model, x, x))
    per_pixel = model[1].weight.detach().sum(0).view(3, 2, 2).norm(dim=0)  # over channels
    torch.testing.assert_close(gp.value, ((per_pixel - 1.0) ** 2).mean())
    gp.value.backward()
    assert torch.count_nonzero(model[1].weight.grad) > 0


class Square(nn.Module):
    """W(x) = Σ x², so ∇ₓW = 2x: the penalty shows which batch it was taken on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x**2).flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("gp_input", ["augmented", "raw"])
def test_gp_input_selects_batch(gp_input: str) -> None:
    run, _ = make_run()
    aug, raw = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    plugin = SmoothExperts(SmoothExperts.Config(gp_input=gp_input, gp_norm="sample", gp_weight=1.0))
    _, gp = plugin.expert_loss(run, step_ctx(Square(), aug, raw))
    x = aug if gp_input == "augmented" else raw
    expected = ((2 * x.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
    torch.testing.assert_close(gp.value, expected)


def test_gp_weight_zero_returns_only_scale() -> None:
    run, _ = make_run()
    x = torch.randn(2, 3, 2, 2)
    out = SmoothExperts(SmoothExperts.Config(gp_weight=0.0)).expert_loss(
        run, step_ctx(linear_model(), x, x, epoch=10)
    )
    assert out == [LossScale("clip", 1.0)]


def test_smooth_defaults() -> None:
    """The code's λ over 10 epochs, μ 2, per-pixel norm on the raw batch; momentum experts at the
    dataset's own lr and weight decay with the code's lr schedule, and a plain-SGD student."""
    cfg = SmoothExperts.Config()
    assert (cfg.lam_epochs, cfg.gp_weight, cfg.gp_input, cfg.gp_norm) == (10, 2.0, "raw", "pixel")
    assert clip_factor(7, cfg.lam_start, cfg.lam_epochs) == pytest.approx(0.85)
    recipe = SmoothExperts.config_defaults
    assert "experts.lr" not in recipe and "experts.weight_decay" not in recipe
    assert recipe["experts.momentum"] == 0.9 and recipe["experts.lr_decay"] == "ast-code"
    assert "distill.student_momentum" not in recipe


def test_smooth_rejects_unknown_choice() -> None:
    with pytest.raises(ConfigError):
        SmoothExperts.Config(gp_norm="channel")


# -- bil (Eq. 2) -----------------------------------------------------------------------


def test_nu_paper_natural_log() -> None:
    def nu(t: int, tmax: int = 20) -> float:
        return balance_factor(t, tmax, 8.0, math.e, "exact")

    assert nu(0) == pytest.approx(1 / math.log(18))
    assert nu(9) == pytest.approx(1 / math.log(9))
    assert nu(10) == pytest.approx(math.log(8))
    assert nu(19) == pytest.approx(math.log(17))
    # odd T⁺: middle is 10.5, so start 10 is below it
    assert nu(10, 21) == pytest.approx(1 / math.log(8.5))


def test_nu_code_base5_floor_middle() -> None:
    def nu(t: int, tmax: int = 20) -> float:
        return balance_factor(t, tmax, 8.0, 5.0, "floor")

    assert nu(0) == pytest.approx(0.557, abs=1e-3)
    assert nu(9) == pytest.approx(0.733, abs=1e-3)
    assert nu(10) == pytest.approx(1.292, abs=1e-3)
    assert nu(19) == pytest.approx(1.760, abs=1e-3)
    assert nu(10, 21) == pytest.approx(math.log(8, 5))


def test_bil_hook_returns_and_logs_nu() -> None:
    run, logged = make_run()
    ctx = InnerLossContext(iteration=0, start_epoch=0, max_start_epoch=20, expert_epochs=2, syn_steps=20)
    nu = BalancedInnerLoss(BalancedInnerLoss.Config()).inner_loss_weight(run, ctx)
    assert nu == pytest.approx(1 / math.log(18, 5))  # default: the code's log base 5, ⌊T⁺/2⌋
    assert logged["bil/nu"] == nu


# -- itm (Eq. 4) -----------------------------------------------------------------------


def test_matching_points() -> None:
    assert matching_points(20, 2, "proportional") == [10]
    assert matching_points(20, 2, "stride") == [10]
    assert matching_points(80, 3, "proportional") == [26, 53]
    assert matching_points(80, 3, "stride") == [26, 52]
    assert matching_points(20, 1, "proportional") == []


def distance(a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum() / ((ref - b) ** 2).sum()


def match_ctx(syn_steps: int, expert_epochs: int, perturbed_reference: bool = False) -> MatchContext:
    g = torch.Generator().manual_seed(3)
    experts = [torch.randn(6, generator=g) for _ in range(expert_epochs + 1)]
    students = tuple(torch.randn(6, generator=g).requires_grad_(True) for _ in range(syn_steps + 1))
    return MatchContext(
        iteration=0,
        start_epoch=4,
        expert_epochs=expert_epochs,
        syn_steps=syn_steps,
        student_params=students,
        expert_params=experts.__getitem__,
        start=experts[0] + 0.1,
        unperturbed_start=experts[0],
        reference=experts[0] + (0.1 if perturbed_reference else 0.0),
        distance=distance,
    )


@pytest.mark.parametrize("perturbed_reference", [False, True])
def test_itm_loss_equals_formula(perturbed_reference: bool) -> None:
    run, _ = make_run()
    ctx = match_ctx(syn_steps=4, expert_epochs=2, perturbed_reference=perturbed_reference)
    plugin = IntermediateMatching(IntermediateMatching.Config())
    (term,) = plugin.intermediate_match(run, ctx)
    ref = ctx.start if perturbed_reference else ctx.unperturbed_start
    target = ctx.expert_params(1)
    expected = ((ctx.student_params[2] - target) ** 2).sum() / ((ref - target) ** 2).sum()
    assert term.name == "itm/2"
    torch.testing.assert_close(term.value, expected)
    term.value.backward()
    assert ctx.student_params[2].grad is not None


def test_itm_varied_beta() -> None:
    run, _ = make_run()
    ctx = match_ctx(syn_steps=6, expert_epochs=3)
    terms = IntermediateMatching(IntermediateMatching.Config(beta="varied")).intermediate_match(run, ctx)
    assert [t.name for t in terms] == ["itm/2", "itm/4"]
    for i, (term, xi) in enumerate(zip(terms, [2, 4], strict=True), start=1):
        raw = distance(ctx.student_params[xi], ctx.expert_params(i), ctx.unperturbed_start)
        torch.testing.assert_close(term.value, i / 3 * raw)


# -- wp (Eq. 5) ------------------------------------------------------------------------

SHAPES = {
    "conv.weight": (4, 2, 3, 3),
    "conv.bias": (4,),
    "norm.weight": (4,),
    "fc.weight": (3, 8),
    "fc.bias": (3,),
}


def perturb_ctx() -> PerturbContext:
    layout, offset = [], 0
    for name, shape in SHAPES.items():
        numel = math.prod(shape)
        layout.append(ParamSlot(name=name, shape=shape, offset=offset, numel=numel))
        offset += numel
    start = torch.randn(offset, generator=torch.Generator().manual_seed(7))
    return PerturbContext(iteration=0, start=start, start_epoch=3, layout=tuple(layout))


def split(flat: torch.Tensor, ctx: PerturbContext) -> dict[str, torch.Tensor]:
    return {s.name: flat[s.offset : s.offset + s.numel].view(s.shape) for s in ctx.layout}


def perturb(seed: int = 0, **options: Any) -> tuple[torch.Tensor, PerturbContext, dict]:
    run, logged = make_run(seed)
    ctx = perturb_ctx()
    delta = WeightPerturbation(WeightPerturbation.Config(**options)).perturb_expert(run, ctx)
    return delta, ctx, logged


def test_wp_filter_norms_weights_scope() -> None:
    delta, ctx, logged = perturb(alpha=0.1, mode="filter", scope="weights")
    assert delta.shape == ctx.start.shape and delta.dtype == ctx.start.dtype
    d, w = split(delta, ctx), split(ctx.start, ctx)
    for name in ("conv.weight", "fc.weight"):
        rows = w[name].shape[0]
        torch.testing.assert_close(
            d[name].reshape(rows, -1).norm(dim=1),
            0.1 * w[name].reshape(rows, -1).norm(dim=1),
            rtol=1e-5,
            atol=0,
        )
    for name in ("conv.bias", "norm.weight", "fc.bias"):
        assert torch.count_nonzero(d[name]) == 0
    torch.testing.assert_close(logged["wp/rel_norm"], delta.norm() / ctx.start.norm())


def test_wp_all_scope_perturbs_1d_as_one_filter() -> None:
    delta, ctx, _ = perturb(alpha=0.1, mode="filter", scope="all")
    d, w = split(delta, ctx), split(ctx.start, ctx)
    for name in ("conv.bias", "norm.weight", "fc.bias"):
        torch.testing.assert_close(d[name].norm(), 0.1 * w[name].norm(), rtol=1e-5, atol=0)


def test_wp_conv_scope_only_4d() -> None:
    delta, ctx, _ = perturb(scope="conv")
    d = split(delta, ctx)
    assert torch.count_nonzero(d["conv.weight"]) == d["conv.weight"].numel()
    for name in ("conv.bias", "norm.weight", "fc.weight", "fc.bias"):
        assert torch.count_nonzero(d[name]) == 0


def test_wp_multiplicative_relative_size() -> None:
    delta, ctx, _ = perturb(alpha=1.0, mode="multiplicative", scope="conv")
    d, w = split(delta, ctx), split(ctx.start, ctx)
    direction = d["conv.weight"] / w["conv.weight"]  # = α·Z/‖Z‖_F, a unit-norm direction
    torch.testing.assert_close(direction.norm(), torch.tensor(1.0), rtol=1e-5, atol=0)
    assert torch.count_nonzero(d["fc.weight"]) == 0


def test_wp_seeded() -> None:
    a, _, _ = perturb(seed=5)
    b, _, _ = perturb(seed=5)
    c, _, _ = perturb(seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_filter_delta_pure_function() -> None:
    w = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    d = filter_delta(w, 0.5, torch.Generator().manual_seed(2))
    torch.testing.assert_close(d.norm(dim=1), 0.5 * w.norm(dim=1), rtol=1e-5, atol=0)
    v = torch.randn(6)
    torch.testing.assert_close(filter_delta(v, 0.2, torch.Generator().manual_seed(2)).norm(), 0.2 * v.norm())


# -- kmeans-init (§3.2.1) --------------------------------------------------------------


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.classifier = nn.Linear(16, classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


CLASSES, PER_CLASS = 3, 30


def init_ctx(ipc: int) -> tuple[InitContext, nn.Module]:
    g = torch.Generator().manual_seed(11)
    means = torch.randn(CLASSES, 1, 4, 4, generator=g)
    labels = torch.arange(CLASSES).repeat(PER_CLASS)  # interleaved, so indices matter
    images = means[labels] + 0.7 * torch.randn(len(labels), 1, 4, 4, generator=g)
    torch.manual_seed(0)
    expert = TinyCNN()
    flat = parameters_to_vector(expert.parameters()).detach()
    ctx = InitContext(
        train_images=images,
        train_labels=labels,
        num_classes=CLASSES,
        ipc=ipc,
        class_names=tuple(str(c) for c in range(CLASSES)),
        expert_params=lambda e: flat.clone(),
        expert_epochs_available=1,
        make_model=TinyCNN,
        load_flat=lambda model, theta: vector_to_parameters(theta, model.parameters()),
    )
    return ctx, expert


def check_real_and_layout(result: Any, ctx: InitContext) -> None:
    ipc = ctx.ipc
    assert result.source == "kmeans-init"
    assert result.images.shape == (CLASSES * ipc, 1, 4, 4)
    assert torch.equal(result.labels, torch.arange(CLASSES).repeat_interleave(ipc))
    for image, label in zip(result.images, result.labels, strict=True):
        same_class = ctx.train_images[ctx.train_labels == label]
        assert (same_class == image).flatten(1).all(1).any()
    for c in range(CLASSES):
        block = result.images[c * ipc : (c + 1) * ipc].flatten(1)
        assert len(torch.unique(block, dim=0)) == ipc


def nearest_per_centroid(ctx: InitContext, expert: nn.Module, k: int, take: int) -> list[list]:
    """Recompute the plugin's clustering (same features and KMeans settings) in the test.

    Centroid j gets the ``take`` samples nearest to it that no earlier centroid took.
    """
    from sklearn.cluster import KMeans

    picks = []
    with torch.no_grad():
        for c in range(CLASSES):
            x = ctx.train_images[ctx.train_labels == c]
            feats = expert.embed(x).flatten(1).numpy()
            dist = KMeans(n_clusters=k, random_state=0, n_init=10).fit(feats).transform(feats)
            taken: set[int] = set()
            per_centroid = []
            for j in range(k):
                free = [int(i) for i in dist[:, j].argsort(kind="stable") if int(i) not in taken]
                taken.update(free[:take])
                per_centroid.append(x[free[:take]])
            picks.append(per_centroid)
    return picks


def test_kmeans_init_picks_nearest_to_centroids() -> None:
    run, logged = make_run()
    ctx, expert = init_ctx(ipc=3)
    result = KMeansInit(KMeansInit.Config()).init_synthetic(run, ctx)
    check_real_and_layout(result, ctx)
    assert logged["kmeans-init/clusters"] == 3
    for c, per_centroid in enumerate(nearest_per_centroid(ctx, expert, k=3, take=1)):
        torch.testing.assert_close(result.images[c * 3 : c * 3 + 3], torch.cat(per_centroid))


def test_kmeans_init_capped_clusters_take_several_each() -> None:
    run, logged = make_run()
    ctx, expert = init_ctx(ipc=6)
    result = KMeansInit(KMeansInit.Config(max_clusters=3)).init_synthetic(run, ctx)
    check_real_and_layout(result, ctx)
    assert logged["kmeans-init/clusters"] == 3
    for c, per_centroid in enumerate(nearest_per_centroid(ctx, expert, k=3, take=2)):
        torch.testing.assert_close(result.images[c * 6 : c * 6 + 6], torch.cat(per_centroid))


def test_kmeans_init_code_variant_ipc1_falls_back() -> None:
    run, logged = make_run()
    ctx, _ = init_ctx(ipc=1)
    plugin = KMeansInit(KMeansInit.Config(features="logits", clusters=10))
    with pytest.warns(UserWarning, match="K = ipc"):
        result = plugin.init_synthetic(run, ctx)
    check_real_and_layout(result, ctx)
    assert logged["kmeans-init/fallback"] == 1


def test_cluster_sizes() -> None:
    assert cluster_sizes(50, 0, 10) == [5] * 10
    assert cluster_sizes(3, 0, 10) == [1, 1, 1]
    assert cluster_sizes(7, 0, 3) == [3, 2, 2]
    assert cluster_sizes(10, 10, 10) == [1] * 10
    assert cluster_sizes(15, 10, 10) == [2] * 5 + [1] * 5
    assert cluster_sizes(1, 10, 10) == [1]
