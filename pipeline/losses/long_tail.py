"""Long-tail losses that move the logits by class-frequency terms before a cross-entropy.

All three need ``class_counts`` (training-set counts per class; for segmentation, per channel).
At inference the model's raw logits are used: the adjustment exists only in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from pipeline.errors import ConfigError
from pipeline.losses._checks import (
    channel_view,
    check_ignore_index,
    check_and_split,
    check_inputs,
    check_number,
    check_reduction,
    class_values,
)
from pipeline.losses._softmax import compute_dtype, softmax_sample_loss
from pipeline.losses.cross_entropy import nll_sample_term
from pipeline.losses.registry import register_loss
from pipeline.losses.weighting import check_class_counts, class_priors, resolve_weights


def _counts(class_counts: Sequence[float] | None, num_classes: int) -> list[float]:
    if class_counts is None:
        raise ConfigError("this loss needs class_counts (per-class counts of the training set)")
    return check_class_counts(class_counts, num_classes)


class _ShiftedCrossEntropy(_Loss):
    """F.cross_entropy on logits plus a fixed per-class offset (a (C,) buffer)."""

    def __init__(self, num_classes: int, offset: torch.Tensor, ignore_index: int, reduction: str) -> None:
        super().__init__(reduction=check_reduction(reduction))
        self.num_classes = num_classes
        self.ignore_index = check_ignore_index(ignore_index)
        self.register_buffer("offset", offset, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = check_inputs(logits, target, self.num_classes, self.ignore_index)
        shifted = logits + channel_view(self.offset, logits)
        return F.cross_entropy(shifted, target, ignore_index=self.ignore_index, reduction=self.reduction)


def logit_adjustment(class_counts: Sequence[float], tau: float) -> torch.Tensor:
    """Offsets tau * log(pi_j), pi_j = m_j / M (Menon et al., ICLR 2021, eq. 10)."""
    return tau * torch.log(class_priors(class_counts))


@register_loss("logit_adjusted")
class LogitAdjustedLoss(_ShiftedCrossEntropy):
    """Logit-adjusted softmax cross-entropy: Menon, Jayasumana, Rawat, Jain, Veit and Kumar,
    "Long-tail learning via logit adjustment", ICLR 2021.

        loss_i = -log( exp(f_{y_i} + tau log pi_{y_i}) / sum_j exp(f_j + tau log pi_j) )
    """

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        tau: float = 1.0,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        tau = check_number("tau", tau, low=0.0)
        offset = logit_adjustment(_counts(class_counts, num_classes), tau)
        super().__init__(num_classes, offset, ignore_index, reduction)


@register_loss("balanced_softmax")
class BalancedSoftmaxLoss(_ShiftedCrossEntropy):
    """Balanced softmax: Ren, Yu, Ma, Zhao, Yi and Li, "Balanced Meta-Softmax for Long-Tailed
    Visual Recognition", NeurIPS 2020.

        loss_i = -log( n_{y_i} exp(f_{y_i}) / sum_j n_j exp(f_j) ) = CE(f + log n, y)

    (the same as logit_adjusted with tau = 1, since log n and log pi differ by a constant).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        counts = torch.tensor(_counts(class_counts, num_classes), dtype=torch.float64)
        super().__init__(num_classes, torch.log(counts).to(torch.float32), ignore_index, reduction)


def ldam_margins(class_counts: Sequence[float], max_margin: float) -> torch.Tensor:
    """Delta_j = K / n_j^(1/4), with K chosen so that the largest margin is ``max_margin``."""
    counts = torch.tensor(check_class_counts(class_counts), dtype=torch.float64)
    raw = counts.pow(-0.25)
    return (raw * (max_margin / raw.max())).to(torch.float32)


@register_loss("ldam", weights_param="weights")
class LDAMLoss(_Loss):
    """Label-distribution-aware margin loss: Cao, Wei, Gaidon, Arechiga and Ma, "Learning Imbalanced
    Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019 (follows the authors' code,
    github.com/kaidic/LDAM-DRW).

        loss_i = w_{y_i} * CE( s * (f_i - Delta_{y_i} e_{y_i}), y_i )
        Delta_j ∝ n_j^(-1/4),  max_j Delta_j = max_margin

    ``weights``: none (w = 1, the default) or any scheme of pipeline.losses.weighting (mean 1 over
    the training samples, as every weighting; 'mean' is torch's weighted mean, which no rescaling
    of w changes). The paper's LDAM-DRW is ``weights: effective, beta: 0.9999, drw_start: 0.8``
    (uniform weights for the first 80% of training, the effective-number weights of Cui et al.
    2019 after): ``drw_start`` is the deferral every weighted loss accepts (pipeline.losses.deferred).

    f_i are **cosines**: LDAM assumes L2-normalised features and class weights (the authors'
    ``NormedLinear``), and the scale s = 30 turns cosines in [-1, 1] into logits. The loss
    declares this with ``head = "cosine"``, so the classification task builds the model with
    ``pipeline.models.CosineClassifier`` unless the config's ``model.head`` says otherwise (on raw
    linear logits, s = 30 multiplies logits that are not bounded). Even at zero cosines the loss
    is log(1 + (C - 1) exp(s Delta_y)) ≈ s Delta_y + log(C - 1), not log C: the margin is part of
    LDAM.
    """

    head = "cosine"
    class_weight: torch.Tensor | None

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        max_margin: float = 0.5,
        scale: float = 30.0,
        weights: Any = None,
        beta: float = 0.9999,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=check_reduction(reduction))
        counts = _counts(class_counts, num_classes)
        self.num_classes = num_classes
        self.scale = check_number("scale", scale, low=0.0, low_open=True)
        self.ignore_index = check_ignore_index(ignore_index)
        max_margin = check_number("max_margin", max_margin, low=0.0)
        self.register_buffer("margins", ldam_margins(counts, max_margin), persistent=False)
        self.register_buffer("target_shifts", -self.scale * self.margins, persistent=False)  # -s Delta_c
        self.register_buffer(
            "class_weight",
            resolve_weights(weights, num_classes=num_classes, class_counts=counts, beta=beta),
            persistent=False,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target, valid = check_and_split(logits, target, self.num_classes, self.ignore_index)
        # the softmax of s (f - Delta_y e_y), from the shared one (no one-hot tensor, the scale in its gradient)
        dtype = compute_dtype(logits)
        shift = class_values(self.target_shifts, target, dtype)
        term = nll_sample_term(target, valid, self.class_weight, dtype, self.reduction)
        return softmax_sample_loss(logits, target, term, self.scale, shift)
