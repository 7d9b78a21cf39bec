"""Losses against class imbalance, for classification (N, C) and segmentation (N, C, H, W) logits.

``build_loss(name, num_classes=..., class_counts=..., **params)`` makes one by name;
``available_losses()`` lists the names. Class weighting lives in ``weighting.py``.
Importing the family modules below registers their losses.
"""

from pipeline.losses import cross_entropy, dynamical, focal, long_tail, region, sharpness  # noqa: F401  (registration)
from pipeline.losses import class_balanced, ohem  # noqa: F401  (registration)
from pipeline.losses.dynamical import dynamical_weights
from pipeline.losses.registry import LOSSES, available_losses, build_loss, loss_head, loss_parameters, register_loss
from pipeline.losses.weighting import WEIGHTING_SCHEMES, class_priors, class_weights, normalise_weights, resolve_weights

__all__ = [
    "LOSSES",
    "WEIGHTING_SCHEMES",
    "available_losses",
    "build_loss",
    "class_priors",
    "class_weights",
    "dynamical_weights",
    "loss_head",
    "loss_parameters",
    "normalise_weights",
    "register_loss",
    "resolve_weights",
]
