"""Sharpness-controlled margin loss: the gain phi_eps(x) = -x / sqrt(x^2 + eps) of Le Bich Phuong and
Nguyen Tien Zung, "Gradient flows of loss functions" (talk, Ritsumeikan University, Dec 2018; the
project's seed ``000``), applied to the multi-class margin.

The talk's one-threshold model (docs/SCIENCE.md, ``pipeline/lab/threshold.py``) shows why eps matters:

- eps -> infinity: phi_eps(x) ~ -x / sqrt(eps), linear in the margin. Every sample pulls on the
  decision boundary with the same force whatever its margin, so the optimum balances the class
  *masses* and moves into the minority class (bias against the minority).
- eps -> 0: phi_eps(x) -> -sign(x), i.e. the loss tends to twice the 0-1 error. Only samples within
  about sqrt(eps) of the boundary pull, so the optimum tends to the true boundary even on imbalanced
  data. At eps = 0 the loss is piecewise constant and its gradient is zero almost everywhere.
- The price (the talk's "sharpen the loss but decrease the learning rate at the same time"): the
  stochastic gradient gets noisier as eps shrinks. In the one-threshold model with data density rho
  at the boundary, the population loss has curvature h = 2 rho / sqrt(eps) at the boundary and a
  single sample's gradient has variance sigma^2 = rho * (3 pi / 8) / sqrt(eps) (the integral of
  phi_eps'^2). Mini-batch SGD with learning rate lr and batch B is then an Ornstein-Uhlenbeck
  process around the optimum whose stationary variance is lr sigma^2 / (2 h B) = (3 pi / 32) lr / B:
  independent of eps. The linearisation holds only while that spread is small against the width
  sqrt(eps) of the transition, i.e. for Var / eps = (3 pi / 32) lr / (B eps) small. Keeping the
  relative spread fixed while eps shrinks therefore needs **lr proportional to eps**; with a fixed
  lr the threshold's spread, measured in units of sqrt(eps), grows like eps^(-1/2) (and, once it
  exceeds sqrt(eps), in absolute units too). ``pipeline.lab.threshold`` measures both.

Hence the schedule: ``eps_final`` shrinks eps geometrically over the run,

    eps(t) = eps * (eps_final / eps) ** (t / total_steps)            (``sharpness_eps``)

and the coupled learning rate is the scheduler ``geometric`` (pipeline/optim.py) with
``final_factor = eps_final / eps``, which gives lr(t) / lr(0) = eps(t) / eps exactly (both are
pure functions of the optimizer step the trainer passes, so a resumed run continues both).
The margin is in logit units, so eps is in squared logit units.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch.nn.modules.loss import _Loss

from pipeline.errors import ConfigError, TrainingError
from pipeline.losses._checks import (
    Term,
    chain_through_term,
    check_and_split,
    check_ignore_index,
    check_number,
    check_reduction,
    check_step,
    class_values,
    constant,
    reduced_term,
)
from pipeline.losses.registry import register_loss
from pipeline.losses.weighting import resolve_weights


def gain_term(
    margin: torch.Tensor, with_slope: bool, *, eps: float, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sharpness loss w (1 + phi_eps(x)) of the margin x and, ``with_slope``, its derivative
    w phi_eps'(x) = -w eps / (x^2 + eps)^(3/2), in closed form (a term, pipeline.losses._checks.Term:
    a third of the passes of autograd's graph over x, x^2, + eps, rsqrt and the product at a
    segmentation batch's size). ``weight``: w per sample (None: 1)."""
    inverse_root = torch.addcmul(constant(eps, margin), margin, margin).rsqrt_()  # (x^2 + eps)^(-1/2)
    value = torch.addcmul(constant(1.0, margin), margin, inverse_root, value=-1.0)  # 1 - x / sqrt(x^2 + eps)
    slope = inverse_root.square().mul_(inverse_root).mul_(constant(-eps, margin)) if with_slope else None
    if weight is not None:
        value.mul_(weight)
        slope = None if slope is None else slope.mul_(weight)
    return value, slope


def sharpness_gain(margin: torch.Tensor, eps: float) -> torch.Tensor:
    """The talk's gain function phi_eps(x) = -x / sqrt(x^2 + eps), eps > 0.

    Decreasing, phi_eps(0) = 0, limits +1 at x -> -inf and -1 at x -> +inf; slope -1/sqrt(eps) at 0,
    derivative phi_eps'(x) = -eps / (x^2 + eps)^(3/2) (``gain_term``'s closed form).
    """
    return _Term.apply(margin, partial(gain_term, eps=float(eps))) - 1.0


class _Term(torch.autograd.Function):
    """A term (pipeline.losses._checks.Term) of a tensor, with the term's own slope as its gradient."""

    @staticmethod
    def forward(ctx, x, term):  # noqa: D102 (torch's signature)
        value, slope = term(x, ctx.needs_input_grad[0])
        ctx.save_for_backward(slope)
        ctx.shape = x.shape
        return value

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (slope,) = ctx.saved_tensors
        return chain_through_term(None, grad, slope, ctx.shape), None


class _MulticlassMargin(torch.autograd.Function):
    """(x, term(x)) of the margin x = z_y - max_{j != y} z_j (``multiclass_margin``; term None: x alone),
    with the gradient in closed form: +1 at the true logit, -1 shared by the largest others (evenly
    where several tie, as autograd's amax), times dL/dx (through the term's slope). Built from
    autograd's primitives, a segmentation batch's margin cost 2.8x its cross-entropy, this 1.1x
    (8 x 7 x 256 x 256, one CPU thread; torch.max with indices alone takes 11 ms there, amax 0.7 ms;
    docs/BENCHMARKS.md §7 (i)); with the term inside, a loss is one autograd node."""

    @staticmethod
    def forward(ctx, logits, index, term=None):  # noqa: D102 (torch's signature)
        ctx.set_materialize_grads(False)
        others = logits.scatter(1, index, float("-inf"))
        best_other = others.amax(dim=1, keepdim=True)
        margin = logits.gather(1, index).sub_(best_other).squeeze(1)
        value = slope = None
        if term is not None:
            value, slope = term(margin, ctx.needs_input_grad[0])
        ctx.save_for_backward(others, best_other, index, slope)
        ctx.shape = margin.shape
        return margin, value

    @staticmethod
    def backward(ctx, grad_margin, grad_value):  # noqa: D102
        others, best_other, index, slope = ctx.saved_tensors
        grad = chain_through_term(grad_margin, grad_value, slope, ctx.shape)
        if grad is None:
            return None, None, None
        grad = grad.unsqueeze(1)
        # the largest others (>= is == here, and faster), written as 0/1 straight into the gradient's dtype
        out = torch.ge(others, best_other, out=torch.empty_like(others, dtype=grad.dtype))
        out.mul_(grad.neg() / out.sum(dim=1, keepdim=True))
        return out.scatter_add_(1, index, grad), None, None


def multiclass_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The margin of each sample (pixel): its true-class logit minus the largest other logit,

        x_i = z_{i, y_i} - max_{j != y_i} z_{i, j}

    (the Crammer-Singer multi-class margin). x > 0 exactly when the argmax is the true class; with
    two classes it is z_y - z_other, the signed distance to the boundary in logit units.

    Args:
        logits: (N, C, *spatial), C >= 2.
        target: (N, *spatial) int64 class indices, all in range (mask ignored entries first).
    Returns:
        (N, *spatial) margins; the gradient reaches the true logit (+1) and the largest other one (-1,
        shared where several tie).
    """
    return _MulticlassMargin.apply(logits, target.unsqueeze(1))[0]


def margin_loss(logits: torch.Tensor, target: torch.Tensor, term: Term) -> torch.Tensor:
    """A term of the multi-class margin (``multiclass_margin``'s arguments), in one autograd node."""
    return _MulticlassMargin.apply(logits, target.unsqueeze(1), term)[1]


def sharpness_loss(
    logits: torch.Tensor, target: torch.Tensor, eps: float, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample (per-pixel) sharpness-controlled loss, no reduction:

        l_i = w_{y_i} * (1 + phi_eps(x_i)) = w_{y_i} * (1 - x_i / sqrt(x_i^2 + eps))

    with x_i the multi-class margin (``multiclass_margin``) and w = 1 without class weights. The
    constant 1 changes no gradient; it makes the loss lie in (0, 2): 0 when confidently right, 1 on
    the boundary, 2 when confidently wrong. As eps -> 0 it tends to 2 * [x_i < 0] (twice the 0-1
    error); as eps -> infinity, sqrt(eps) * (l_i - 1) -> -x_i (a linear margin loss).
    Gradient: dl_i/dx_i = -w_{y_i} * eps / (x_i^2 + eps)^(3/2), largest (-1/sqrt(eps)) at x_i = 0.

    Le Bich Phuong and Nguyen Tien Zung, "Gradient flows of loss functions", 2018 (see module docstring).
    """
    return margin_loss(logits, target, sharpness_term(target, eps, weight, logits.dtype))


def sharpness_term(target: torch.Tensor, eps: float, class_weight: torch.Tensor | None, dtype: torch.dtype) -> Term:
    """``gain_term`` with the class weights of ``target`` (None: unweighted), per sample."""
    weight = None if class_weight is None else class_values(class_weight, target, dtype)
    return partial(gain_term, eps=float(eps), weight=weight)


def sharpness_eps(step: int, total_steps: int, eps: float, eps_final: float | None) -> float:
    """eps at an optimizer step: constant without ``eps_final``, else geometric from eps (step 0) to
    eps_final (step total_steps): eps * (eps_final / eps) ** (step / total_steps)."""
    if eps_final is None:
        return eps
    return eps * (eps_final / eps) ** (step / total_steps)


@register_loss("sharpness")
class SharpnessLoss(_Loss):
    """Sharpness-controlled margin loss (``sharpness_loss``) for (N, C) or (N, C, H, W) logits.

    Args:
        eps: sharpness eps > 0 (squared logit units); smaller is sharper.
        eps_final: optional; if set, eps shrinks geometrically to it over the run (``sharpness_eps``),
            driven by ``set_step`` which the trainer calls before every forward. Pair it with the
            scheduler ``{name: geometric, final_factor: eps_final / eps}`` for the learning rate
            proportional to eps that the module docstring derives.
        weights: optional class weights (a scheme of pipeline.losses.weighting or a list of C numbers).
    'mean' divides by the number of non-ignored samples (pixels), not by the sum of the weights.
    """

    class_weight: torch.Tensor | None

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        eps: float = 1.0,
        eps_final: float | None = None,
        weights: Any = None,
        beta: float = 0.999,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=check_reduction(reduction))
        self.num_classes = num_classes
        self.eps = check_number("eps", eps, low=0.0, low_open=True)
        if eps_final is not None:
            eps_final = check_number("eps_final", eps_final, low=0.0, low_open=True)
            if eps_final > self.eps:
                raise ConfigError(f"eps_final ({eps_final}) must not exceed eps ({self.eps}): the schedule sharpens")
        self.eps_final = eps_final
        self.ignore_index = check_ignore_index(ignore_index)
        weight = resolve_weights(weights, num_classes=num_classes, class_counts=class_counts, beta=beta)
        self.register_buffer("class_weight", weight, persistent=False)
        self._step: int | None = None
        self._total_steps: int | None = None

    def set_step(self, step: int, total_steps: int, steps_per_epoch: int | None = None) -> None:
        """Called by the trainer before every forward with the optimizer step about to be taken
        (``steps_per_epoch`` is part of the trainer's call; the eps schedule does not use it)."""
        check_step("sharpness loss", step, total_steps, steps_per_epoch)
        self._step, self._total_steps = step, total_steps

    def current_eps(self) -> float:
        """eps at the step last set (the constant eps when there is no schedule)."""
        if self.eps_final is None:
            return self.eps
        if self._step is None or self._total_steps is None:
            raise TrainingError("sharpness loss with eps_final: set_step(step, total_steps) was not called before use")
        return sharpness_eps(self._step, self._total_steps, self.eps, self.eps_final)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target, valid = check_and_split(logits, target, self.num_classes, self.ignore_index)
        term = sharpness_term(target, self.current_eps(), self.class_weight, logits.dtype)
        return margin_loss(logits, target, reduced_term(term, valid, self.reduction))
