"""Evaluation protocol (docs/config.md): train fresh networks on a small set, report final-epoch accuracy.

K seeded networks, SGD (momentum 0.9, weight decay 5e-4), learning rate = the
learned α, lr × 0.1 after half the epochs, DSA on every batch, accuracy on the
real test set after the LAST epoch (nothing is selected on test accuracy).

``evaluate.parallel`` trains the networks of one model as one packed computation
(:mod:`distillkit.ensemble`) instead of one after another: each network gets the same
initialisation, random stream and SGD maths. Only float rounding differs (other kernels); over
300 epochs that moves an accuracy by a few test images, as a 1e-7 nudge of the weights would.
Models that cannot be packed (batch norm, ...) are trained one at a time whatever the setting.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from distillkit.config import EvaluateConfig
from distillkit.data.pixels import Images
from distillkit.ensemble import Member, NotPackable, PackedNetworks, pack, packed_accuracy, train_packed
from distillkit.errors import ALLOCATION_ERRORS, failed_allocations, out_of_memory
from distillkit.experts.train import accuracy
from distillkit.labels import label_loss
from distillkit.packed_sgd import PackedSGD


@dataclass(frozen=True)
class EvalResult:
    """Accuracies (fractions) of the evaluation networks of one model."""

    model: str
    runs: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.runs) if self.runs else float("nan")

    @property
    def std(self) -> float:
        return statistics.pstdev(self.runs) if len(self.runs) > 1 else 0.0

    def as_dict(self) -> dict:
        return {"model": self.model, "mean": self.mean, "std": self.std, "runs": list(self.runs)}


def protocol_line(cfg: EvaluateConfig, lr: float) -> str:
    """The declared protocol, printed above every result table."""
    after = f", momentum {cfg.momentum_after_decay} after" if cfg.momentum_after_decay >= 0 else ""
    return (
        f"{cfg.runs} nets × {cfg.epochs} epochs, SGD lr {lr:.4g} (momentum {cfg.momentum}, "
        f"wd {cfg.weight_decay}), lr ×{cfg.lr_decay_factor} at epoch {cfg.epochs // 2}{after}, "
        "DSA, final-epoch test accuracy"
    )


def train_on_set(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    cfg: EvaluateConfig,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    generator: torch.Generator,
) -> nn.Module:
    """Train ``model`` on (images, labels) with the evaluation schedule; return it.

    ``labels`` are class indices [n] or soft-label logits [n, classes] (:func:`distillkit.labels.label_loss`).
    """
    model.train()
    params = list(model.parameters())
    # The network as a packed ensemble of one (a leading axis of 1): torch.optim.SGD's arithmetic
    # without constructing a torch optimiser, which imports torch._dynamo (≈ 130 MiB, 2 s a process).
    optimizer = PackedSGD([p.detach().unsqueeze(0) for p in params], [lr], cfg.momentum, cfg.weight_decay)
    images, labels = images.detach(), labels.detach()
    for epoch in range(cfg.epochs):
        if epoch == cfg.epochs // 2:
            optimizer.lrs = [lr * cfg.lr_decay_factor]
            if cfg.momentum_after_decay >= 0:
                optimizer.momentum = cfg.momentum_after_decay
        order = torch.randperm(len(images), generator=generator, device=generator.device)
        for idx in order.to(images.device).split(cfg.batch_size):
            loss = label_loss(model(augment(images[idx], generator)), labels[idx])
            grads = torch.autograd.grad(loss, params)
            optimizer.step([grad.unsqueeze(0) for grad in grads])
    return model


@dataclass(frozen=True)
class EvalSet:
    """One image set to evaluate; its ``runs`` networks are seeded ``seed``, ``seed + 1``, …

    ``labels``: class indices [n], or soft-label logits [n, classes] that the networks train on.
    """

    images: torch.Tensor
    labels: torch.Tensor
    lr: float
    seed: int


#: Images of the first set that :func:`distillkit.ensemble.pack` checks the packing on.
CHECK_IMAGES = 8
#: What to change when a network's training does not fit.
EVAL_MEMORY_HINT = (
    "lower evaluate.batch_size; files written before are kept (a distilled set included: "
    "`distillkit evaluate RUN_DIR` evaluates it again)"
)


def packs_on(cfg: EvaluateConfig, device: torch.device) -> bool:
    """Whether ``evaluate.parallel`` asks for packed training on ``device``.

    "auto" packs on CUDA only: on CPU one network already keeps the cores busy and packed training
    measured slower (docs/performance.md, "Batched evaluation").
    """
    if cfg.parallel == "auto":
        return device.type == "cuda"
    return cfg.parallel == "on"


def evaluate_set(
    make_model: Callable[[str, int], nn.Module],
    model_name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    test: tuple[Images, torch.Tensor],
    cfg: EvaluateConfig,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    device: torch.device,
    seed: int,
    on_run: Callable[[float], None] = lambda acc: None,
) -> EvalResult:
    """Train ``cfg.runs`` fresh ``model_name`` networks (seeds ``seed + k``) and test each once at the end."""
    sets = [EvalSet(images, labels, lr, seed)]
    (result,) = evaluate_sets(make_model, model_name, sets, test, cfg, augment, device, on_run)
    return result


def evaluate_sets(
    make_model: Callable[[str, int], nn.Module],
    model_name: str,
    sets: Sequence[EvalSet],
    test: tuple[Images, torch.Tensor],
    cfg: EvaluateConfig,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    device: torch.device,
    on_run: Callable[[float], None] = lambda acc: None,
) -> list[EvalResult]:
    """:func:`evaluate_set` for several sets on one architecture, one result per set, in order.

    When packing is on (:func:`packs_on`), the networks of all sets with the same number of images
    train as ONE packed computation (e.g. a distilled and a random-real set of one ipc: 2 × runs
    networks); each network's accuracy is what :func:`evaluate_set` gives it alone, up to float
    rounding. ``on_run`` gets every network's accuracy, set by set and k = 0, 1, … within a set.
    """
    networks = [(index, k) for index in range(len(sets)) for k in range(cfg.runs)]
    accs = evaluate_networks(make_model, model_name, sets, networks, test, cfg, augment, device, on_run)
    return [EvalResult(model_name, tuple(accs[i * cfg.runs : (i + 1) * cfg.runs])) for i in range(len(sets))]


def evaluate_networks(
    make_model: Callable[[str, int], nn.Module],
    model_name: str,
    sets: Sequence[EvalSet],
    networks: Sequence[tuple[int, int]],
    test: tuple[Images, torch.Tensor],
    cfg: EvaluateConfig,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    device: torch.device,
    on_run: Callable[[float], None] = lambda acc: None,
) -> list[float]:
    """The accuracy of each network ``(set index, k)`` of ``networks``, in that order.

    Network k of a set is seeded ``set.seed + k`` whoever trains it, so the ranks of a job can
    share the networks out and gather exactly the accuracies one process computes (packed
    training, on when :func:`packs_on`, packs the networks given here).
    """
    test_x, test_y = (t.to(device) for t in test)
    sets = [EvalSet(s.images.to(device), s.labels.to(device), s.lr, s.seed) for s in sets]
    packed = None
    if networks and packs_on(cfg, device):

        def build(seed: int) -> nn.Module:
            return make_model(model_name, seed).to(device)

        packed = _packed_runs(build, sets, networks, (test_x, test_y), cfg, augment, device)
    accs = []
    for network in networks:
        acc = packed(network) if packed is not None else None
        if acc is None:
            item = sets[network[0]]
            seed = item.seed + network[1]
            model = make_model(model_name, seed).to(device)
            failing = f"evaluating {model_name} ran out of {device.type} memory"
            with failed_allocations(failing, EVAL_MEMORY_HINT):
                train_on_set(model, item.images, item.labels, item.lr, cfg, augment, _generator(device, seed))
                acc = accuracy(model, test_x, test_y)
        accs.append(acc)
        on_run(acc)
    return accs


def _packed_runs(
    build: Callable[[int], nn.Module],
    sets: Sequence[EvalSet],
    networks: Sequence[tuple[int, int]],
    test: tuple[Images, torch.Tensor],
    cfg: EvaluateConfig,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    device: torch.device,
) -> Callable[[tuple[int, int]], float | None] | None:
    """Pack ``networks`` (``build(seed)`` makes one) by set size; ``None`` when they cannot be.

    Every group is packed (and checked) before any trains, so a refusal falls back for all sets
    alike. The returned function trains a network's group the first time one of its networks is
    asked for and gives that network's accuracy, or ``None`` when the group ran out of device
    memory: its networks then train one at a time (each from its own seed, so nothing is lost).
    """
    groups: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for network in networks:
        groups.setdefault(tuple(sets[network[0]].images.shape), []).append(network)
    packed: dict[tuple[int, ...], PackedNetworks] = {}
    for key, members in groups.items():
        models = [build(sets[i].seed + k) for i, k in members]
        try:
            packed[key] = pack(models, sets[members[0][0]].images[:CHECK_IMAGES].detach())
        except NotPackable:
            return None
        except ALLOCATION_ERRORS as exc:  # the packing check itself ran out of memory: one at a time
            if not out_of_memory(exc):
                raise
            return None
    done: dict[tuple[int, int], float | None] = {}

    def accuracy_of(network: tuple[int, int]) -> float | None:
        if network not in done:
            key = tuple(sets[network[0]].images.shape)
            members = [
                Member(sets[i].images, sets[i].labels, sets[i].lr, _generator(device, sets[i].seed + k))
                for i, k in groups[key]
            ]
            try:
                trained = train_packed(packed.pop(key), members, cfg, augment)
                accs: list[float | None] = list(packed_accuracy(trained, *test))
            except ALLOCATION_ERRORS as exc:
                if not out_of_memory(exc):
                    raise
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                accs = [None] * len(members)
            done.update(zip(groups[key], accs, strict=True))
        return done[network]

    return accuracy_of


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)
