"""Cross-entropy, plain ('ce') and class-weighted ('weighted_ce'): torch's F.cross_entropy.

With weights, 'mean' follows torch: sum_i w_{y_i} CE_i / sum_i w_{y_i}. So any weight vector
whose entries are all equal gives exactly plain CE.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from pipeline.losses._checks import (
    Term,
    check_ignore_index,
    check_inputs,
    check_number,
    check_reduction,
    class_values,
    reduced_term,
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

    def sample_term(self, target: torch.Tensor, valid: torch.Tensor | None, dtype: torch.dtype) -> Term:
        """The reduced loss as a term of l (pipeline.losses._softmax) for ``target`` and ``valid``
        (``check_and_split``'s pair), for a composite loss that passes it to its shared softmax. Without
        label smoothing only (the smoothed term needs every class's log-probability; Dice + CE, the one
        caller, has none)."""
        if self.label_smoothing:
            raise ValueError("sample_term computes cross-entropy without label smoothing")
        return nll_sample_term(target, valid, self.class_weight, dtype, self.reduction)


def nll_term(
    target_log_p: torch.Tensor, with_slope: bool, *, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CE_i = -w_i l_i and its derivative -w_i (a term of pipeline.losses._softmax); ``weight`` w per
    sample, None for 1."""
    if weight is None:
        return target_log_p.neg(), (target_log_p.new_full((), -1.0) if with_slope else None)
    return weight * target_log_p.neg(), (weight.neg() if with_slope else None)


def nll_sample_term(
    target: torch.Tensor, valid: torch.Tensor | None, class_weight: torch.Tensor | None, dtype: torch.dtype,
    reduction: str,
) -> Term:
    """F.cross_entropy as a term of l: -l_i, weighted by w_{y_i} if ``class_weight``, reduced over the
    ``valid`` entries (None: all); 'mean' with weights is torch's sum_i w_{y_i} CE_i / sum_i w_{y_i},
    'none' is 0 at ignored entries."""
    if class_weight is None:
        return reduced_term(nll_term, valid, reduction)
    weight = class_values(class_weight, target, dtype)
    total = None
    if reduction == "mean":
        total = (weight if valid is None else torch.where(valid, weight, 0.0)).sum()
    return reduced_term(partial(nll_term, weight=weight), valid, reduction, total)


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
