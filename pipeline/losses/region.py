"""Segmentation region losses, on MONAI's implementations: softmax over channels, one-hot
targets from the (N, H, W) label map, channel 0 = background.

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
    check_bool,
    check_ignore_index,
    check_inputs,
    check_number,
    check_reduction,
    safe_pow,
)
from pipeline.losses.cross_entropy import WeightedCrossEntropyLoss
from pipeline.losses.focal import FocalLoss
from pipeline.losses.registry import register_loss


def _as_label_map(
    logits: torch.Tensor, target: torch.Tensor, loss_name: str, num_classes: int, ignore_index: int
) -> torch.Tensor:
    """Validate segmentation inputs; return the target as (N, 1, H, W) int64, MONAI's label layout."""
    if logits.ndim < 3:
        raise ConfigError(
            f"loss {loss_name!r} is a segmentation loss: it needs (N, C, H, W) logits and (N, H, W) "
            f"targets, got logits of shape {tuple(logits.shape)}; use ce, focal, ... for classification"
        )
    return check_inputs(logits, target, num_classes, ignore_index).unsqueeze(1)


def _per_class(score: torch.Tensor, batch: bool) -> torch.Tensor:
    """Drop MONAI's trailing singleton spatial dims: (N, C') or, with batch=True, (C',)."""
    return score.reshape(score.shape[: 1 if batch else 2])


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

    def _label_map(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _as_label_map(logits, target, self.loss_name, self.num_classes, self.ignore_index)

    def _monai_kwargs(self) -> dict[str, Any]:
        return {
            "include_background": self.include_background,
            "to_onehot_y": True,
            "softmax": True,
            "batch": self.batch,
            "smooth_nr": self.smooth_nr,
            "smooth_dr": self.smooth_dr,
            "ignore_index": self.ignore_index,
        }


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
        import monai.losses  # here, not at the top: importing MONAI loads all of it (about 2.5 s a process)

        self.region = monai.losses.DiceLoss(**self._monai_kwargs(), reduction=self.reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.compute(logits, self._label_map(logits, target))

    def compute(self, logits: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        """The loss of a checked (N, 1, H, W) label map (``_label_map``): a composite loss checks once."""
        score = self.region(logits, label_map)
        return _per_class(score, self.batch) if self.reduction == "none" else score


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
        import monai.losses

        self.region = monai.losses.TverskyLoss(
            **self._monai_kwargs(), alpha=self.alpha, beta=self.beta, reduction="none"
        )

    def per_class(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """1 - TI as (N, C') or, with batch=True, (C',)."""
        return _per_class(self.region(logits, self._label_map(logits, target)), self.batch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _reduce(self.per_class(logits, target), self.reduction)


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

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _reduce(safe_pow(self.per_class(logits, target), 1.0 / self.gamma), self.reduction)


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
        self.dice = DiceLoss(
            num_classes=num_classes,
            include_background=include_background,
            batch=batch,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            ignore_index=ignore_index,
            reduction=reduction,
        )

    def pixel_term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The per-pixel loss times its lambda, of a checked (N, H, W) int64 target."""
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        label_map = self._label_map(logits, target)  # the one input check of both terms
        return self.lambda_dice * self.dice.compute(logits, label_map) + self.pixel_term(logits, label_map[:, 0])


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
        self.lambda_ce = check_number("lambda_ce", lambda_ce, low=0.0)
        self.ce = WeightedCrossEntropyLoss(
            num_classes=num_classes,
            class_counts=class_counts,
            weights=weights,
            beta=beta,
            ignore_index=ignore_index,
            reduction=reduction,
        )

    def pixel_term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lambda_ce * self.ce.compute(logits, target)


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
        self.lambda_focal = check_number("lambda_focal", lambda_focal, low=0.0)
        self.focal = FocalLoss(
            num_classes=num_classes,
            class_counts=class_counts,
            gamma=gamma,
            alpha=weights,
            beta=beta,
            ignore_index=ignore_index,
            reduction=reduction,
        )

    def pixel_term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lambda_focal * self.focal.compute(logits, target)


def _reduce(per_class: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_class.mean()
    if reduction == "sum":
        return per_class.sum()
    return per_class
