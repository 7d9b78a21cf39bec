"""Class-balanced focal loss: Cui, Jia, Lin, Song and Belongie, "Class-Balanced Loss Based on
Effective Number of Samples", CVPR 2019.

The effective number of samples of a class with n samples is E_n = (1 - beta^n) / (1 - beta): the
expected volume its samples cover when each new sample overlaps the ones before with probability
beta. The class-balanced loss weighs class y by 1 / E_{n_y}; with the focal loss (Lin et al. 2017):

    CB_focal_i = (1 - beta) / (1 - beta^{n_{y_i}}) * (1 - p_{i, y_i})^gamma * (-log p_{i, y_i})

(weights normalised as every scheme of pipeline.losses.weighting is). beta = 0 is focal without
weights; beta -> 1 approaches inverse-frequency weights. Cui et al. use a sigmoid focal loss for
most of their results and also define the softmax form; this is the softmax form, the project's
focal loss (pipeline.losses.focal) with alpha = the 'effective' scheme. Defaults are the authors'
long-tailed CIFAR setting (github.com/richardaecn/class-balanced-loss, cifar_im_trainval_cb.sh:
beta = 0.9999, gamma = 1.0).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.errors import ConfigError
from pipeline.losses._checks import check_number
from pipeline.losses.focal import FocalLoss
from pipeline.losses.registry import register_loss


@register_loss("cb_focal")
class ClassBalancedFocalLoss(FocalLoss):
    """Softmax focal loss whose alpha are the effective-number weights of the training counts.
    For its deferred form (DRW), use ``{name: focal, alpha: effective, beta: ..., drw_start: ...}``."""

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        beta: float = 0.9999,
        gamma: float = 1.0,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        if class_counts is None:
            raise ConfigError("cb_focal needs class_counts (per-class counts of the training set)")
        super().__init__(
            num_classes=num_classes,
            class_counts=class_counts,
            gamma=gamma,
            alpha="effective",
            beta=check_number("beta", beta, low=0.0, high=1.0, high_open=True),
            ignore_index=ignore_index,
            reduction=reduction,
        )
