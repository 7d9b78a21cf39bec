"""Softmax focal loss (Lin, Goyal, Girshick, He and Dollár, "Focal Loss for Dense Object
Detection", ICCV 2017), for classification and segmentation.

Why not monai.losses.FocalLoss: with use_softmax its 'mean' averages over the class channels
too, so at gamma=0 it gives CE / C rather than CE, and it evaluates the focal term on every
channel (NaN gradients at saturated non-target channels when gamma < 1). Here the term is
taken at the target class only, so gamma=0 and alpha=None is exactly cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.modules.loss import _Loss

from pipeline.losses._checks import (
    check_ignore_index,
    check_inputs,
    check_number,
    check_reduction,
    class_values,
    reduce_masked,
    safe_pow,
    split_ignored,
)
from pipeline.losses._softmax import target_log_softmax
from pipeline.losses.registry import register_loss
from pipeline.losses.weighting import resolve_weights


def softmax_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample (per-pixel) focal loss, no reduction.

        FL_i = - alpha_{y_i} * (1 - p_{i, y_i})^gamma * log p_{i, y_i},   p_i = softmax(logits_i)

    Args:
        logits: (N, C, *spatial) raw scores.
        target: (N, *spatial) int64 class indices, all in range (mask ignored entries first).
        gamma: focusing parameter, >= 0 (0 gives cross-entropy).
        alpha: optional (C,) per-class weights (None means alpha = 1).
    Returns:
        (N, *spatial) loss values.
    """
    return focal_from_target_log_p(target_log_softmax(logits, target), target, gamma, alpha)


class _FocalTerm(torch.autograd.Function):
    """-w (1 - p)^gamma log p of l = log p, elementwise, with its derivative in closed form,

        d/dl = w (gamma p l (1 - p)^(gamma - 1) - (1 - p)^gamma),   p = exp(l),

    the second term's first part taken as 0 where p = 1 (where l = 0 too; for gamma < 1 autograd would
    give 0 * inf there). Half the passes of autograd's graph over the same formula (docs/BENCHMARKS.md §7 (i))."""

    @staticmethod
    def forward(ctx, target_log_p, gamma, weight):  # noqa: D102 (torch's signature)
        q = torch.expm1(target_log_p).neg_()  # 1 - p, accurate where p is near 1
        q_gamma = safe_pow(q, gamma)
        ctx.save_for_backward(target_log_p, q, q_gamma, weight)
        ctx.gamma = gamma
        loss = q_gamma * target_log_p
        loss.neg_()
        return loss if weight is None else loss.mul_(weight)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        target_log_p, q, q_gamma, weight = ctx.saved_tensors
        if ctx.gamma == 0.0:
            slope = q_gamma.neg()  # -1
        else:  # safe_pow: (1 - p)^(gamma - 1) is 0 where p = 1 for gamma < 1, q itself for gamma = 2
            slope = (1.0 - q).mul_(target_log_p).mul_(safe_pow(q, ctx.gamma - 1.0)).mul_(ctx.gamma).sub_(q_gamma)
        slope.mul_(grad)
        return (slope if weight is None else slope.mul_(weight)), None, None


def focal_from_target_log_p(
    target_log_p: torch.Tensor, target: torch.Tensor, gamma: float, alpha: torch.Tensor | None = None
) -> torch.Tensor:
    """``softmax_focal_loss`` of l = log p_{i, y_i} (``pipeline.losses._softmax``), which a composite
    loss shares with its other terms."""
    weight = None if alpha is None else class_values(alpha, target, target_log_p)
    return _FocalTerm.apply(target_log_p, gamma, weight)


@register_loss("focal", weights_param="alpha")
class FocalLoss(_Loss):
    """Softmax focal loss module. ``alpha``: None, a list of C floats, or a weighting scheme
    name ('inverse', 'sqrt', 'effective'; needs class_counts), normalised to mean 1 over the
    training samples (pipeline.losses.weighting.normalise_weights), so that at gamma 0 and uniform
    logits the loss equals CE whatever alpha. 'mean' divides by the number of non-ignored samples
    (pixels), as Lin et al. normalise by the number of anchors."""

    alpha: torch.Tensor | None

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        gamma: float = 2.0,
        alpha: Any = None,
        beta: float = 0.999,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=check_reduction(reduction))
        self.num_classes = num_classes
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.ignore_index = check_ignore_index(ignore_index)
        alpha_weights = resolve_weights(
            alpha, num_classes=num_classes, class_counts=class_counts, beta=beta, name="alpha"
        )
        self.register_buffer("alpha", alpha_weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.compute(logits, check_inputs(logits, target, self.num_classes, self.ignore_index))

    def compute(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of inputs already checked (``check_inputs``)."""
        target, valid = split_ignored(target, self.ignore_index)
        return self.from_target_log_p(target_log_softmax(logits, target), target, valid)

    def from_target_log_p(
        self, target_log_p: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None
    ) -> torch.Tensor:
        """The reduced loss of l = log p_{i, y_i} and the target (``split_ignored``'s pair): a composite
        loss computes l once for all its terms."""
        return reduce_masked(focal_from_target_log_p(target_log_p, target, self.gamma, self.alpha), valid, self.reduction)
