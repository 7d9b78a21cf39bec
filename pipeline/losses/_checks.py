"""Checks and reductions shared by the losses.

Shape contract (docs/ARCHITECTURE.md): logits are ``(N, C)`` with targets ``(N,)`` for
classification, or ``(N, C, H, W)`` with targets ``(N, H, W)`` for segmentation (any number
of spatial dims works). Targets hold class indices; ``ignore_index`` marks entries to skip.
"""

from __future__ import annotations

import math
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
    target = target.long()
    valid = valid_mask(target, ignore_index)
    out_of_range = valid & ((target < 0) | (target >= num_classes))
    if bool(out_of_range.any()):
        bad = int(target[out_of_range][0])
        raise ValueError(
            f"target holds label {bad}, outside 0..{num_classes - 1} (ignore_index={ignore_index})"
        )
    return target


def valid_mask(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """True where the target counts (is not ``ignore_index``)."""
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


def fill_ignored(target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Replace ignored entries by class 0 so that gather / one-hot stay in range (they are masked later)."""
    return torch.where(valid, target, 0)


def split_ignored(target: torch.Tensor, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A checked target as (target with ignored entries set to class 0, bool mask of the counted
    entries), the mask None when no entry is ignored (the usual case, which then skips the masking)."""
    valid = valid_mask(target, ignore_index)
    if bool(valid.all()):
        return target, None
    return fill_ignored(target, valid), valid


def reduce_masked(loss: torch.Tensor, valid: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Reduce a per-sample (per-pixel) loss, skipping ignored entries (``valid`` None: none ignored).

    'mean' divides by the number of valid entries (NaN when there are none, as torch's
    cross-entropy does: the trainer, not the loss, decides what a non-finite loss means).
    'none' returns the per-entry tensor with ignored entries set to 0.
    """
    if valid is None:
        return loss if reduction == "none" else loss.sum() if reduction == "sum" else loss.mean()
    loss = torch.where(valid, loss, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum()


def class_values(values: torch.Tensor, target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[target] of a per-class vector (C,) at every sample (pixel), in ``like``'s dtype and device
    (index_select: a fifth of advanced indexing's time on the CPU at a segmentation batch's size)."""
    values = values.to(device=like.device, dtype=like.dtype)
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
