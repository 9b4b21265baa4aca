"""Train K networks of one architecture as one computation: a *packed* ensemble.

Why: evaluation networks are tiny (ConvNetW32 ≈ 24k parameters, 10–100 training images), so
trained one after another they leave an accelerator waiting on kernel launches. Packing puts the
K networks side by side along the channel axis (network k owns channel block k): each
convolution becomes one grouped convolution, each group norm one group norm with K times the
groups, each linear layer one batched matrix product, and the model's own ``forward`` runs
unchanged on the packed input ``[B, K·C, H, W]``. Nothing mixes channel blocks, so network k
sees exactly its own images, parameters, gradients and optimiser state: the same training as
alone, up to float rounding (other kernels sum in other orders).

Grouped convolutions were measured faster than ``torch.func.vmap`` over stacked parameters
(2.1× one network at a time per epoch on CPU, against 1.3×) and need no functional rewrite of the
model. On CPU both lose to one network at a time except for the tiniest sets: one network already
keeps the cores busy there (docs/performance.md, "Batched evaluation").

Never silently wrong: only layers whose packed form is known are packed (:data:`PACKERS`;
stateless channel-wise layers in :data:`CHANNELWISE` pass through), a model with buffers (batch
norm running statistics) or any other layer is refused by :func:`unsupported_reason`, and
:func:`pack` checks on a few images that the packed model reproduces every network's logits and
gradients, which refuses a ``forward`` that mixes channels. A refusal raises
:class:`NotPackable`; callers then train the networks one at a time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillkit.config import EvaluateConfig
from distillkit.errors import out_of_memory
from distillkit.experts.train import TEST_BATCH
from distillkit.labels import is_soft, label_loss
from distillkit.models.instancenorm import InstanceNorm
from distillkit.models.pooling import AvgPool2x2
from distillkit.packed_sgd import PackedSGD

__all__ = [
    "CHANNELWISE",
    "PACKERS",
    "Member",
    "NotPackable",
    "PackedNetworks",
    "PackedSGD",
    "pack",
    "packed_accuracy",
    "train_packed",
    "unsupported_reason",
]

#: Stateless layers that act on each channel (or each element) alone: correct on packed maps as they
#: are. (``nn.Flatten`` over dimensions 1..-1 also is: it keeps network k's features in block k.)
CHANNELWISE: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.MaxPool2d,
    nn.AvgPool2d,
    AvgPool2x2,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


class NotPackable(Exception):
    """The networks cannot be trained as one packed computation (the reason is the message)."""


class PackedConv2d(nn.Module):
    """K ``Conv2d`` layers as one grouped convolution; ``weight`` is ``[K, out, in/groups, kh, kw]``."""

    def __init__(self, convs: Sequence[nn.Conv2d]) -> None:
        super().__init__()
        first = convs[0]
        self.size = len(convs)
        self.weight = nn.Parameter(torch.stack([c.weight.detach() for c in convs]))
        self.bias = None
        if first.bias is not None:
            self.bias = nn.Parameter(torch.stack([c.bias.detach() for c in convs]))
        self.stride, self.padding, self.dilation = first.stride, first.padding, first.dilation
        self.groups = first.groups * self.size

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.flatten()
        weight = self.weight.flatten(0, 1)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class PackedGroupNorm(nn.Module):
    """K ``GroupNorm`` layers as one, with K times the groups (each group stays inside one network)."""

    def __init__(self, norms: Sequence[nn.GroupNorm]) -> None:
        super().__init__()
        first = norms[0]
        self.size = len(norms)
        self.num_groups, self.eps = first.num_groups * self.size, first.eps
        self.weight = self.bias = None
        if first.affine:
            self.weight = nn.Parameter(torch.stack([n.weight.detach() for n in norms]))
            self.bias = nn.Parameter(torch.stack([n.bias.detach() for n in norms]))

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.flatten()
        bias = None if self.bias is None else self.bias.flatten()
        return F.group_norm(x, self.num_groups, weight, bias, self.eps)


class PackedLinear(nn.Module):
    """K ``Linear`` layers as one batched product: ``[..., K·in]`` → ``[..., K·out]``.

    Network k's features are block k of the last axis, which is where ``flatten(1)`` of a packed
    ``[B, K·C, H, W]`` map puts them (channel-major order within each block, as alone).
    """

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        first = linears[0]
        self.size = len(linears)
        self.weight = nn.Parameter(torch.stack([lin.weight.detach() for lin in linears]))
        self.bias = None
        if first.bias is not None:
            self.bias = nn.Parameter(torch.stack([lin.bias.detach() for lin in linears]))

    def forward(self, x: Tensor) -> Tensor:
        lead, features = x.shape[:-1], self.weight.shape[2]
        rows = x.reshape(-1, self.size, features).transpose(0, 1)  # [K, M, in]
        if self.bias is None:
            out = torch.bmm(rows, self.weight.transpose(1, 2))
        else:
            out = torch.baddbmm(self.bias.unsqueeze(1), rows, self.weight.transpose(1, 2))
        return out.transpose(0, 1).reshape(*lead, -1)  # [..., K·out]


#: Layers with parameters and their packed form (exact types: a subclass may change ``forward``).
PACKERS: dict[type[nn.Module], Callable[[Sequence[nn.Module]], nn.Module]] = {
    nn.Conv2d: PackedConv2d,
    nn.GroupNorm: PackedGroupNorm,
    InstanceNorm: PackedGroupNorm,
    nn.Linear: PackedLinear,
}


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be packed, from its structure alone; ``None`` if it can (see :func:`pack`)."""
    for name, _ in model.named_buffers():
        return f"it has buffers ({name}; e.g. batch-norm running statistics)"
    for name, param in model.named_parameters():
        if not param.requires_grad:
            return f"parameter {name} is frozen"
    for name, module in model.named_modules():
        kind = type(module)
        where = name or "the model"
        if kind in PACKERS:
            if kind is nn.Conv2d and module.padding_mode != "zeros":
                return f"{where} pads with {module.padding_mode!r}"
        elif kind is nn.Flatten:
            if (module.start_dim, module.end_dim) != (1, -1):
                return f"{where} flattens dimensions {module.start_dim}..{module.end_dim}, not 1..-1"
        elif next(module.parameters(recurse=False), None) is not None:
            return f"{where} ({kind.__name__}) holds parameters of its own"
        elif next(module.children(), None) is None and kind not in CHANNELWISE:
            return f"{where} is a {kind.__name__}, a layer with no packed form"
    return None


class PackedNetworks(nn.Module):
    """K networks of one architecture packed along channels; built by :func:`pack`.

    ``forward`` takes ``[B, K·C, H, W]`` (network k's images in channel block k) and returns
    ``[B, K, classes]``. Every parameter keeps its name in the original model and gains a
    leading network axis of size K (``named_parameters()`` order is the model's).
    """

    def __init__(self, network: nn.Module, size: int) -> None:
        super().__init__()
        self.network = network
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x).unflatten(1, (self.size, -1))

    def stacked(self) -> dict[str, Tensor]:
        """Parameters by the original names, each ``[K, *shape]``."""
        return dict(self.network.named_parameters())

    def load_into(self, models: Sequence[nn.Module]) -> None:
        """Copy network k's parameters into ``models[k]`` (e.g. to test or keep them)."""
        stacked = self.stacked()
        with torch.no_grad():
            for k, model in enumerate(models):
                for name, param in model.named_parameters():
                    param.copy_(stacked[name][k])


#: Networks the packing check runs on (in float64): the packed layers are the same for any K.
CHECKED_NETWORKS = 3


def pack(models: Sequence[nn.Module], sample: Tensor) -> PackedNetworks:
    """Pack ``models`` (same architecture, on one device) and check the packing on ``sample`` images.

    The check packs float64 copies of the first :data:`CHECKED_NETWORKS` networks and compares, per
    network, the packed logits (train and eval mode) and the gradients of a cross-entropy loss with
    the network's own. In float64 rounding stays many orders of magnitude below any structural
    difference (float32 rounding, amplified by deep instance-normalised stacks, would not). ``sample``
    is a few images on the models' device; no random number is drawn, no model is changed.
    Raises :class:`NotPackable` with the reason.
    """
    if not models:
        raise NotPackable("there are no networks")
    reason = unsupported_reason(models[0])
    if reason is not None:
        raise NotPackable(reason)
    shapes = [(n, p.shape) for n, p in models[0].named_parameters()]
    if any([(n, p.shape) for n, p in m.named_parameters()] != shapes for m in models[1:]):
        raise NotPackable("the networks differ in architecture")
    checked = [copy.deepcopy(m).double() for m in models[:CHECKED_NETWORKS]]
    _check(_packed(checked), checked, sample.detach().double())
    return _packed(models)


def _packed(models: Sequence[nn.Module]) -> PackedNetworks:
    """A copy of ``models[0]`` whose parametrised layers hold all the networks' parameters."""
    network = copy.deepcopy(models[0])
    packed: dict[int, nn.Module] = {}
    for path, module in list(models[0].named_modules()):
        build = PACKERS.get(type(module))
        if build is not None:
            packed[id(module)] = build([m.get_submodule(path) for m in models])
    _replace(network, models[0], packed)
    return PackedNetworks(network, len(models)).train(models[0].training)


def _replace(copied: nn.Module, original: nn.Module, packed: dict[int, nn.Module]) -> None:
    """Put ``packed[id(layer)]`` wherever ``original`` holds ``layer`` (shared layers stay shared)."""
    for (name, child), (_, original_child) in zip(
        list(copied.named_children()), list(original.named_children()), strict=True
    ):
        if id(original_child) in packed:
            setattr(copied, name, packed[id(original_child)])
        else:
            _replace(child, original_child, packed)


def _check(packed: PackedNetworks, models: Sequence[nn.Module], sample: Tensor) -> None:
    """Raise :class:`NotPackable` unless ``packed`` gives every network its own logits and gradients."""
    size = len(models)
    inputs = sample.repeat(1, size, *([1] * (sample.ndim - 2)))
    try:
        packed.eval()
        with torch.no_grad():
            eval_logits = packed(inputs)
        packed.train()
        logits = packed(inputs)
        targets = logits.detach().argmin(2)  # any labels will do; these vary per network
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum") / len(sample)
        names, params = zip(*packed.stacked().items(), strict=True)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    except (RuntimeError, ValueError, IndexError) as error:  # e.g. a reshape by a fixed channel count
        if out_of_memory(error):
            raise  # the model packs; the device is full: the caller falls back on that ground
        raise NotPackable(f"its forward fails on packed inputs ({error})") from None
    for k, model in enumerate(models):
        model.eval()
        with torch.no_grad():
            own_eval = model(sample)
        model.train()
        own = model(sample)
        own_loss = F.cross_entropy(own, targets[:, k])
        own_grads = torch.autograd.grad(own_loss, list(model.parameters()), allow_unused=True)
        if not (_close(logits[:, k], own, own) and _close(eval_logits[:, k], own_eval, own_eval)):
            raise NotPackable("its forward mixes the packed networks' channels (logits differ)")
        if any(g is None for g in (*grads, *own_grads)):
            unused = next(
                n for n, g, o in zip(names, grads, own_grads, strict=True) if g is None or o is None
            )
            raise NotPackable(f"parameter {unused} gets no gradient")
        scale = torch.stack([g.abs().max() for g in own_grads])
        for name, grad, own_grad in zip(names, grads, own_grads, strict=True):
            if not _close(grad[k], own_grad, scale):
                raise NotPackable(f"the gradient of {name} differs when packed")


def _close(packed: Tensor, alone: Tensor, scale: Tensor) -> bool:
    """Equal up to float64 rounding, relative to the largest magnitude in ``scale``."""
    if packed.shape != alone.shape:
        return False
    if not alone.numel():
        return True
    bound = 1e-9 * scale.detach().abs().max() + 1e-30
    return bool((packed.detach() - alone.detach()).abs().max() <= bound)


@dataclass(frozen=True)
class Member:
    """What one network of a packed ensemble trains on, and its own random stream."""

    images: Tensor
    labels: Tensor
    lr: float
    generator: torch.Generator


def train_packed(
    packed: PackedNetworks,
    members: Sequence[Member],
    cfg: EvaluateConfig,
    augment: Callable[[Tensor, torch.Generator], Tensor],
) -> PackedNetworks:
    """Train network k of ``packed`` on ``members[k]`` with the evaluation schedule; return ``packed``.

    Per network this is ``distillkit.evaluate.train_on_set``: each epoch a ``randperm`` from the
    network's generator, then per batch ``augment(images[idx], generator)``, one SGD step, the
    lr × ``lr_decay_factor`` (and the momentum change) at epoch ``epochs // 2``. Each generator is
    used in that order, so it draws what it would alone. All members need the same number of
    images (the same batches); their images, labels (hard or soft, mixed) and lr may differ.
    """
    if len(members) != packed.size:
        raise ValueError(f"{packed.size} packed networks but {len(members)} members")
    count = len(members[0].images)
    if any(len(m.images) != count for m in members):
        raise ValueError("packed members need the same number of images (group them by size)")
    packed.train()
    params = list(packed.stacked().values())
    optimizer = PackedSGD(params, [m.lr for m in members], cfg.momentum, cfg.weight_decay)
    images = [(m.images.detach(), m.labels.detach()) for m in members]
    for epoch in range(cfg.epochs):
        if epoch == cfg.epochs // 2:
            optimizer.lrs = [m.lr * cfg.lr_decay_factor for m in members]
            if cfg.momentum_after_decay >= 0:
                optimizer.momentum = cfg.momentum_after_decay
        orders = [
            torch.randperm(count, generator=m.generator, device=m.generator.device)
            .to(x.device)
            .split(cfg.batch_size)
            for m, (x, _) in zip(members, images, strict=True)
        ]
        for batch in zip(*orders, strict=True):
            inputs = torch.cat(
                [augment(x[idx], m.generator) for m, (x, _), idx in zip(members, images, batch, strict=True)],
                dim=1,
            )
            targets = [y[idx] for (_, y), idx in zip(images, batch, strict=True)]
            loss = _packed_loss(packed(inputs), targets)
            optimizer.step(torch.autograd.grad(loss, params))
    return packed


def _packed_loss(logits: Tensor, targets: Sequence[Tensor]) -> Tensor:
    """Σ_k of network k's mean loss on its batch, so network k's gradient is that of its own loss.

    ``logits`` is ``[B, K, classes]``; ``targets[k]`` network k's labels, hard or soft
    (:func:`distillkit.labels.label_loss`). Hard labels only: one fused cross-entropy over all networks.
    """
    if any(is_soft(y) for y in targets):
        return torch.stack([label_loss(logits[:, k], y) for k, y in enumerate(targets)]).sum()
    stacked = torch.stack(list(targets), dim=1)
    return F.cross_entropy(logits.flatten(0, 1), stacked.flatten(), reduction="sum") / len(logits)


@torch.no_grad()
def packed_accuracy(
    packed: PackedNetworks, images: Tensor, labels: Tensor, batch: int = TEST_BATCH
) -> list[float]:
    """Top-1 accuracy of every network in eval mode (as ``experts.train.accuracy`` per network).

    ``images`` (a tensor or :class:`~distillkit.data.pixels.NormalisedPixels`) on the networks'
    device; chunks of ``batch // K`` images keep the activations at what one network's use.
    """
    was_training = packed.training
    packed.eval()
    size = packed.size
    chunk = max(1, batch // size)
    correct = torch.zeros(size, dtype=torch.long, device=labels.device)
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk]
        logits = packed(x.repeat(1, size, *([1] * (x.ndim - 2))))
        correct += (logits.argmax(2) == labels[i : i + chunk, None]).sum(0)
    packed.train(was_training)
    return [c / max(len(images), 1) for c in correct.tolist()]
