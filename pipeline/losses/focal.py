"""Softmax focal loss (Lin, Goyal, Girshick, He and Dollár, "Focal Loss for Dense Object
Detection", ICCV 2017), for classification and segmentation.

Why not monai.losses.FocalLoss: with use_softmax its 'mean' averages over the class channels
too, so at gamma=0 it gives CE / C rather than CE, and it evaluates the focal term on every
channel (NaN gradients at saturated non-target channels when gamma < 1). Here the term is
taken at the target class only, so gamma=0 and alpha=None is exactly cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch.nn.modules.loss import _Loss

from pipeline.losses._checks import (
    Term,
    check_and_split,
    check_ignore_index,
    check_number,
    check_reduction,
    class_values,
    constant,
    reduced_term,
    safe_pow,
)
from pipeline.losses._softmax import compute_dtype, softmax_sample_loss
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
    weight = None if alpha is None else class_values(alpha, target, compute_dtype(logits))
    return softmax_sample_loss(logits, target, partial(focal_term, gamma=gamma, weight=weight))


def focal_term(
    target_log_p: torch.Tensor, with_slope: bool, *, gamma: float, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The focal term of l = log p and, ``with_slope``, its derivative in closed form
    (a term of pipeline.losses._softmax):

        FL = -w (1 - p)^gamma l,    dFL/dl = w (gamma p l (1 - p)^(gamma - 1) - (1 - p)^gamma),   p = exp(l),

    the derivative's first part taken as 0 where p = 1 (where l = 0 too; for gamma < 1 autograd would
    give 0 * inf there). ``weight``: w per sample (None: 1). 1 - p from exp, not expm1: expm1 is four
    times slower on the CPU (0.8 against 0.2 ms at 8 x 256 x 256), and they differ only where p is
    within float32's 1.2e-7 of 1, where the term is below 1.2e-7 too."""
    p = torch.exp(target_log_p)
    q = torch.sub(constant(1.0, p), p)
    q_gamma = safe_pow(q, gamma)
    value = (q_gamma * target_log_p).neg_()
    if weight is not None:
        value.mul_(weight)
    if not with_slope:
        return value, None
    if gamma == 0.0:
        slope = q_gamma.neg_()  # -1 (q_gamma is all ones)
    else:
        slope = p.mul_(target_log_p)  # p l (p is not needed again)
        if gamma == 1.0:
            slope.sub_(q_gamma)
        else:  # safe_pow: (1 - p)^(gamma - 1) is 0 where p = 1 for gamma < 1, q itself for gamma = 2
            slope = q_gamma.neg_().addcmul_(slope, safe_pow(q, gamma - 1.0), value=gamma)
    return value, (slope if weight is None else slope.mul_(weight))


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
        target, valid = check_and_split(logits, target, self.num_classes, self.ignore_index)
        return softmax_sample_loss(logits, target, self.sample_term(target, valid, compute_dtype(logits)))

    def sample_term(self, target: torch.Tensor, valid: torch.Tensor | None, dtype: torch.dtype) -> Term:
        """The reduced focal loss as a term of l (pipeline.losses._softmax) for ``target`` and ``valid``
        (``check_and_split``'s pair): a composite loss passes it to its shared softmax."""
        weight = None if self.alpha is None else class_values(self.alpha, target, dtype)
        return reduced_term(partial(focal_term, gamma=self.gamma, weight=weight), valid, self.reduction)
