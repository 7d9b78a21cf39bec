"""Dynamical loss: Ruiz-Garcia, Zhang, Schoenholz and Liu, "Tilting the playing field: Dynamical
loss functions for machine learning", ICML 2021.

The loss is a cross-entropy whose per-class weights change with the optimizer step, one
class at a time being emphasised, so that the loss landscape keeps tilting during training:

    L(t) = 1/N * sum_i Gamma_{y_i}(t) * CE_i

The schedule is a pure function of the step (``dynamical_weights``); the module holds only
the step the trainer last set, so resuming from a checkpoint reproduces it exactly.

The period T is given in one of three units (``resolve_period``): optimizer steps (``period``),
epochs (``period_epochs``), or cycles over the run (``cycles``: every class of the cycle emphasised k
times in all). The paper's regime is many cycles (3 classes, T = 5000 steps over 70k steps, about 4.7
cycles) with a large amplitude (A = 70); a period in steps means a different number of cycles at every
data-set size and batch size, the other two units do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch.nn.modules.loss import _Loss

from pipeline.errors import ConfigError, TrainingError
from pipeline.losses._checks import (
    check_and_split,
    check_bool,
    check_ignore_index,
    check_int,
    check_number,
    check_reduction,
    check_step,
    class_values,
    reduced_term,
)
from pipeline.losses._softmax import compute_dtype, softmax_sample_loss
from pipeline.losses.cross_entropy import nll_term
from pipeline.losses.registry import register_loss
from pipeline.losses.weighting import resolve_weights


def check_cycle(cycle: Any, num_classes: int) -> list[int]:
    """The emphasis cycle as a list of distinct class (channel) indices; None means all classes in order."""
    if cycle is None:
        return list(range(num_classes))
    if isinstance(cycle, (str, bytes)) or not isinstance(cycle, Sequence) or len(cycle) == 0:
        raise ConfigError(f"cycle must be a non-empty list of class indices, got {cycle!r}")
    for position, index in enumerate(cycle):
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_classes:
            raise ConfigError(f"cycle[{position}] = {index!r} is not a class index in 0..{num_classes - 1}")
    if len(set(cycle)) != len(cycle):
        raise ConfigError(f"cycle repeats a class: {list(cycle)}")
    return [int(index) for index in cycle]


PERIOD_UNITS = {"period": 2, "period_epochs": 1, "cycles": 1}  # the three ways to give T, and each one's minimum


def check_period_unit(period: Any = None, period_epochs: Any = None, cycles: Any = None) -> tuple[str, int]:
    """(unit, value) of the one period setting given; ConfigError if none or several are."""
    given = {key: value for key, value in zip(PERIOD_UNITS, (period, period_epochs, cycles)) if value is not None}
    if len(given) != 1:
        raise ConfigError(f"give exactly one of period (steps), period_epochs or cycles; got {sorted(given) or 'none'}")
    (unit, value), = given.items()
    return unit, check_int(unit, value, low=PERIOD_UNITS[unit])


def resolve_period(unit: str, value: int, *, cycle_length: int, total_steps: int, steps_per_epoch: int | None = None) -> int:
    """The period T in optimizer steps:

        period: T            T
        period_epochs: e     T = e * steps_per_epoch
        cycles: k            T = total_steps // (k * cycle_length)   (k passes over the cycle in the run)

    A period shorter than 2 steps cannot tilt anything: ConfigError naming the setting.
    """
    if unit == "period":
        return value
    if unit == "period_epochs":
        if steps_per_epoch is None:
            raise TrainingError("dynamical loss: period_epochs needs the steps per epoch, which set_step was not given")
        resolved, why = value * steps_per_epoch, f"period_epochs: {value} x {steps_per_epoch} steps per epoch"
    else:
        resolved = total_steps // (value * cycle_length)
        why = f"cycles: {value} over {cycle_length} classes in {total_steps} steps"
    if resolved < 2:
        raise ConfigError(f"dynamical loss: {why} gives a period of {resolved} step(s); it must be >= 2 (fewer cycles, or a longer run)")
    return resolved


def dynamical_weights(
    step: int, num_classes: int, amplitude: float, period: int, cycle: Sequence[int] | None = None
) -> torch.Tensor:
    """Class weights Gamma(step), float32 of shape (C,), summing to C.

    Period k = step // T emphasises class c = cycle[k mod len(cycle)]. With phase
    phi = (step mod T) / T, the raw weights are

        g_c = 1 + (A - 1) * (1 - |2 phi - 1|)     (triangle: 1 at phi=0, A at phi=1/2, back to 1)
        g_j = 1                                   for j != c

    and Gamma = C * g / sum(g).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    check_number("amplitude", amplitude, low=1.0)
    check_int("period", period, low=1)
    return _triangle_weights(step, num_classes, amplitude, period, check_cycle(cycle, num_classes))


def _triangle_weights(step: int, num_classes: int, amplitude: float, period: int, order: Sequence[int]) -> torch.Tensor:
    """``dynamical_weights`` of arguments already checked (the module checks them once, not every step)."""
    emphasised = order[(step // period) % len(order)]
    phase = (step % period) / period
    raw = [1.0] * num_classes  # C numbers: Python floats (float64), one tensor at the end
    raw[emphasised] = 1.0 + (amplitude - 1.0) * (1.0 - abs(2.0 * phase - 1.0))
    total = sum(raw)
    return torch.tensor([g * num_classes / total for g in raw], dtype=torch.float32)


@register_loss("dynamical", weights_param="weights")
class DynamicalLoss(_Loss):
    """Cross-entropy weighted per class by ``dynamical_weights`` at the step set by ``set_step``.

    Args:
        amplitude: A >= 1, the emphasised class's raw weight at mid-period.
        period: T >= 2, in optimizer steps; or
        period_epochs: T in epochs (T = period_epochs * steps per epoch); or
        cycles: k >= 1 passes over the cycle in the whole run, T = total_steps // (k * len(cycle)).
            Exactly one of the three. ``period_epochs`` and ``cycles`` mean the same at every data
            size; T is resolved from what the trainer passes to ``set_step``.
        cycle: class (channel) indices to emphasise in turn; default all classes. For
            segmentation pass only lesion channels (1..C-1) to leave background alone.
        final_plain_ce: if true, the last period (step >= total_steps - T, with the resolved T) is
            plain CE (times the static weights, if any). It replaces whatever the schedule would
            have emphasised there: with ``cycles: k`` that is the last class of the last cycle, so
            with ``cycles: 1`` that class is never emphasised.
        weights: optional static class weights under the oscillation (a scheme of
            pipeline.losses.weighting or a list): the loss is Gamma_{y_i}(t) * w_{y_i} * CE_i. Like
            every weight vector of pipeline.losses.weighting they have mean 1 over the training
            samples (sum_i pi_i w_i = 1, priors pi from ``class_counts``), so the loss keeps the
            scale of CE. Segmentation needs them: per pixel, background outnumbers a 5-px lesion
            type ~1000:1 and an unweighted CE never learns it within a short schedule
            (docs/BENCHMARKS.md, small-lesion study).
    'mean' divides by the number of non-ignored samples (pixels), not by the sum of weights.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        amplitude: float,
        period: int | None = None,
        period_epochs: int | None = None,
        cycles: int | None = None,
        cycle: Sequence[int] | None = None,
        final_plain_ce: bool = False,
        weights: Any = None,
        beta: float = 0.999,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=check_reduction(reduction))
        self.num_classes = num_classes
        # resolve_weights normalises to sum_i pi_i w_i = 1 (pipeline.losses.weighting.normalise_weights).
        static = resolve_weights(weights, num_classes=num_classes, class_counts=class_counts, beta=beta)
        self.register_buffer("static_weights", static)
        self.amplitude = check_number("amplitude", amplitude, low=1.0)
        self.cycle = check_cycle(cycle, num_classes)
        self.period_unit = check_period_unit(period, period_epochs, cycles)
        self.final_plain_ce = check_bool("final_plain_ce", final_plain_ce)
        self.ignore_index = check_ignore_index(ignore_index)
        self._step: int | None = None
        self._total_steps: int | None = None
        self.period: int | None = None  # T in steps, resolved by set_step

    def set_step(self, step: int, total_steps: int, steps_per_epoch: int | None = None) -> None:
        """Called by the trainer before every forward with the optimizer step about to be taken, the
        run's total steps and its steps per epoch (needed by ``period_epochs`` only)."""
        check_step("dynamical loss", step, total_steps, steps_per_epoch)
        self.period = resolve_period(*self.period_unit, cycle_length=len(self.cycle), total_steps=total_steps,
                                     steps_per_epoch=steps_per_epoch)
        self._step, self._total_steps = step, total_steps

    def current_weights(self) -> torch.Tensor:
        """Gamma at the current step (all ones in the final plain-CE period)."""
        if self._step is None or self._total_steps is None or self.period is None:
            raise TrainingError("dynamical loss: set_step(step, total_steps) was not called before use")
        if self.final_plain_ce and self._step >= self._total_steps - self.period:
            return torch.ones(self.num_classes)
        return _triangle_weights(self._step, self.num_classes, self.amplitude, self.period, self.cycle)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target, valid = check_and_split(logits, target, self.num_classes, self.ignore_index)
        weights = self.current_weights().to(logits.device)
        if self.static_weights is not None:
            weights = weights * self.static_weights
        # Gamma_{y_i} * CE_i per sample; the mean is over samples, not over the weights
        term = partial(nll_term, weight=class_values(weights, target, compute_dtype(logits)))
        return softmax_sample_loss(logits, target, reduced_term(term, valid, self.reduction))
