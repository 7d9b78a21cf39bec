"""Checks and reductions shared by the losses.

Shape contract (docs/ARCHITECTURE.md): logits are ``(N, C)`` with targets ``(N,)`` for
classification, or ``(N, C, H, W)`` with targets ``(N, H, W)`` for segmentation (any number
of spatial dims works). Targets hold class indices; ``ignore_index`` marks entries to skip.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from pipeline.errors import ConfigError, TrainingError

REDUCTIONS = ("mean", "sum", "none")


def _positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def check_step(who: str, step: Any, total_steps: Any, steps_per_epoch: Any = None) -> None:
    """The arguments of a time-dependent loss's ``set_step`` (the trainer's call; a wrong one is a
    bug in the caller, so a TrainingError naming the loss)."""
    if not _positive_int(total_steps):
        raise TrainingError(f"{who}: total_steps must be a positive integer, got {total_steps!r}")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= total_steps:
        raise TrainingError(f"{who}: step {step!r} is outside 0..{total_steps}")
    if steps_per_epoch is not None and not _positive_int(steps_per_epoch):
        raise TrainingError(f"{who}: steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")


def check_reduction(reduction: Any, allowed: tuple[str, ...] = REDUCTIONS) -> str:
    if reduction not in allowed:
        raise ConfigError(f"reduction must be one of {list(allowed)}, got {reduction!r}")
    return str(reduction)


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float inside the given bounds, else ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ConfigError(f"{name} must lie in {left}{lo}, {hi}{right}, got {value}")
    return value


def check_int(name: str, value: Any, *, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def check_ignore_index(value: Any) -> int:
    return check_int("ignore_index", value)


def check_inputs(
    logits: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None
) -> torch.Tensor:
    """Validate shapes and label values; return the target as int64.

    Raises ValueError naming the offending shape or label (a data or wiring error, not a config one).
    """
    return _checked(logits, target, num_classes, ignore_index)[0]


def check_and_split(
    logits: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``check_inputs``, the checked int64 target returned as (target with ignored entries set to class
    0, so that gathers stay in range; bool mask of the counted entries), the mask None when no entry is
    ignored: the usual case, which then skips the masking and costs one pass and one host sync."""
    target, plain = _checked(logits, target, num_classes, ignore_index)
    if plain:
        return target, None
    valid = valid_mask(target, ignore_index)
    if bool(valid.all()):
        return target, None
    return fill_ignored(target, valid), valid


def _checked(
    logits: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None
) -> tuple[torch.Tensor, bool]:
    """(the int64 target, whether every label is known to lie in 0..C-1 with none ignored)."""
    if logits.ndim < 2:
        raise ValueError(f"logits must be (N, C) or (N, C, H, W), got shape {tuple(logits.shape)}")
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"logits have {logits.shape[1]} channels but the loss was built for {num_classes} classes"
        )
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}: "
            f"expected {expected} (class indices, no channel dim)"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.dtype != torch.int64:
        target = target.long()
    if target.numel():
        # the usual case from the min and max alone: one pass and one host sync, not the six passes
        # and two syncs of the masks below
        low, high = torch.stack(torch.aminmax(target)).tolist()
        if 0 <= low and high < num_classes and (ignore_index is None or not low <= ignore_index <= high):
            return target, True
    valid = valid_mask(target, ignore_index)
    out_of_range = valid & ((target < 0) | (target >= num_classes))
    if bool(out_of_range.any()):
        bad = int(target[out_of_range][0])
        raise ValueError(
            f"target holds label {bad}, outside 0..{num_classes - 1} (ignore_index={ignore_index})"
        )
    return target, False


def valid_mask(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """True where the target counts (is not ``ignore_index``)."""
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


def fill_ignored(target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Replace ignored entries by class 0 so that gather / one-hot stay in range (they are masked later)."""
    return torch.where(valid, target, 0)


# A loss's term of a per-sample quantity x (log p_{i, y_i}: pipeline.losses._softmax; the margin:
# pipeline.losses.sharpness): (x, with_slope) -> (F, dF/dx_i or None), F per sample or reduced, the slope
# per sample or one number for all. It must not write into x.
Term = Callable[[torch.Tensor, bool], tuple[torch.Tensor, "torch.Tensor | None"]]


def reduced_term(
    term: Term, valid: torch.Tensor | None, reduction: str, total: torch.Tensor | float | None = None
) -> Term:
    """A per-sample term reduced by ``reduce_term``."""
    return lambda x, with_slope: reduce_term(*term(x, with_slope), valid, reduction, total)


def reduce_term(
    value: torch.Tensor, slope: torch.Tensor | None, valid: torch.Tensor | None, reduction: str,
    total: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A term's per-sample values (a per-sample loss) and slopes (None: values only), reduced over the
    ``valid`` samples (None: none ignored): 'mean' divides by ``total`` (default: their number, NaN when
    there are none, as torch's cross-entropy does: the trainer, not the loss, decides what a non-finite
    loss means; torch's weighted CE passes the sum of the weights), 'none' is 0 at ignored samples; the
    reduction's derivative in the slope."""
    if valid is not None:  # where, not a product: a value may be inf at an ignored sample
        value = torch.where(valid, value, 0.0)
        slope = None if slope is None else torch.where(valid, slope, 0.0)
    if reduction == "none":
        return value, slope
    if reduction == "sum":
        return value.sum(), slope
    if total is None and valid is None:
        scale = constant(1.0 / value.numel(), value)
        return value.sum().mul_(scale), (None if slope is None else slope * scale)
    count = valid.sum() if total is None else total
    return value.sum() / count, (None if slope is None else slope / count)


def constant(number: float, like: torch.Tensor) -> torch.Tensor:
    """``number`` as a 0-dim tensor of ``like``'s dtype and device, for the hot arithmetic of a loss: at a
    classification batch's size an operator with a Python number costs about 2 us on the CPU and the same
    operator with a 0-dim tensor 0.8 us (the number is wrapped in a new tensor every call;
    docs/BENCHMARKS.md §7 (k))."""
    return torch.scalar_tensor(number, dtype=like.dtype, device=like.device)


def chain_through_term(
    grad_x: torch.Tensor | None, grad_value: torch.Tensor | None, slope: torch.Tensor | None, shape: torch.Size
) -> torch.Tensor | None:
    """dL/dx in the backward of an autograd node that returned x and a term F of it: dL/dx + dL/dF dF/dx,
    of x's ``shape`` (F and its slope may be single numbers); None when neither output was used."""
    if grad_value is None:
        return grad_x
    if grad_x is not None:
        return torch.addcmul(grad_x, grad_value, slope)
    grad = grad_value * slope
    return grad if grad.shape == shape else grad.expand(shape)


def class_values(values: torch.Tensor, target: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """values[target] of a per-class vector (C,) at every sample (pixel), in ``dtype`` on the target's
    device (index_select: a fifth of advanced indexing's time on the CPU at a segmentation batch's size)."""
    if values.device != target.device or values.dtype != dtype:  # (each call costs at a classification batch's size)
        values = values.to(device=target.device, dtype=dtype)
    if target.ndim == 1:
        return values.index_select(0, target)
    return values.index_select(0, target.reshape(-1)).view(target.shape)


def channel_view(values: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Reshape a per-class vector (C,) so that it broadcasts against logits (N, C, *spatial)."""
    return values.to(device=logits.device, dtype=logits.dtype).view(1, -1, *([1] * (logits.ndim - 2)))


def safe_pow(base: torch.Tensor, exponent: float) -> torch.Tensor:
    """base^exponent for base >= 0, with a zero (not NaN) gradient where base is exactly 0.

    For 0 < exponent < 1 the derivative of x^exponent is infinite at 0, and autograd then
    gives inf * 0 = NaN once a prediction saturates (e.g. the focal term (1 - p)^gamma at
    p = 1). The value is unchanged; exponent 0 gives 1 everywhere (0^0 = 1, as in torch), exponent 1
    the base itself (no copy), a negative exponent 0 (not inf) at 0: the focal term's closed-form derivative
    (pipeline.losses.focal) multiplies it by log p = 0 there.
    """
    if exponent == 0.0:
        return torch.ones_like(base)
    if exponent == 1.0:
        return base
    if exponent >= 1.0:  # the derivative at 0 is finite (exponent * 0^(exponent - 1)): torch's pow is safe
        return base.pow(exponent)
    positive = base > 0
    safe_base = torch.where(positive, base, torch.ones_like(base))
    return torch.where(positive, safe_base.pow(exponent), torch.zeros_like(base))
