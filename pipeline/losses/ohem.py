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

import numpy as np
import torch
from torch.nn.modules.loss import _Loss

from pipeline.losses._checks import (
    check_and_split,
    check_ignore_index,
    check_int,
    check_number,
    check_reduction,
    reduce_term,
)
from pipeline.losses._softmax import softmax_sample_loss
from pipeline.losses.cross_entropy import nll_term
from pipeline.losses.registry import register_loss


def hardest_indices(loss: torch.Tensor, valid: torch.Tensor | None, fraction: float, min_kept: int) -> torch.Tensor:
    """Flat indices (into ``loss.flatten()``) of the k largest losses among the ``valid`` entries (None:
    all), k = min(n, max(min_kept, ceil(fraction * n))), n = the number of valid entries; ties broken
    arbitrarily. The selection carries no gradient. On the CPU, from 65,536 entries on, by NumPy's
    introselect (``argpartition``): 7x faster than torch.topk there at a segmentation batch's 500k pixels;
    below, topk (a classification batch), where the conversion would cost more than the selection."""
    n = loss.numel() if valid is None else int(valid.sum())
    k = min(n, max(min_kept, math.ceil(fraction * n)))
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=loss.device)
    candidates = loss.detach() if valid is None else torch.where(valid, loss.detach(), -math.inf)
    candidates = candidates.flatten()
    if candidates.device.type == "cpu" and candidates.numel() >= 65_536:
        return torch.from_numpy(np.argpartition(candidates.float().numpy(), -k)[-k:])
    return torch.topk(candidates, k, sorted=False).indices


def hardest_mask(loss: torch.Tensor, valid: torch.Tensor | None, fraction: float, min_kept: int) -> torch.Tensor:
    """``hardest_indices`` as a boolean mask of ``loss``'s shape."""
    keep = torch.zeros(loss.numel(), dtype=torch.bool, device=loss.device)
    keep[hardest_indices(loss, valid, fraction, min_kept)] = True
    return keep.view_as(loss)


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
        target, valid = check_and_split(logits, target, self.num_classes, self.ignore_index)

        def hardest_ce(target_log_p: torch.Tensor, with_slope: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
            loss = target_log_p.neg()  # CE_i = -log softmax(logits_i)_{y_i}
            if self.reduction == "none":
                kept_mask = hardest_mask(loss, valid, self.fraction, self.min_kept)
                return reduce_term(*nll_term(target_log_p, with_slope), kept_mask, "none")
            kept = hardest_indices(loss, valid, self.fraction, self.min_kept)
            # the sum or the mean over the kept samples (NaN for none kept, as an empty mean), and its slope
            value = loss.flatten().take(kept)
            value = value.sum() if self.reduction == "sum" else value.mean()
            if not with_slope:
                return value, None
            each = -1.0 if self.reduction == "sum" else -1.0 / max(len(kept), 1)
            return value, loss.new_zeros(loss.numel()).index_fill_(0, kept, each).view(loss.shape)

        return softmax_sample_loss(logits, target, hardest_ce)
