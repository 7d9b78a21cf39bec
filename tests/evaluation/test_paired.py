"""Statistics of the paired comparison (pipeline.evaluation.paired)."""

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, recall_score

from pipeline.evaluation import paired


def test_class_sensitivity_equals_sklearn_recall():
    rng = np.random.default_rng(0)
    y = rng.choice(["A", "B", "C"], 200)
    pred = rng.choice(["A", "B", "C"], 200)
    for code in "ABC":
        assert paired.class_sensitivity(code)(y, pred) == pytest.approx(recall_score(y == code, pred == code), abs=1e-12)
    assert math.isnan(paired.class_sensitivity("D")(y, pred))


def test_balanced_accuracy_equals_sklearn_on_bootstrap_like_resamples():
    # resamples of a long-tailed test set: rare classes drop out of y_true while still predicted
    rng = np.random.default_rng(1)
    codes = np.array(["NV", "MEL", "BKL", "BCC", "AKIEC", "VASC", "DF"])
    y = rng.choice(codes, 60, p=[0.6, 0.12, 0.1, 0.08, 0.05, 0.03, 0.02])
    pred = np.where(rng.random(60) < 0.6, y, rng.choice(codes, 60))
    for _ in range(200):
        index = rng.integers(0, len(y), len(y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
            expected = balanced_accuracy_score(y[index], pred[index])
        assert paired.balanced_accuracy(y[index], pred[index]) == pytest.approx(expected, abs=1e-12)
