import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from pipeline.evaluation.stats import (
    bootstrap_ci,
    bootstrap_distribution,
    bootstrap_estimates,
    bootstrap_mean,
    paired_bootstrap_difference,
    percentile_ci,
    proportion,
    wilson_ci,
)
from pipeline.rundir import to_jsonable
from pipeline.rundir import write_metrics as write_metrics_json


def wilson_by_hand(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson (1927) score interval written out, an independent route from statsmodels."""
    z = norm.ppf(1 - alpha / 2)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(3, 4), (0, 7), (7, 7), (18, 25), (1101, 1512)])
def test_wilson_matches_the_formula(k, n):
    assert wilson_ci(k, n) == pytest.approx(wilson_by_hand(k, n), abs=1e-12)


def test_wilson_known_value():
    # 3/4: centre (3 + z^2/2)/(4 + z^2) = 0.6275, half-width 0.3269 (worked by hand with z = 1.95996)
    lo, hi = wilson_ci(3, 4)
    assert lo == pytest.approx(0.30064, abs=1e-4)
    assert hi == pytest.approx(0.95442, abs=1e-4)


def test_wilson_and_proportion_with_no_cases_are_nan():
    assert all(math.isnan(x) for x in wilson_ci(0, 0))
    result = proportion(0, 0)
    assert math.isnan(result["value"]) and result["n"] == 0 and result["k"] == 0
    assert to_jsonable(result) == {"value": None, "ci95": [None, None], "n": 0, "k": 0}


def test_proportion_shape():
    result = proportion(3, 4)
    assert result["value"] == 0.75 and (result["k"], result["n"]) == (3, 4)
    assert result["ci95"] == pytest.approx(list(wilson_by_hand(3, 4)))


@pytest.mark.parametrize("k,n", [(5, 4), (-1, 3), (1.5, 3)])
def test_bad_counts_are_rejected(k, n):
    with pytest.raises(ValueError):
        wilson_ci(k, n)


def test_bootstrap_is_deterministic_and_follows_the_documented_resampling():
    x = np.random.default_rng(1).normal(size=40)
    first = bootstrap_ci(np.mean, [x], n_resamples=200, seed=7)
    assert first == bootstrap_ci(np.mean, [x], n_resamples=200, seed=7)
    assert first != bootstrap_ci(np.mean, [x], n_resamples=200, seed=8)
    # the same draws written out: default_rng(seed).integers(0, n, n) per resample, percentile 2.5/97.5
    rng = np.random.default_rng(7)
    means = [x[rng.integers(0, 40, size=40)].mean() for _ in range(200)]
    assert first == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))


def test_bootstrap_ci_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=30), rng.normal(size=3000)
    lo_s, hi_s = bootstrap_ci(np.mean, [small], n_resamples=300)
    lo_l, hi_l = bootstrap_ci(np.mean, [large], n_resamples=300)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4
    # a 95% interval of the mean is about +-1.96 standard errors
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * large.std() / math.sqrt(3000), rel=0.15)


def test_bootstrap_resamples_rows_jointly():
    x = np.arange(50.0)
    # statistic is 0 on every resample only if x and y rows stay paired
    samples = bootstrap_distribution(lambda a, b: np.max(np.abs(a - b)), [x, x.copy()], n_resamples=50)
    assert np.all(samples == 0)


def test_degenerate_resamples_are_skipped_and_counted():
    y = np.array([1] + [0] * 19)  # one positive: many resamples have none

    def positive_rate_among_ones(labels):
        return float(labels.mean()) if labels.any() else math.nan

    (estimate,) = bootstrap_estimates(lambda v: [positive_rate_among_ones(v)], [y], n_resamples=300, seed=3)
    rng = np.random.default_rng(3)
    expected_skips = sum(not y[rng.integers(0, 20, size=20)].any() for _ in range(300))
    assert expected_skips > 0
    assert estimate["n_skipped_resamples"] == expected_skips
    assert estimate["value"] == 0.05
    assert all(math.isfinite(v) for v in estimate["ci95"])


def test_all_resamples_degenerate_gives_nan_interval():
    assert all(math.isnan(v) for v in percentile_ci(np.full(10, np.nan)))
    assert all(math.isnan(v) for v in bootstrap_ci(lambda v: math.nan, [np.arange(5)], n_resamples=20))
    assert all(math.isnan(v) for v in bootstrap_ci(np.mean, [np.arange(1)], n_resamples=20))


def test_bootstrap_mean_drops_nan_and_contains_the_mean():
    values = np.r_[np.linspace(0.2, 0.9, 20), np.nan, np.nan]
    result = bootstrap_mean(values, n_resamples=300, seed=0)
    assert result["n"] == 20
    assert result["value"] == pytest.approx(np.linspace(0.2, 0.9, 20).mean())
    assert result["ci95"][0] < result["value"] < result["ci95"][1]
    assert result == bootstrap_mean(values, n_resamples=300, seed=0)
    empty = bootstrap_mean([np.nan], n_resamples=10)
    assert empty["n"] == 0 and math.isnan(empty["value"])


def _accuracy(y, pred):
    return float(np.mean(y == pred))


def test_paired_difference_of_identical_predictions_is_zero():
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
    result = paired_bootstrap_difference(_accuracy, y, pred, pred.copy(), n_resamples=200)
    assert result["difference"] == 0 and result["ci95"] == [0, 0] and result["p_value"] == 1.0
    assert result["n"] == 60


def test_paired_difference_detects_a_better_model():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    better = np.where(rng.random(200) < 0.9, y, (y + 1) % 3)
    worse = np.where(rng.random(200) < 0.5, y, (y + 1) % 3)
    result = paired_bootstrap_difference(_accuracy, y, better, worse, n_resamples=500, seed=1)
    assert result["difference"] == pytest.approx(_accuracy(y, better) - _accuracy(y, worse))
    assert result["ci95"][0] > 0
    assert result["p_value"] == pytest.approx(2 / 501)  # no resample <= 0: (0 + 1) / (B + 1), two-sided
    swapped = paired_bootstrap_difference(_accuracy, y, worse, better, n_resamples=500, seed=1)
    assert swapped["difference"] == -result["difference"] and swapped["ci95"][1] < 0


def test_paired_difference_p_value_agrees_with_the_interval():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 80)
    a = np.where(rng.random(80) < 0.75, y, 1 - y)
    b = np.where(rng.random(80) < 0.70, y, 1 - y)
    result = paired_bootstrap_difference(_accuracy, y, a, b, n_resamples=400, seed=2)
    excludes_zero = result["ci95"][0] > 0 or result["ci95"][1] < 0
    assert excludes_zero == (result["p_value"] < 0.05)
    assert 0 < result["p_value"] <= 1


def test_to_jsonable_and_strict_json(tmp_path):
    data = {"a": np.float32(0.5), "b": np.int64(3), "c": (1.0, float("nan")), "d": np.array([np.inf, 2.0]),
            "e": {"f": np.bool_(True), "g": None}}
    assert to_jsonable(data) == {"a": 0.5, "b": 3, "c": [1.0, None], "d": [None, 2.0], "e": {"f": True, "g": None}}
    path = write_metrics_json(data, tmp_path / "sub" / "metrics.json")

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    assert json.loads(path.read_text(), parse_constant=reject)["c"] == [1.0, None]
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp file left behind
    with pytest.raises(TypeError):
        to_jsonable({"x": object()})


# --- cluster bootstrap: whole lesions / patients resampled (issue 10)
def test_group_bootstrap_keeps_each_groups_rows_together():
    from pipeline.evaluation.stats import bootstrap_distribution

    groups = ["a", "a", "a", "b", "c", "c"]
    values = np.array([1.0, 1.0, 1.0, 5.0, 9.0, 9.0])
    sizes = bootstrap_distribution(lambda v: [len(v), v.sum()], [values], n_resamples=200, seed=0, groups=groups)
    # every resample is a union of whole groups: its size is a sum of group sizes (3, 1, 2) over 3 draws
    possible = {a + b + c for a in (3, 1, 2) for b in (3, 1, 2) for c in (3, 1, 2)}
    assert set(sizes[:, 0].astype(int)) <= possible and len(set(sizes[:, 0])) > 1
    # a resample's sum is 3 per draw of a, 5 per b, 18 per c
    for size, total in sizes:
        assert any(3 * x + 5 * y + 18 * z == total and 3 * x + y + 2 * z == size
                   for x in range(4) for y in range(4) for z in range(4) if x + y + z == 3)


def test_clustered_images_widen_the_interval():
    from pipeline.evaluation.stats import bootstrap_estimates

    rng = np.random.default_rng(0)
    lesion_effect = rng.normal(0, 1, 40)
    values = np.repeat(lesion_effect, 5) + rng.normal(0, 0.1, 200)  # 5 near-identical images per lesion
    groups = np.repeat(np.arange(40), 5)
    (by_image,) = bootstrap_estimates(lambda v: [v.mean()], [values], 500, 0)
    (by_lesion,) = bootstrap_estimates(lambda v: [v.mean()], [values], 500, 0, groups=groups)
    width = lambda e: e["ci95"][1] - e["ci95"][0]  # noqa: E731
    assert by_lesion["value"] == by_image["value"]
    assert width(by_lesion) > 1.8 * width(by_image)  # ~sqrt(5) wider: 40 lesions, not 200 images


def test_groups_must_cover_every_row():
    from pipeline.evaluation.stats import bootstrap_distribution

    with pytest.raises(ValueError, match="groups has 2 entries for 3 rows"):
        bootstrap_distribution(lambda v: v.mean(), [np.ones(3)], 10, 0, groups=["a", "b"])
