import math

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.losses.weighting import class_priors, class_weights, normalise_weights, resolve_weights


def normalised(raw, counts):
    """raw weights divided by their prior-weighted mean sum_i pi_i w_i, pi_i = m_i / M."""
    raw = torch.as_tensor(raw, dtype=torch.float64)
    priors = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    return (raw / (priors * raw).sum()).float()


def test_inverse_is_total_over_count():
    counts = [1, 3]
    raw = [sum(counts) / m for m in counts]
    assert torch.allclose(class_weights(counts, "inverse"), normalised(raw, counts))


def test_sqrt_is_root_of_inverse():
    counts = [1, 3]
    raw = [math.sqrt(sum(counts) / m) for m in counts]
    assert torch.allclose(class_weights(counts, "sqrt"), normalised(raw, counts))


def test_effective_number_by_hand():
    # beta = 0.5: raw (1-b)/(1-b^1) = 1, (1-b)/(1-b^2) = 0.5/0.75 = 2/3
    weights = class_weights([1, 2], "effective", beta=0.5)
    assert torch.allclose(weights, normalised([1.0, 2.0 / 3.0], [1, 2]))


def test_effective_survives_huge_counts():
    counts = [7, 300, 10**9]
    weights = class_weights(counts, "effective", beta=0.999)
    assert weights[0] > weights[1] > weights[2]
    assert torch.isfinite(weights).all()
    assert float((class_priors(counts) * weights).sum()) == pytest.approx(1.0, rel=1e-6)


COUNT_SETS = [[1, 3], [6705, 1113, 514, 327, 1099, 115, 142], [10**7, 50, 3, 400]]


@pytest.mark.parametrize("counts", COUNT_SETS)
@pytest.mark.parametrize("scheme", ["inverse", "sqrt", "effective", "none", "list"])
def test_every_scheme_has_mean_one_over_training_samples(scheme, counts):
    """sum_i pi_i w_i = 1 for every scheme and for explicit lists, with the ratios kept."""
    raw = {"inverse": [1.0 / m for m in counts], "sqrt": [1.0 / math.sqrt(m) for m in counts],
           "effective": [(1 - 0.999) / (1 - 0.999**m) for m in counts], "none": [1.0] * len(counts),
           "list": [float(k + 1) ** 2 for k in range(len(counts))]}[scheme]
    if scheme == "list":
        weights = resolve_weights(raw, num_classes=len(counts), class_counts=counts)
    else:
        weights = class_weights(counts, scheme)
    priors = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    assert float((priors * weights.double()).sum()) == pytest.approx(1.0, rel=1e-6)
    assert torch.allclose(weights, normalised(raw, counts), rtol=1e-5)


def test_normalise_weights_is_idempotent_and_uniform_without_counts():
    counts = [6705, 115, 142]
    once = normalise_weights(torch.tensor([3.0, 1.0, 7.0]), counts)
    assert torch.allclose(normalise_weights(once, counts), once)
    assert torch.allclose(normalise_weights(torch.tensor([1.0, 3.0]), None), torch.tensor([0.5, 1.5]))


def test_explicit_list_equal_to_a_scheme_gives_the_same_weights():
    counts = [40, 7, 3]
    raw = [sum(counts) / m for m in counts]
    assert torch.allclose(resolve_weights(raw, num_classes=3, class_counts=counts),
                          resolve_weights("inverse", num_classes=3, class_counts=counts))


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
    assert torch.allclose(resolve_weights("inverse", num_classes=2, class_counts=[1, 3]),
                          class_weights([1, 3], "inverse"))
    # a list without counts: mean 1 over uniform priors, ratios kept
    assert torch.allclose(resolve_weights([0.5, 2], num_classes=2, class_counts=None), torch.tensor([0.4, 1.6]))


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
