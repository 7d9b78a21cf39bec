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


# ------------------------------------------------------------------------- the 'boundary' scheme
from pipeline.losses import build_loss  # noqa: E402
from pipeline.losses.weighting import boundary_weights  # noqa: E402


def relative(weights):
    """Weights relative to the majority class (index of the largest count is 0 in these tests)."""
    return weights / weights[0]


def test_boundary_two_classes_by_hand():
    # shares 0.8 / 0.2, eps = 0.01: (0.8 / 0.2) * sqrt((0.04 + 0.01) / (0.64 + 0.01))
    weights = class_weights([80, 20], "boundary", eps=0.01)
    assert relative(weights)[1].item() == pytest.approx(4 * math.sqrt(0.05 / 0.65), rel=1e-6)


def test_boundary_lies_between_none_and_inverse_frequency():
    counts = [6705, 1113, 115]  # NV, MEL, DF in ISIC 2018
    inverse = relative(torch.tensor([1 / c for c in counts], dtype=torch.float64))
    assert torch.allclose(relative(boundary_weights(counts, 1e-12)), torch.ones(3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(relative(boundary_weights(counts, 1e6)), inverse, rtol=1e-4)
    middle = relative(boundary_weights(counts, 1e-3))
    assert (middle[1:] > 1).all() and (middle[1:] < inverse[1:]).all()
    # at eps = pi_i * pi_max the weight is sqrt(pi_max / pi_i)
    shares = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    at = relative(boundary_weights(counts, float(shares[2] * shares[0])))
    assert at[2].item() == pytest.approx(math.sqrt(counts[0] / counts[2]), rel=1e-9)


def test_boundary_depends_on_shares_not_on_data_set_size():
    assert torch.allclose(class_weights([50, 10, 3], "boundary", eps=0.002),
                          class_weights([50_000, 10_000, 3_000], "boundary", eps=0.002))


def test_boundary_weights_put_the_one_threshold_optimum_on_the_boundary():
    """The seeds' toy model: omega in [0, 1), minority 'yes' on [0, a1), majority on [a1, 1), gain
    phi_eps(omega - theta), weighted measure. Its argmax is a1 with 'boundary' weights; unweighted it
    lies inside the minority, with inverse-frequency weights inside the majority (overshoot)."""
    from scipy.integrate import quad
    from scipy.optimize import minimize_scalar

    a1, eps = 0.1, 0.01

    def phi(x):
        return -x / math.sqrt(x * x + eps)

    def argmax(w_yes, w_no):
        def gain(theta):
            yes = quad(lambda w: phi(w - theta), 0.0, a1)[0]
            no = quad(lambda w: phi(w - theta), a1, 1.0)[0]
            return w_yes * yes - w_no * no

        return minimize_scalar(lambda t: -gain(t), bounds=(0.0, 1.0), method="bounded",
                               options={"xatol": 1e-7}).x

    weights = class_weights([90, 10], "boundary", eps=eps)  # majority first
    assert argmax(weights[1].item(), weights[0].item()) == pytest.approx(a1, abs=1e-4)
    assert argmax(1.0, 1.0) < a1 - 0.01
    assert argmax(9.0, 1.0) > a1 + 0.01


def test_boundary_scheme_as_a_mapping_wherever_weights_are_accepted():
    counts = [90, 10, 5]
    expected = class_weights(counts, "boundary", eps=0.003)
    spec = {"scheme": "boundary", "eps": 0.003}
    assert torch.equal(resolve_weights(spec, num_classes=3, class_counts=counts), expected)
    assert torch.equal(build_loss("weighted_ce", num_classes=3, class_counts=counts, weights=spec).class_weight, expected)
    assert torch.equal(build_loss("focal", num_classes=3, class_counts=counts, alpha=spec).alpha, expected)
    effective = resolve_weights({"scheme": "effective", "beta": 0.5}, num_classes=3, class_counts=counts)
    assert torch.equal(effective, class_weights(counts, "effective", beta=0.5))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("boundary", "alpha: the 'boundary' scheme needs eps"),
        ({"scheme": "boundary"}, "needs eps"),
        ({"scheme": "boundary", "eps": 0}, r"eps must be a finite number > 0"),
        ({"scheme": "boundary", "eps": float("inf")}, r"eps must be a finite number > 0"),
        ({"scheme": "boundary", "eps": "small"}, r"eps must be a finite number > 0"),
        ({"scheme": "boundary", "eps": 0.1, "beta": 0.9}, r"unknown parameter\(s\) \['beta'\]; it takes \['eps'\]"),
        ({"scheme": "sqrt", "eps": 0.1}, r"scheme 'sqrt' got unknown parameter\(s\) \['eps'\]"),
        ({"eps": 0.1}, "must name its 'scheme'"),
    ],
)
def test_boundary_parameters_are_validated(weights, message):
    with pytest.raises(ConfigError, match=message):
        resolve_weights(weights, num_classes=2, class_counts=[9, 1], name="alpha")
