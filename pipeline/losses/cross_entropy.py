"""Cross-entropy, plain ('ce') and class-weighted ('weighted_ce'): torch's F.cross_entropy.

With weights, 'mean' follows torch: sum_i w_{y_i} CE_i / sum_i w_{y_i}. So any weight vector
whose entries are all equal gives exactly plain CE.
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
    class_values,
    reduce_masked,
)
from pipeline.losses.registry import register_loss
from pipeline.losses.weighting import resolve_weights


@register_loss("ce")
class CrossEntropyLoss(_Loss):
    """Cross-entropy with optional label smoothing, for (N, C) or (N, C, H, W) logits."""

    class_weight: torch.Tensor | None

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=check_reduction(reduction))
        self.num_classes = num_classes
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        self.ignore_index = check_ignore_index(ignore_index)
        self.register_buffer("class_weight", None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.compute(logits, check_inputs(logits, target, self.num_classes, self.ignore_index))

    def compute(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of inputs already checked (``check_inputs``): a composite loss checks once."""
        weight = None if self.class_weight is None else self.class_weight.to(logits.dtype)
        return F.cross_entropy(
            logits,
            target,
            weight=weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )

    def from_target_log_p(
        self, target_log_p: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None
    ) -> torch.Tensor:
        """The same loss from l = log p_{i, y_i} (``pipeline.losses._softmax``) and the target
        (``split_ignored``'s pair), for a composite loss that shares l with its other terms; torch's
        weighted mean sum_i w_{y_i} CE_i / sum_i w_{y_i}. Without label smoothing only (the smoothed
        term needs every class's log-probability; Dice + CE, the one caller, has none)."""
        if self.label_smoothing:
            raise ValueError("from_target_log_p computes cross-entropy without label smoothing")
        return nll_from_target_log_p(target_log_p, target, valid, self.class_weight, self.reduction)


def nll_from_target_log_p(target_log_p: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None,
                          class_weight: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """F.cross_entropy's value from l = log p_{i, y_i}: -l_i, weighted by w_{y_i} if ``class_weight``,
    reduced over the ``valid`` entries (None: all); 'mean' with weights is torch's sum_i w_{y_i} CE_i /
    sum_i w_{y_i}, 'none' is 0 at ignored entries."""
    if class_weight is None:
        return reduce_masked(-target_log_p, valid, reduction)
    weight = class_values(class_weight, target, target_log_p)
    loss = weight * -target_log_p
    if valid is not None:  # where, not a product: l may be -inf at an ignored pixel
        weight, loss = torch.where(valid, weight, 0.0), torch.where(valid, loss, 0.0)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / weight.sum()


@register_loss("weighted_ce", weights_param="weights")
class WeightedCrossEntropyLoss(CrossEntropyLoss):
    """Cross-entropy with per-class weights from pipeline.losses.weighting.

    ``weights`` is a scheme ('inverse', 'sqrt', 'effective'; these need class_counts) or an
    explicit list of C floats; ``beta`` is the effective-number beta.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        weights: Any = "inverse",
        beta: float = 0.999,
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            class_counts=class_counts,
            label_smoothing=label_smoothing,
            ignore_index=ignore_index,
            reduction=reduction,
        )
        self.class_weight = resolve_weights(
            weights, num_classes=num_classes, class_counts=class_counts, beta=beta
        )
