"""Online hard example mining (OHEM): Shrivastava, Gupta and Girshick, "Training Region-based Object
Detectors with Online Hard Example Mining", CVPR 2016.

Each batch, the loss of every sample (every pixel, for segmentation) is computed, and only the k
hardest (largest loss) enter the mean; the easy ones, which are most of an imbalanced batch, give
no gradient. The paper keeps B = 128 of about 2000 regions per image pair (after NMS); here k is a
fraction of the batch's non-ignored entries with a floor:

    k = min(n, max(min_kept, ceil(fraction * n))),   n = non-ignored samples (pixels) in the batch

Under torchrun each replica mines its own batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from pipeline.losses._checks import (
    check_ignore_index,
    check_inputs,
    check_int,
    check_number,
    check_reduction,
    reduce_masked,
    valid_mask,
)
from pipeline.losses.registry import register_loss


def hardest_mask(loss: torch.Tensor, valid: torch.Tensor, fraction: float, min_kept: int) -> torch.Tensor:
    """Boolean mask (shape of ``loss``) of the k largest losses among the ``valid`` entries,
    k = min(n, max(min_kept, ceil(fraction * n))), n = valid.sum(). Ties are broken by
    torch.topk. The selection carries no gradient."""
    n = int(valid.sum())
    k = min(n, max(min_kept, math.ceil(fraction * n)))
    keep = torch.zeros(loss.numel(), dtype=torch.bool, device=loss.device)
    if k > 0:
        candidates = torch.where(valid, loss.detach(), torch.full_like(loss, -math.inf)).flatten()
        keep[torch.topk(candidates, k, sorted=False).indices] = True
    return keep.view_as(loss)


def ohem_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, fraction: float, min_kept: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (per-pixel) cross-entropy and the mask of the hard examples kept.

        CE_i = -log softmax(logits_i)_{y_i},   kept = the k largest CE_i (``hardest_mask``)

    Returns (CE of shape (N, *spatial), kept mask of the same shape; ignored entries never kept).
    """
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    return loss, hardest_mask(loss, valid_mask(target, ignore_index), fraction, min_kept)


@register_loss("ohem")
class OHEMCrossEntropyLoss(_Loss):
    """Cross-entropy over the hardest ``fraction`` of each batch's samples (pixels), at least
    ``min_kept`` of them (all when the batch has fewer). 'mean' divides by the number kept;
    'none' returns the per-sample loss with the entries not kept set to 0."""

    def __init__(
        self,
        *,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        fraction: float = 0.25,
        min_kept: int = 8,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=check_reduction(reduction))
        self.num_classes = num_classes
        self.fraction = check_number("fraction", fraction, low=0.0, high=1.0, low_open=True)
        self.min_kept = check_int("min_kept", min_kept, low=1)
        self.ignore_index = check_ignore_index(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = check_inputs(logits, target, self.num_classes, self.ignore_index)
        loss, kept = ohem_cross_entropy(logits, target, self.fraction, self.min_kept, self.ignore_index)
        return reduce_masked(loss, kept, self.reduction)
