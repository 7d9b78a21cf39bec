"""Segmentation region losses, MONAI's formulas (monai.losses.DiceLoss / TverskyLoss with softmax=True,
to_onehot_y=True, ignore_index; tests/losses/test_region.py holds them equal) computed from one
softmax without a one-hot tensor (pipeline.losses._softmax: the per-class true-positive, predicted and
label masses, which Dice + CE shares with its CE term), channel 0 = background.

They are segmentation-only: (N, C) classification logits raise ConfigError. Defaults:
``include_background=False`` (lesions are small next to the background) and ``batch=True``
(intersections summed over the batch before the ratio: with six acne lesion types most images
lack most types, and a per-image Dice of an absent type stays near 1 unless the predicted mass
for that type falls below the 1e-5 smoothing term).

Reduction 'none' gives one value per (image, class) as (N, C') with ``batch=False``, or per
class as (C',) with ``batch=True`` (C' = C without background unless include_background).
'dice_ce' and 'dice_focal' mix a per-class and a per-pixel term, so they take 'mean' or 'sum'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.modules.loss import _Loss

from pipeline.errors import ConfigError
from pipeline.losses._checks import (
    Term,
    check_and_split,
    check_bool,
    check_ignore_index,
    check_number,
    check_reduction,
    safe_pow,
)
from pipeline.losses._softmax import compute_dtype, softmax_region_terms
from pipeline.losses.cross_entropy import WeightedCrossEntropyLoss
from pipeline.losses.focal import FocalLoss
from pipeline.losses.registry import register_loss


def dice_loss(tp: torch.Tensor, prob_sum: torch.Tensor, label_count: torch.Tensor,
              smooth_nr: float, smooth_dr: float) -> torch.Tensor:
    """Soft Dice loss per class, 1 - (2 TP + smooth_nr) / (sum p + sum g + smooth_dr) (Milletari et al.
    2016; MONAI's DiceLoss: 2 (TP + FP/2 + FN/2) = sum p + sum g for one-hot targets)."""
    return 1.0 - (2.0 * tp + smooth_nr) / (prob_sum + label_count + smooth_dr)


def tversky_loss(tp: torch.Tensor, prob_sum: torch.Tensor, label_count: torch.Tensor, alpha: float, beta: float,
                 smooth_nr: float, smooth_dr: float) -> torch.Tensor:
    """Tversky loss per class, 1 - (TP + smooth_nr) / (TP + alpha FP + beta FN + smooth_dr) with
    FP = sum p - TP and FN = sum g - TP (Salehi et al. 2017; MONAI's TverskyLoss)."""
    return 1.0 - (tp + smooth_nr) / (tp + alpha * (prob_sum - tp) + beta * (label_count - tp) + smooth_dr)


class _RegionLoss(_Loss):
    """Common arguments and checks; subclasses set ``loss_name`` and build ``self.region``."""

    loss_name = ""

    def __init__(
        self,
        num_classes: int,
        include_background: bool,
        batch: bool,
        smooth_nr: float,
        smooth_dr: float,
        ignore_index: int,
        reduction: str,
        allowed_reductions: tuple[str, ...] = ("mean", "sum", "none"),
    ) -> None:
        super().__init__(reduction=check_reduction(reduction, allowed_reductions))
        self.num_classes = num_classes
        self.include_background = check_bool("include_background", include_background)
        self.batch = check_bool("batch", batch)
        self.smooth_nr = check_number("smooth_nr", smooth_nr, low=0.0)
        self.smooth_dr = check_number("smooth_dr", smooth_dr, low=0.0)
        self.ignore_index = check_ignore_index(ignore_index)

    def _checked(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the checked int64 target with ignored entries at class 0, the mask of the counted entries or
        None when none is ignored)."""
        if logits.ndim < 3:
            raise ConfigError(
                f"loss {self.loss_name!r} is a segmentation loss: it needs (N, C, H, W) logits and (N, H, W) "
                f"targets, got logits of shape {tuple(logits.shape)}; use ce, focal, ... for classification"
            )
        return check_and_split(logits, target, self.num_classes, self.ignore_index)

    def _terms(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, term: Term | None = None):
        """(per pixel (N, *spatial) the term's values (l without one), then TP, sum p, sum g per class:
        (N, C') or, with batch, (C',))."""
        pixel, *masses = softmax_region_terms(logits, target, valid, self.num_classes, term)
        first = 0 if self.include_background else 1
        masses = [m[:, first:] for m in masses]
        if self.batch:
            masses = [m.sum(0) for m in masses]
        return (pixel, *masses)

    def per_class(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss per class, (N, C') or, with batch=True, (C',)."""
        target, valid = self._checked(logits, target)
        return self.region(*self._terms(logits, target, valid)[1:])

    def region(self, tp: torch.Tensor, prob_sum: torch.Tensor, label_count: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _reduce(self.per_class(logits, target), self.reduction)


@register_loss("dice", segmentation_only=True)
class DiceLoss(_RegionLoss):
    """Soft Dice loss 1 - (2 sum p g + eps) / (sum p + sum g + eps) per class (monai.losses.DiceLoss;
    Milletari, Navab and Ahmadi, "V-Net", 3DV 2016)."""

    loss_name = "dice"

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        include_background: bool = False,
        batch: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(num_classes, include_background, batch, smooth_nr, smooth_dr, ignore_index, reduction)

    def region(self, tp: torch.Tensor, prob_sum: torch.Tensor, label_count: torch.Tensor) -> torch.Tensor:
        return dice_loss(tp, prob_sum, label_count, self.smooth_nr, self.smooth_dr)


@register_loss("tversky", segmentation_only=True)
class TverskyLoss(_RegionLoss):
    """Tversky loss 1 - TI per class, TI = (TP + eps) / (TP + alpha FP + beta FN + eps)
    (monai.losses.TverskyLoss; Salehi, Erdogmus and Gholipour, MLMI 2017). Note MONAI's
    convention: ``alpha`` weighs false positives and ``beta`` false negatives; the defaults
    (0.3, 0.7) favour recall of small lesions, as in Salehi et al.'s best setting."""

    loss_name = "tversky"

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        alpha: float = 0.3,
        beta: float = 0.7,
        include_background: bool = False,
        batch: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(num_classes, include_background, batch, smooth_nr, smooth_dr, ignore_index, reduction)
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.beta = check_number("beta", beta, low=0.0)

    def region(self, tp: torch.Tensor, prob_sum: torch.Tensor, label_count: torch.Tensor) -> torch.Tensor:
        return tversky_loss(tp, prob_sum, label_count, self.alpha, self.beta, self.smooth_nr, self.smooth_dr)


@register_loss("focal_tversky", segmentation_only=True)
class FocalTverskyLoss(TverskyLoss):
    """Focal Tversky loss (1 - TI_c)^(1/gamma) per class, then reduced: Abraham and Khan, "A novel
    focal Tversky loss function with improved attention U-Net for lesion segmentation", ISBI 2019
    (gamma = 4/3 is their best setting). MONAI has no focal Tversky: this raises MONAI's Tversky
    term to 1/gamma. Abraham and Khan write alpha on false negatives; here, as in 'tversky',
    alpha weighs false positives and beta false negatives, so their alpha=0.7 is beta=0.7 here."""

    loss_name = "focal_tversky"

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 4.0 / 3.0,
        include_background: bool = False,
        batch: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            alpha=alpha,
            beta=beta,
            include_background=include_background,
            batch=batch,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            ignore_index=ignore_index,
            reduction=reduction,
        )
        self.gamma = check_number("gamma", gamma, low=0.0, low_open=True)

    def region(self, tp: torch.Tensor, prob_sum: torch.Tensor, label_count: torch.Tensor) -> torch.Tensor:
        return safe_pow(super().region(tp, prob_sum, label_count), 1.0 / self.gamma)


class _DicePlusPixelLoss(_RegionLoss):
    """lambda_dice * Dice + a weighted per-pixel term, both reduced by 'mean' or 'sum'. Subclasses
    build the pixel term after this __init__ and return it, weighted, from ``pixel_term``."""

    def __init__(
        self,
        num_classes: int,
        include_background: bool,
        batch: bool,
        smooth_nr: float,
        smooth_dr: float,
        ignore_index: int,
        reduction: str,
        lambda_dice: float,
    ) -> None:
        super().__init__(
            num_classes, include_background, batch, smooth_nr, smooth_dr, ignore_index, reduction, ("mean", "sum")
        )
        self.lambda_dice = check_number("lambda_dice", lambda_dice, low=0.0)

    region = DiceLoss.region

    pixel_loss: WeightedCrossEntropyLoss | FocalLoss  # the per-pixel loss; its term enters the shared softmax
    lambda_pixel: float  # its lambda (lambda_ce, lambda_focal)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target, valid = self._checked(logits, target)  # the one input check of both terms
        term = self.pixel_loss.sample_term(target, valid, compute_dtype(logits))
        pixel, *masses = self._terms(logits, target, valid, term)  # the one softmax of both terms
        dice = _reduce(self.region(*masses), self.reduction)
        return self.lambda_dice * dice + self.lambda_pixel * pixel


@register_loss("dice_ce", segmentation_only=True, weights_param="weights")
class DiceCELoss(_DicePlusPixelLoss):
    """lambda_dice * Dice + lambda_ce * CE. ``weights`` (scheme or list, pipeline.losses.weighting)
    weigh the CE part only. Composed rather than monai.losses.DiceCELoss, which also weights the
    Dice term and has no ignore_index."""

    loss_name = "dice_ce"

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        weights: Any = None,
        beta: float = 0.999,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        include_background: bool = False,
        batch: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            num_classes, include_background, batch, smooth_nr, smooth_dr, ignore_index, reduction, lambda_dice
        )
        self.lambda_pixel = check_number("lambda_ce", lambda_ce, low=0.0)
        self.pixel_loss = WeightedCrossEntropyLoss(
            num_classes=num_classes,
            class_counts=class_counts,
            weights=weights,
            beta=beta,
            ignore_index=ignore_index,
            reduction=reduction,
        )


@register_loss("dice_focal", segmentation_only=True, weights_param="weights")
class DiceFocalLoss(_DicePlusPixelLoss):
    """lambda_dice * Dice + lambda_focal * softmax focal (pipeline.losses.focal). ``weights`` are
    the focal alpha (scheme or list, normalised to mean 1 over the training pixels like every
    weighting, pipeline.losses.weighting). The focal part always covers every channel, background
    included: leaving the background channel out of a softmax focal term would leave background
    pixels without any loss."""

    loss_name = "dice_focal"

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        weights: Any = None,
        beta: float = 0.999,
        gamma: float = 2.0,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        include_background: bool = False,
        batch: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            num_classes, include_background, batch, smooth_nr, smooth_dr, ignore_index, reduction, lambda_dice
        )
        self.lambda_pixel = check_number("lambda_focal", lambda_focal, low=0.0)
        self.pixel_loss = FocalLoss(
            num_classes=num_classes,
            class_counts=class_counts,
            gamma=gamma,
            alpha=weights,
            beta=beta,
            ignore_index=ignore_index,
            reduction=reduction,
        )


def _reduce(per_class: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_class.mean()
    if reduction == "sum":
        return per_class.sum()
    return per_class
