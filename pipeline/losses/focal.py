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
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from pipeline.losses._checks import (
    check_ignore_index,
    check_inputs,
    check_number,
    check_reduction,
    fill_ignored,
    reduce_masked,
    safe_pow,
    valid_mask,
)
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
    log_p = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -safe_pow(-torch.expm1(log_p), gamma) * log_p
    if alpha is not None:
        loss = alpha.to(device=logits.device, dtype=logits.dtype)[target] * loss
    return loss


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
        """The loss of inputs already checked (``check_inputs``): a composite loss checks once."""
        valid = valid_mask(target, self.ignore_index)
        loss = softmax_focal_loss(logits, fill_ignored(target, valid), self.gamma, self.alpha)
        return reduce_masked(loss, valid, self.reduction)
