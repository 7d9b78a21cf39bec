"""Confidence intervals shared by the classification and segmentation metrics.

Conventions used everywhere in ``metrics.json``:

* a proportion is ``{"value", "ci95", "n", "k"}`` with a Wilson score interval (statsmodels);
* any other statistic is ``{"value", "ci95", "n_skipped_resamples"}`` with a percentile bootstrap
  interval over images (rows are resampled jointly, so paired arrays stay paired);
* an undefined figure (no data) is NaN in Python and ``null`` in JSON.

Degenerate bootstrap resamples: a resample on which a statistic is undefined (for example a class
absent from the resampled images, so its recall or AUC does not exist) is skipped, not imputed.
Statistics signal this by returning NaN (they must not raise); the interval is taken over the
remaining resamples and the number skipped is reported next to it, so a reader can see when an
interval rests on fewer resamples than requested. With no valid resample the interval is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.stats
from statsmodels.stats.proportion import proportion_confint


CI_LEVEL = 0.95
_NAN_CI = (math.nan, math.nan)


# --------------------------------------------------------------------------- proportions
def wilson_ci(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for ``successes / n`` (statsmodels ``proportion_confint``).

    ``n == 0`` gives ``(nan, nan)``: the proportion is undefined, not zero.
    """
    successes, n = _check_counts(successes, n)
    if n == 0:
        return _NAN_CI
    lo, hi = proportion_confint(successes, n, alpha=alpha, method="wilson")
    return float(lo), float(hi)


def proportion(successes: int, n: int) -> dict[str, Any]:
    """``{"value": k/n, "ci95": [lo, hi] (Wilson), "n": n, "k": k}``; value NaN when ``n == 0``."""
    successes, n = _check_counts(successes, n)
    value = successes / n if n else math.nan
    return {"value": value, "ci95": list(wilson_ci(successes, n)), "n": n, "k": successes}


def _check_counts(successes: int, n: int) -> tuple[int, int]:
    if int(successes) != successes or int(n) != n:
        raise ValueError(f"counts must be integers, got successes={successes!r}, n={n!r}")
    successes, n = int(successes), int(n)
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    return successes, n


# --------------------------------------------------------------------------- bootstrap
def group_members(groups: Sequence[Any]) -> list[np.ndarray]:
    """Row indices of each group (lesion or patient), in order of first appearance."""
    _, first, inverse = np.unique(np.asarray(groups).astype(str), return_index=True, return_inverse=True)
    order = np.argsort(first)  # groups in order of first appearance: stable under relabelling
    return [np.flatnonzero(inverse == g) for g in order]


def bootstrap_distribution(
    statistic: Callable[..., float | Sequence[float] | np.ndarray],
    arrays: Sequence[Any],
    n_resamples: int = 1000,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
) -> np.ndarray:
    """Values of ``statistic(*resampled_arrays)`` over ``n_resamples`` paired resamples.

    Rows (axis 0) of all arrays are resampled with the same indices, drawn from
    ``numpy.random.default_rng(seed)``: the result is deterministic for a given seed. With
    ``groups`` (a group id per row: the lesion or patient), whole groups are resampled with
    replacement and every row of a drawn group comes with it (the cluster bootstrap; Davison and
    Hinkley 1997, section 3.8): images of one lesion are not independent evidence. The statistic
    may return a scalar or a 1-D vector (several statistics on the same resamples); an entry that is
    NaN marks that statistic as undefined on that resample (skipped by :func:`percentile_ci`).
    Returns an array of shape ``(n_resamples, n_statistics)``.
    """
    arrays = [np.asarray(a) for a in arrays]
    n_rows = _common_length(arrays)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    members = None
    if groups is not None:
        if len(groups) != n_rows:
            raise ValueError(f"groups has {len(groups)} entries for {n_rows} rows")
        members = group_members(groups)
    rng = np.random.default_rng(seed)
    rows: list[np.ndarray] = []
    for _ in range(n_resamples):
        if members is None:
            idx = rng.integers(0, n_rows, size=n_rows)
        else:
            idx = np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])
        value = np.atleast_1d(np.asarray(statistic(*(a[idx] for a in arrays)), dtype=float))
        rows.append(value.ravel())
    return np.vstack(rows)


def percentile_ci(samples: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of the finite entries of a 1-D array of bootstrap values."""
    finite = np.asarray(samples, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return _NAN_CI
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def bootstrap_ci(
    statistic: Callable[..., float],
    arrays: Sequence[Any],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a scalar statistic, rows of ``arrays`` resampled jointly.

    Deterministic for a given ``seed``. Resamples where the statistic is NaN (undefined) are
    skipped; fewer than two rows, or no valid resample, gives ``(nan, nan)``.
    """
    if _common_length([np.asarray(a) for a in arrays]) < 2:
        return _NAN_CI
    samples = bootstrap_distribution(statistic, arrays, n_resamples, seed)
    if samples.shape[1] != 1:
        raise ValueError("bootstrap_ci needs a scalar statistic; use bootstrap_distribution for vectors")
    return percentile_ci(samples[:, 0], alpha)


def bootstrap_estimates(
    statistic: Callable[..., Sequence[float] | np.ndarray],
    arrays: Sequence[Any],
    n_resamples: int = 1000,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """``[{"value", "ci95", "n_skipped_resamples"}]``, one per entry of a vector statistic.

    ``value`` is the statistic on the full data; the interval comes from one set of paired
    resamples shared by all entries (of rows, or of whole ``groups``: see ``bootstrap_distribution``).
    """
    arrays = [np.asarray(a) for a in arrays]
    values = np.atleast_1d(np.asarray(statistic(*arrays), dtype=float))
    if _common_length(arrays) < 2:
        return [_estimate(v, _NAN_CI, n_resamples) for v in values]
    samples = bootstrap_distribution(statistic, arrays, n_resamples, seed, groups=groups)
    if samples.shape[1] != values.size:
        raise ValueError("the statistic returned vectors of different lengths on different inputs")
    return [
        _estimate(v, percentile_ci(samples[:, j]), int(np.sum(~np.isfinite(samples[:, j]))))
        for j, v in enumerate(values)
    ]


def bootstrap_mean(values: Sequence[float] | np.ndarray, n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean of the finite ``values`` with a percentile bootstrap CI (``scipy.stats.bootstrap``).

    Non-finite entries are dropped first (they mean "not applicable", e.g. a lesion type absent
    from both truth and prediction in that image). Returns ``{"value", "ci95", "n"}``; the CI is
    NaN with fewer than two values, and the value NaN with none.
    """
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return {"value": math.nan, "ci95": list(_NAN_CI), "n": 0}
    ci = _NAN_CI
    if finite.size >= 2:
        result = scipy.stats.bootstrap(
            (finite,), np.mean, n_resamples=n_resamples, method="percentile",
            confidence_level=CI_LEVEL, rng=np.random.default_rng(seed), vectorized=True,
        )
        ci = (float(result.confidence_interval.low), float(result.confidence_interval.high))
    return {"value": float(np.mean(finite)), "ci95": list(ci), "n": int(finite.size)}


def paired_bootstrap_difference(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Difference ``statistic(y_true, pred_a) - statistic(y_true, pred_b)`` with a paired bootstrap.

    ``pred_a`` (the experiment) and ``pred_b`` (the baseline) must be predictions for the same
    images in the same order (align them by ``image_id`` first). The same resampled rows are used
    for both, so image difficulty cancels out. Returns ``{"difference", "ci95", "p_value", "n",
    "n_skipped_resamples"}``.

    ``p_value`` is the two-sided bootstrap p-value obtained by inverting the percentile interval,
    ``2 * min(P*(d <= 0), P*(d >= 0))`` with the ``(count + 1) / (B + 1)`` correction of Davison &
    Hinkley (1997, Bootstrap Methods and their Application, eq. 4.11), so it is never exactly 0
    and is below ``alpha`` when the ``1 - alpha`` percentile interval excludes 0.
    """
    y_true, pred_a, pred_b = (np.asarray(a) for a in (y_true, pred_a, pred_b))
    n_rows = _common_length([y_true, pred_a, pred_b])

    def difference(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return float(statistic(y, a)) - float(statistic(y, b))

    observed = difference(y_true, pred_a, pred_b)
    if n_rows < 2:
        return {"difference": observed, "ci95": list(_NAN_CI), "p_value": math.nan, "n": n_rows,
                "n_skipped_resamples": n_resamples}
    samples = bootstrap_distribution(difference, [y_true, pred_a, pred_b], n_resamples, seed)[:, 0]
    valid = samples[np.isfinite(samples)]
    if valid.size == 0:
        p_value = math.nan
    else:
        tail_low = (np.sum(valid <= 0) + 1) / (valid.size + 1)
        tail_high = (np.sum(valid >= 0) + 1) / (valid.size + 1)
        p_value = float(min(1.0, 2 * min(tail_low, tail_high)))
    return {
        "difference": observed,
        "ci95": list(percentile_ci(valid, alpha)),
        "p_value": p_value,
        "n": n_rows,
        "n_skipped_resamples": int(n_resamples - valid.size),
    }


def _estimate(value: float, ci: tuple[float, float], n_skipped: int) -> dict[str, Any]:
    return {"value": float(value), "ci95": list(ci), "n_skipped_resamples": n_skipped}


def _common_length(arrays: Sequence[np.ndarray]) -> int:
    if not arrays:
        raise ValueError("need at least one array to resample")
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"paired arrays must have the same number of rows, got lengths {sorted(lengths)}")
    return lengths.pop()
