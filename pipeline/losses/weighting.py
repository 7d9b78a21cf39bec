"""Class weighting, in one place: every loss that takes per-class weights gets them here.

Schemes (M = total count, m_i = count of class i, C = number of classes):

- ``inverse``:   w_i = M / m_i
- ``sqrt``:      w_i = sqrt(M / m_i)
- ``effective``: w_i ∝ (1 - beta) / (1 - beta^m_i), normalised so that sum_i w_i = C
  (Cui, Jia, Lin, Song and Belongie, "Class-Balanced Loss Based on Effective Number of
  Samples", CVPR 2019)
- ``none``:      w_i = 1
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from pipeline.errors import ConfigError

WEIGHTING_SCHEMES = ("inverse", "sqrt", "effective", "none")


def check_class_counts(class_counts: Any, num_classes: int | None = None) -> list[float]:
    """``class_counts`` as a list of positive finite numbers, one per class.

    A class with count 0 is an error that names the class index: no scheme can weight a
    class that the training set does not hold.
    """
    if class_counts is None:
        raise ConfigError("class_counts are required (per-class counts of the training set)")
    if isinstance(class_counts, torch.Tensor):
        class_counts = class_counts.tolist()
    if isinstance(class_counts, (str, bytes)) or not isinstance(class_counts, Sequence):
        raise ConfigError(f"class_counts must be a list of numbers, got {class_counts!r}")
    if num_classes is not None and len(class_counts) != num_classes:
        raise ConfigError(f"class_counts has {len(class_counts)} entries but there are {num_classes} classes")
    counts: list[float] = []
    for index, count in enumerate(class_counts):
        if isinstance(count, bool) or not isinstance(count, (int, float)) or not math.isfinite(count):
            raise ConfigError(f"class_counts[{index}] must be a finite number, got {count!r}")
        if count < 0:
            raise ConfigError(f"class_counts[{index}] is negative ({count})")
        if count == 0:
            raise ConfigError(f"class {index} has count 0 in class_counts: it cannot be weighted")
        counts.append(float(count))
    if len(counts) < 2:
        raise ConfigError(f"class_counts needs at least 2 classes, got {len(counts)}")
    return counts


def class_weights(class_counts: Sequence[float], scheme: str, beta: float = 0.999) -> torch.Tensor:
    """Per-class weights (float32, shape (C,)) from the training-set class counts."""
    if scheme not in WEIGHTING_SCHEMES:
        raise ConfigError(f"unknown weighting scheme {scheme!r}; available: {list(WEIGHTING_SCHEMES)}")
    counts = torch.tensor(check_class_counts(class_counts), dtype=torch.float64)
    num_classes = counts.numel()
    if scheme == "none":
        weights = torch.ones(num_classes, dtype=torch.float64)
    elif scheme == "inverse":
        weights = counts.sum() / counts
    elif scheme == "sqrt":
        weights = torch.sqrt(counts.sum() / counts)
    else:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise ConfigError(f"beta must lie in [0, 1) for the 'effective' scheme, got {beta!r}")
        # (1 - beta^m) underflows to (1 - 0) for huge pixel counts: all such weights become equal, as they should.
        weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
        weights = weights / weights.sum() * num_classes
    return weights.to(torch.float32)


def class_priors(class_counts: Sequence[float]) -> torch.Tensor:
    """Empirical class priors pi_i = m_i / M (float32, shape (C,))."""
    counts = torch.tensor(check_class_counts(class_counts), dtype=torch.float64)
    return (counts / counts.sum()).to(torch.float32)


def resolve_weights(
    weights: Any,
    *,
    num_classes: int,
    class_counts: Sequence[float] | None,
    beta: float = 0.999,
    name: str = "weights",
) -> torch.Tensor | None:
    """Turn a config ``weights:`` value into a (C,) tensor, or None for no weighting.

    ``weights`` is None, a scheme name (needs ``class_counts``), or an explicit list of C
    non-negative floats. ``name`` is the config key, used in error messages.
    """
    if weights is None or weights == "none":
        return None
    if isinstance(weights, str):
        if weights not in WEIGHTING_SCHEMES:
            raise ConfigError(
                f"{name}: unknown weighting scheme {weights!r}; use one of {list(WEIGHTING_SCHEMES)} "
                f"or a list of {num_classes} numbers"
            )
        if class_counts is None:
            raise ConfigError(f"{name}: scheme {weights!r} needs class_counts (per-class training counts)")
        check_class_counts(class_counts, num_classes)
        return class_weights(class_counts, weights, beta=beta)
    return _explicit_weights(weights, num_classes, name)


def _explicit_weights(weights: Any, num_classes: int, name: str) -> torch.Tensor:
    if isinstance(weights, torch.Tensor):
        weights = weights.tolist()
    if isinstance(weights, bytes) or not isinstance(weights, Sequence):
        raise ConfigError(f"{name} must be a scheme name or a list of numbers, got {weights!r}")
    if len(weights) != num_classes:
        raise ConfigError(f"{name} has {len(weights)} entries but there are {num_classes} classes")
    for index, value in enumerate(weights):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name}[{index}] must be a finite number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{name}[{index}] is negative ({value})")
    if not any(value > 0 for value in weights):
        raise ConfigError(f"{name} are all zero")
    return torch.tensor([float(value) for value in weights], dtype=torch.float32)
