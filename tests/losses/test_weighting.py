import math

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.losses.weighting import class_priors, class_weights, resolve_weights


def test_inverse_is_total_over_count():
    # M = 4: 4/1 and 4/3
    assert torch.allclose(class_weights([1, 3], "inverse"), torch.tensor([4.0, 4.0 / 3.0]))


def test_sqrt_is_root_of_inverse():
    assert torch.allclose(class_weights([1, 3], "sqrt"), torch.tensor([2.0, math.sqrt(4.0 / 3.0)]))


def test_effective_number_by_hand():
    # beta = 0.5: raw (1-b)/(1-b^1) = 1, (1-b)/(1-b^2) = 0.5/0.75 = 2/3; sum 5/3; scaled to sum 2
    weights = class_weights([1, 2], "effective", beta=0.5)
    assert torch.allclose(weights, torch.tensor([1.2, 0.8]))


def test_effective_sums_to_num_classes_and_survives_huge_counts():
    weights = class_weights([7, 300, 10**9], "effective", beta=0.999)
    assert weights.sum().item() == pytest.approx(3.0, rel=1e-6)
    assert weights[0] > weights[1] > weights[2]
    assert torch.isfinite(weights).all()


def test_none_is_ones():
    assert torch.equal(class_weights([5, 1, 2], "none"), torch.ones(3))


def test_zero_count_names_the_class():
    with pytest.raises(ConfigError, match="class 1 has count 0"):
        class_weights([4, 0, 2], "inverse")


def test_unknown_scheme_lists_schemes():
    with pytest.raises(ConfigError, match="effective"):
        class_weights([1, 2], "log")


def test_bad_beta():
    with pytest.raises(ConfigError, match="beta"):
        class_weights([1, 2], "effective", beta=1.0)


def test_priors():
    assert torch.allclose(class_priors([1, 3]), torch.tensor([0.25, 0.75]))


def test_resolve_scheme_list_and_none():
    assert resolve_weights(None, num_classes=2, class_counts=None) is None
    assert resolve_weights("none", num_classes=2, class_counts=None) is None
    assert torch.allclose(resolve_weights("inverse", num_classes=2, class_counts=[1, 3]), torch.tensor([4.0, 4 / 3]))
    assert torch.equal(resolve_weights([0.5, 2], num_classes=2, class_counts=None), torch.tensor([0.5, 2.0]))


@pytest.mark.parametrize(
    ("weights", "counts", "message"),
    [
        ("inverse", None, "needs class_counts"),
        ("inverse", [1, 2, 3], "3 entries but there are 2"),
        ([1.0], None, "1 entries but there are 2"),
        ([1.0, -1.0], None, r"weights\[1\] is negative"),
        ([0.0, 0.0], None, "all zero"),
        ([1.0, "a"], None, "finite number"),
        ("balanced", [1, 2], "unknown weighting scheme"),
    ],
)
def test_resolve_rejects(weights, counts, message):
    with pytest.raises(ConfigError, match=message):
        resolve_weights(weights, num_classes=2, class_counts=counts)
