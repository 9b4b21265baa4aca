"""Calling the hooks of ``hookspecs`` and combining their results: the one place for both rules.

Every result is checked where it is combined (type, shape, dtype, device, value)
and a bad one fails with the name of the plugin that returned it, so a wrong
answer can never be broadcast or summed into a run that then "succeeds". The
reductions are: ``expert_loss`` base · ∏ scales + Σ terms; ``expert_step``
the one answer (exclusive; none = the core's plain step); ``init_synthetic``
and ``sample_segment`` the first answer (exclusive, the core default last); ``init_labels``
the one answer (exclusive; none = hard labels); ``inner_loss_weight`` the product;
``perturb_expert`` start + Σ deltas; ``intermediate_match`` Σ terms.
Results are combined in pluggy's call order, so sums are the same bit for bit.
Observer hooks (``on_metrics``, ``on_close``) combine nothing: :func:`notify` calls them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import torch

from distillkit.context import (
    ExpertStepResult,
    LossScale,
    LossTerm,
    Segment,
    SegmentContext,
    SoftLabels,
    SyntheticInit,
)
from distillkit.errors import PluginRuntimeError, out_of_memory

Answers = list[tuple[str, Any]]


def call_each(hook: Any, name: str, **kwargs: Any) -> Answers:
    """Call every implementation of hook ``name`` as pluggy would; return (plugin name, result) pairs.

    ``None`` answers are dropped and a ``firstresult`` hook stops at the first
    answer, as in pluggy. Anything a plugin raises (``SystemExit`` too) becomes a
    :class:`PluginRuntimeError` naming it; only Ctrl-C and a failed allocation pass through
    (running out of memory is the stage's settings, not the plugin's fault: the stage names them).
    """
    caller = getattr(hook, name)
    first_only = bool(caller.spec and caller.spec.opts.get("firstresult"))
    answers: Answers = []
    for impl in reversed(caller.get_hookimpls()):
        try:
            result = impl.function(*(kwargs[arg] for arg in impl.argnames))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit from a plugin must not end the run silently
            if out_of_memory(exc):
                raise
            raise PluginRuntimeError(
                f"plugin '{impl.plugin_name}' failed in {name}: {type(exc).__name__}: {exc}"
            ) from exc
        if result is not None:
            answers.append((impl.plugin_name, result))
            if first_only:
                break
    return answers


def notify(
    hook: Any, name: str, dropped: MutableMapping[str, str], warn: Callable[[str], None], **kwargs: Any
) -> None:
    """Call every implementation of observer hook ``name``, except the plugins in ``dropped``.

    Answers are ignored. A plugin that raises is reported through ``warn`` (one line naming it)
    and added to ``dropped`` with its message, so it gets no further calls; the caller carries
    on, since an observer cannot have changed the run. Only Ctrl-C passes through.
    """
    for impl in reversed(getattr(hook, name).get_hookimpls()):
        if impl.plugin_name in dropped:
            continue
        try:
            impl.function(*(kwargs[arg] for arg in impl.argnames))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: an observer must not end the run
            message = f"plugin '{impl.plugin_name}' failed in {name}: {type(exc).__name__}: {exc}"
            dropped[impl.plugin_name] = message
            warn(f"{message} (it gets no further calls; the run goes on)")


def _bad(plugin: str, hook: str, what: str) -> PluginRuntimeError:
    return PluginRuntimeError(f"plugin '{plugin}' returned {what} from {hook}")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)} on {value.device}"
    return f"a {type(value).__name__}"


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` name one device when the current device is 0."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _items(answer: Any) -> list[Any]:
    return list(answer) if isinstance(answer, (list, tuple)) else [answer]


def _loss_term(plugin: str, hook: str, item: Any, device: torch.device) -> LossTerm:
    if not isinstance(item, LossTerm):
        raise _bad(plugin, hook, f"{_describe(item)}, not a LossTerm")
    value = item.value
    if not isinstance(value, torch.Tensor) or value.dim() != 0 or not value.is_floating_point():
        raise _bad(plugin, hook, f"LossTerm '{item.name}' with {_describe(value)}, not a 0-dim float tensor")
    if not _same_device(value.device, device):
        raise _bad(plugin, hook, f"LossTerm '{item.name}' on {value.device}, not on the run's {device}")
    return item


def _positive_number(plugin: str, hook: str, value: Any, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = float(value.detach())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(plugin, hook, f"{_describe(value)} as {what}, not a number")
    if not (math.isfinite(value) and value > 0):
        raise _bad(plugin, hook, f"{what} {value}, not a positive finite number")
    return float(value)


def combine_expert_loss(base: torch.Tensor, answers: Answers) -> tuple[torch.Tensor, dict[str, Any]]:
    """``base · ∏ scales + Σ terms`` over every plugin's ``expert_loss`` items, and the named parts."""
    scale, terms, parts = 1.0, [], {}
    for plugin, answer in answers:
        for item in _items(answer):
            if isinstance(item, LossScale):
                factor = _positive_number(plugin, "expert_loss", item.factor, f"LossScale '{item.name}'")
                scale *= factor
                parts[item.name] = factor
            else:
                term = _loss_term(plugin, "expert_loss", item, base.device)
                terms.append(term.value)
                parts[term.name] = term.value
    loss = base * scale
    for term in terms:
        loss = loss + term
    return loss, parts


def combine_weights(answers: Answers) -> float:
    """The product of every ``inner_loss_weight`` answer (each a positive finite number)."""
    return math.prod(_positive_number(p, "inner_loss_weight", w, "a weight") for p, w in answers)


def combine_deltas(answers: Answers, start: torch.Tensor) -> torch.Tensor:
    """``start + Σ deltas``; each delta must be a finite tensor exactly like ``start``."""
    deltas = []
    for plugin, delta in answers:
        if (
            not isinstance(delta, torch.Tensor)
            or delta.shape != start.shape
            or delta.dtype != start.dtype
            or not _same_device(delta.device, start.device)
        ):
            raise _bad(
                plugin,
                "perturb_expert",
                f"{_describe(delta)}; a delta must match ctx.start ({_describe(start)})",
            )
        if not bool(torch.isfinite(delta).all()):
            raise _bad(plugin, "perturb_expert", "a delta holding NaN or infinite values")
        deltas.append(delta)
    return start + sum(deltas) if deltas else start


def combine_terms(answers: Answers, device: torch.device) -> list[LossTerm]:
    """Every ``intermediate_match`` term (a LossTerm or a list of them), checked."""
    return [
        _loss_term(plugin, "intermediate_match", item, device)
        for plugin, answer in answers
        for item in _items(answer)
    ]


def _first(answers: Answers, hook: str, kind: type) -> tuple[str, Any]:
    """The first answer of a replace-style hook with a core default, checked to be a ``kind``."""
    if not answers:
        raise PluginRuntimeError(f"no plugin answered {hook} (the core default should have)")
    plugin, answer = answers[0]
    if not isinstance(answer, kind):
        raise _bad(plugin, hook, f"{_describe(answer)}, not a {kind.__name__}")
    return plugin, answer


def first_init(answers: Answers, count: int, shape: Sequence[int], classes: int) -> SyntheticInit:
    """The ``init_synthetic`` answer: ``count`` finite images of ``shape`` with labels in range."""
    plugin, init = _first(answers, "init_synthetic", SyntheticInit)
    images, labels = init.images, init.labels
    expected = [count, *shape]
    if (
        not isinstance(images, torch.Tensor)
        or list(images.shape) != expected
        or not images.is_floating_point()
    ):
        raise _bad(plugin, "init_synthetic", f"images as {_describe(images)}; expected float {expected}")
    if not isinstance(labels, torch.Tensor) or list(labels.shape) != [count] or labels.is_floating_point():
        raise _bad(plugin, "init_synthetic", f"labels as {_describe(labels)}; expected {count} integers")
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise _bad(plugin, "init_synthetic", f"labels outside 0..{classes - 1}")
    if not bool(torch.isfinite(images).all()):
        raise _bad(plugin, "init_synthetic", "images holding NaN or infinite values")
    return init


def first_labels(answers: Answers, count: int, classes: int) -> tuple[str, SoftLabels] | None:
    """The ``init_labels`` answer and its plugin: float logits [count, classes], lr ≥ 0, 0 ≤ momentum < 1.

    ``None`` when no plugin answered (the set keeps its hard labels). The logits may be on any
    device (the caller moves them); a bad answer fails naming the plugin, as for every hook.
    """
    if not answers:
        return None
    plugin, soft = answers[0]
    if not isinstance(soft, SoftLabels):
        raise _bad(plugin, "init_labels", f"{_describe(soft)}, not a SoftLabels")
    logits, expected = soft.logits, [count, classes]
    shaped = isinstance(logits, torch.Tensor) and list(logits.shape) == expected
    if not (shaped and logits.is_floating_point()):
        raise _bad(plugin, "init_labels", f"logits as {_describe(logits)}; expected float {expected}")
    if not bool(torch.isfinite(logits).all()):
        raise _bad(plugin, "init_labels", "logits holding NaN or infinite values")
    lr, momentum = _real(plugin, soft.lr, "lr"), _real(plugin, soft.momentum, "momentum")
    if lr < 0:
        raise _bad(plugin, "init_labels", f"lr {lr}, not >= 0")
    if not 0 <= momentum < 1:
        raise _bad(plugin, "init_labels", f"momentum {momentum}, not in [0, 1)")
    if not isinstance(soft.source, str):
        raise _bad(plugin, "init_labels", f"source as {_describe(soft.source)}, not a str")
    return plugin, soft


def _real(plugin: str, value: Any, what: str) -> float:
    """A finite real number from an ``init_labels`` answer (bools and tensors are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(plugin, "init_labels", f"{what} as {_describe(value)}, not a number")
    if not math.isfinite(value):
        raise _bad(plugin, "init_labels", f"{what} {value}, not a finite number")
    return float(value)


def first_segment(answers: Answers, ctx: SegmentContext) -> Segment:
    """The ``sample_segment`` answer: an expert that exists and a segment its trajectory holds."""
    plugin, seg = _first(answers, "sample_segment", Segment)
    e, t = seg.expert, seg.start_epoch
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (e, t)):
        raise _bad(plugin, "sample_segment", f"expert {e!r} and start_epoch {t!r}, not integers")
    if not 0 <= e < ctx.experts:
        raise _bad(plugin, "sample_segment", f"expert {e}, not in 0..{ctx.experts - 1}")
    held = ctx.epochs_available[e]
    if t < 0 or t + ctx.expert_epochs > held:
        raise _bad(
            plugin,
            "sample_segment",
            f"start_epoch {t}; expert {e} holds epochs 0..{held}, so t must be in "
            f"0..{held - ctx.expert_epochs} (expert_epochs {ctx.expert_epochs})",
        )
    return seg


def step_values(answers: Answers) -> dict[str, float]:
    """The ``expert_step`` answer's values as ``<name>/<key>`` floats (empty when none answered)."""
    if not answers:
        return {}
    plugin, result = answers[0]
    if not isinstance(result, ExpertStepResult):
        raise _bad(plugin, "expert_step", f"{_describe(result)}, not an ExpertStepResult")
    values = {}
    for key, value in result.values.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value.detach())
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise _bad(plugin, "expert_step", f"value '{key}' as {_describe(value)}, not a finite number")
        values[f"{result.name}/{key}"] = float(value)
    return values
