"""Statistics of the paired comparison (pipeline.evaluation.paired)."""

import math

import numpy as np
import pytest
from sklearn.metrics import recall_score

from pipeline.evaluation import paired


def test_class_sensitivity_equals_sklearn_recall():
    rng = np.random.default_rng(0)
    y = rng.choice(["A", "B", "C"], 200)
    pred = rng.choice(["A", "B", "C"], 200)
    for code in "ABC":
        assert paired.class_sensitivity(code)(y, pred) == pytest.approx(recall_score(y == code, pred == code), abs=1e-12)
    assert math.isnan(paired.class_sensitivity("D")(y, pred))
