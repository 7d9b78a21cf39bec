"""Class weighting, in one place: every loss that takes per-class weights gets them here.

Schemes (M = total count, m_i = count of class i, C = number of classes), before normalisation:

- ``inverse``:   w_i ∝ M / m_i
- ``sqrt``:      w_i ∝ sqrt(M / m_i)
- ``effective``: w_i ∝ (1 - beta) / (1 - beta^m_i)
  (Cui, Jia, Lin, Song and Belongie, "Class-Balanced Loss Based on Effective Number of
  Samples", CVPR 2019)
- ``boundary``:  w_i / w_maj = sqrt((1 + eps / pi_i^2) / (1 + eps / pi_maj^2)), the weights that put the
  optimum of the seeds' one-threshold model exactly on the class boundary (``boundary_weights``;
  needs ``eps``: write ``{scheme: boundary, eps: 0.01}``)
- ``none``:      w_i = 1

**Mean 1.** Every weight vector a loss gets here, a scheme's or an explicit list, is rescaled by
``normalise_weights`` so that the expected weight of a training sample is 1:
sum_i pi_i w_i = 1 with pi_i = m_i / M the training priors. A weighted loss at uniform logits then
equals plain CE, so a fixed learning rate means the same step size whichever weighting is chosen
(unnormalised, M / m_i has expected weight sum_i pi_i M / m_i = C: focal with that alpha at gamma 0
is C times CE at uniform logits). The weights set
the ratio between classes; the scale is fixed by this rule. Weighted means (torch's
``F.cross_entropy(weight=...)``: weighted_ce, dice_ce, LDAM's DRW) are unchanged by any scaling.
A scheme with parameters may be written as a mapping wherever a scheme name is accepted:
``{scheme: effective, beta: 0.99}``, ``{scheme: boundary, eps: 0.01}`` (``SCHEME_PARAMETERS``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pipeline.errors import ConfigError

WEIGHTING_SCHEMES = ("inverse", "sqrt", "effective", "boundary", "none")
# The parameters a scheme takes, in its mapping form {scheme: <name>, <parameter>: <value>}.
SCHEME_PARAMETERS: dict[str, tuple[str, ...]] = {"effective": ("beta",), "boundary": ("eps",)}


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


def check_eps(eps: Any) -> float:
    """The ``boundary`` scheme's sharpness: a finite number > 0 (0 is ``none``; infinity is ``inverse``)."""
    if eps is None:
        raise ConfigError("the 'boundary' scheme needs eps (its sharpness): write {scheme: boundary, eps: 0.01}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ConfigError(f"eps must be a finite number > 0 for the 'boundary' scheme, got {eps!r}")
    return float(eps)


def boundary_weights(class_counts: Sequence[float], eps: float) -> torch.Tensor:
    """Weights relative to the majority class (float64, shape (C,), majority = 1) that put the optimum
    of the seeds' one-threshold model on the class boundary (Le Bich Phuong and Nguyen Tien Zung,
    "Gradient flows of loss functions", talk, Ritsumeikan University, Dec 2018; /work/shared/seeds/000).

    Units: ``pi_i = m_i / sum_j m_j`` is class i's share of the training split (images; pixels for
    segmentation), ``pi_maj = max_j pi_j`` the majority class's share, and ``eps`` is the sharpness
    in squared units of that share, i.e. the toy model below with the training set's total mass 1:

        w_i / w_maj = (pi_maj / pi_i) * sqrt((pi_i^2 + eps) / (pi_maj^2 + eps))
                    = sqrt((1 + eps / pi_i^2) / (1 + eps / pi_maj^2))

    It lies between 1 (eps -> 0) and inverse frequency pi_maj / pi_i (eps -> infinity); at
    eps = pi_i * pi_maj it is sqrt(pi_maj / pi_i). Counts and pixel counts give the same weights
    for the same shares, so eps does not depend on the size of the data set.

    Derivation (two classes). Inputs omega in [a, b) of total mass 1; the minority ("yes") holds
    [a, a_1), mass m = a_1 - a, the majority ("no") [a_1, b), mass M = b - a_1. The model predicts
    "yes" where its gain g = phi_eps(omega - theta) > 0, phi_eps(x) = -x / sqrt(x^2 + eps), and
    training maximises G(theta) = w_+ int_a^a_1 g d omega - w_- int_a_1^b g d omega. Since
    phi_eps(0) = 0,

        G'(a_1) = w_+ m / sqrt(m^2 + eps) - w_- M / sqrt(M^2 + eps),

    which vanishes, i.e. the optimum sits exactly on the boundary a_1, iff
    w_+ / w_- = (M / m) sqrt((m^2 + eps) / (M^2 + eps)). Unweighted (w_+ = w_-) the optimum moves
    into the minority (fewer "yes" than in reality); inverse frequency (M / m) moves it into the
    majority, since sqrt((m^2 + eps) / (M^2 + eps)) < 1: it overshoots, as the talk warns.

    C classes: each class is weighed against the majority class as the minority of that
    two-class model (m = pi_i, M = pi_maj). This is exact for C = 2 and a pairwise heuristic
    beyond. For a deep network eps is not the network's own sharpness: it is the one knob that
    moves the weights from none to inverse frequency, to be chosen on the validation split.
    """
    counts = torch.tensor(check_class_counts(class_counts), dtype=torch.float64)
    eps = check_eps(eps)
    shares = counts / counts.sum()
    return torch.sqrt((1.0 + eps / shares**2) / (1.0 + eps / shares.max() ** 2))


def class_weights(
    class_counts: Sequence[float], scheme: str, beta: float = 0.999, eps: float | None = None
) -> torch.Tensor:
    """Per-class weights (float32, shape (C,)) from the training-set class counts, normalised to
    mean 1 over the training samples (``normalise_weights``); ``eps`` is the ``boundary`` scheme's
    sharpness (``boundary_weights``)."""
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
    elif scheme == "boundary":
        weights = boundary_weights(counts.tolist(), eps)
    else:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise ConfigError(f"beta must lie in [0, 1) for the 'effective' scheme, got {beta!r}")
        # (1 - beta^m) underflows to (1 - 0) for huge pixel counts: all such weights become equal, as they should.
        weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return normalise_weights(weights, counts.tolist())


def normalise_weights(weights: torch.Tensor, class_counts: Sequence[float] | None) -> torch.Tensor:
    """``weights`` rescaled so that sum_i pi_i w_i = 1 (float32), pi_i = m_i / M the training priors.

    The expected weight of a training sample is then 1: at uniform logits every sample's CE is
    log C, so a per-sample weighted loss (focal, dynamical) equals CE there, and the size of an
    optimizer step at a given learning rate does not depend on the weighting. Without
    ``class_counts`` the priors are taken as uniform (the weights' plain mean is 1).
    """
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if class_counts is None:
        priors = torch.full_like(weights, 1.0 / weights.numel())
    else:
        counts = torch.tensor(check_class_counts(class_counts, weights.numel()), dtype=torch.float64)
        priors = counts / counts.sum()
    return (weights / (priors * weights).sum()).to(torch.float32)


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
    """Turn a config ``weights:`` value into a (C,) tensor normalised to mean 1 over the training
    samples (``normalise_weights``), or None for no weighting.

    ``weights`` is None, a scheme name (needs ``class_counts``), a scheme with its parameters as a
    mapping (``{scheme: boundary, eps: 0.01}``; ``SCHEME_PARAMETERS``), or an explicit list of C
    non-negative floats. A list gives the ratios between classes and is rescaled like a scheme
    (with uniform priors when there are no ``class_counts``), so a list that repeats a scheme's
    values gives the same loss. ``name`` is the config key, used in error messages.
    """
    eps = None
    if isinstance(weights, Mapping):
        weights, beta, eps = _scheme_mapping(weights, beta, name)
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
        try:
            return class_weights(class_counts, weights, beta=beta, eps=eps)
        except ConfigError as err:
            raise ConfigError(f"{name}: {err}") from err
    return normalise_weights(_explicit_weights(weights, num_classes, name), class_counts)


def _scheme_mapping(spec: Mapping[str, Any], beta: float, name: str) -> tuple[str, float, float | None]:
    """(scheme, beta, eps) from ``{scheme: <name>, <parameter>: <value>}``."""
    scheme = spec.get("scheme")
    if not isinstance(scheme, str) or scheme not in WEIGHTING_SCHEMES:
        raise ConfigError(
            f"{name}: a mapping must name its 'scheme', one of {list(WEIGHTING_SCHEMES)}; got {dict(spec)!r}"
        )
    allowed = SCHEME_PARAMETERS.get(scheme, ())
    unknown = sorted(set(spec) - {"scheme", *allowed})
    if unknown:
        raise ConfigError(f"{name}: scheme {scheme!r} got unknown parameter(s) {unknown}; it takes {list(allowed)}")
    return scheme, spec.get("beta", beta), spec.get("eps")


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
