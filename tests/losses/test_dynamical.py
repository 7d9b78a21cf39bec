import math

import pytest
import torch

from pipeline.errors import ConfigError, TrainingError
from pipeline.losses import build_loss, dynamical_weights
from pipeline.losses.dynamical import DynamicalLoss

C, A, T = 3, 3.0, 8


def test_weights_sum_to_num_classes_at_every_step():
    for step in range(4 * T):
        assert dynamical_weights(step, C, A, T).sum().item() == pytest.approx(C, rel=1e-6)


def test_triangle_by_hand():
    # raw weight of the emphasised class: 1 at 0, (1+A)/2 = 2 at T/4, A = 3 at T/2; others 1; scaled to sum 3
    quarter = [2 * 3 / 4, 3 / 4, 3 / 4]
    half = [3 * 3 / 5, 3 / 5, 3 / 5]
    expected = {0: [1.0, 1.0, 1.0], T // 4: quarter, T // 2: half, 3 * T // 4: quarter, T: [1.0, 1.0, 1.0]}
    for step, weights in expected.items():
        assert dynamical_weights(step, C, A, T).tolist() == pytest.approx(weights, rel=1e-6), step


def test_classes_take_turns_in_cycle_order():
    mid = [dynamical_weights(k * T + T // 2, C, A, T, cycle=[2, 0]).argmax().item() for k in range(4)]
    assert mid == [2, 0, 2, 0]
    assert [dynamical_weights(k * T + T // 2, C, A, T).argmax().item() for k in range(4)] == [0, 1, 2, 0]


def test_forward_is_mean_of_weighted_ce_by_hand():
    loss = build_loss("dynamical", num_classes=C, amplitude=A, period=T)
    loss.set_step(T // 2, 100)  # weights (1.8, 0.6, 0.6)
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    value = loss(probs.log(), torch.tensor([0, 2]))
    assert value.item() == pytest.approx((1.8 * -math.log(0.7) + 0.6 * -math.log(0.3)) / 2, rel=1e-5)
    assert torch.allclose(loss.current_weights(), torch.tensor([1.8, 0.6, 0.6]))


def test_final_period_is_plain_ce_only_when_asked():
    total = 10 * T
    step = total - T + T // 2  # mid-period: would be tilted
    plain = build_loss("dynamical", num_classes=C, amplitude=A, period=T, final_plain_ce=True)
    tilted = build_loss("dynamical", num_classes=C, amplitude=A, period=T)
    for loss in (plain, tilted):
        loss.set_step(step, total)
    assert torch.equal(plain.current_weights(), torch.ones(C))
    assert not torch.equal(tilted.current_weights(), torch.ones(C))
    plain.set_step(total - T - T // 2, total)  # before the last period it still tilts
    assert not torch.equal(plain.current_weights(), torch.ones(C))


def test_state_is_only_the_step_set():
    # a fresh module set to step s gives the same value as one that ran through earlier steps (exact resume)
    torch.manual_seed(0)
    logits, target = torch.randn(1, C, 4, 4), torch.randint(0, C, (1, 4, 4))
    ran = build_loss("dynamical", num_classes=C, amplitude=A, period=T, cycle=[1, 2])
    for step in range(7):
        ran.set_step(step, 50)
        ran(logits, target)
    fresh = build_loss("dynamical", num_classes=C, amplitude=A, period=T, cycle=[1, 2])
    fresh.set_step(6, 50)
    assert fresh(logits, target).item() == ran(logits, target).item()


def test_use_before_set_step_is_training_error():
    loss = build_loss("dynamical", num_classes=C, amplitude=A, period=T)
    with pytest.raises(TrainingError, match="set_step"):
        loss(torch.zeros(1, C), torch.tensor([0]))
    with pytest.raises(TrainingError, match="step 11 is outside 0..10"):
        loss.set_step(11, 10)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"cycle": [0, 3]}, r"cycle\[1\] = 3"),
        ({"cycle": []}, "non-empty"),
        ({"cycle": [1, 1]}, "repeats"),
        ({"amplitude": 0.5}, "amplitude"),
        ({"period": 1}, "period"),
    ],
)
def test_bad_config(params, message):
    kwargs = {"amplitude": A, "period": T, **params}
    with pytest.raises(ConfigError, match=message):
        build_loss("dynamical", num_classes=C, **kwargs)


def test_static_weights_sit_under_the_oscillation_and_keep_the_ce_scale():
    counts = [900.0, 90.0, 10.0]
    plain = DynamicalLoss(num_classes=3, amplitude=3.0, period=4)
    weighted = DynamicalLoss(num_classes=3, class_counts=counts, amplitude=3.0, period=4, weights="sqrt")
    static = weighted.static_weights
    # sqrt(M / m_i), rescaled so the prior-weighted mean is 1
    raw = torch.sqrt(torch.tensor(sum(counts)) / torch.tensor(counts))
    priors = torch.tensor(counts) / sum(counts)
    assert torch.allclose(static, raw / (priors * raw).sum())
    assert float((priors * static).sum()) == pytest.approx(1.0)
    logits, target = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    for loss in (plain, weighted):
        loss.set_step(1, 100)
    per_sample_plain = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    gamma = plain.current_weights()
    expected = (gamma[target] * static[target] * per_sample_plain).mean()
    assert torch.allclose(weighted(logits, target), expected)
    assert torch.allclose(plain(logits, target), (gamma[target] * per_sample_plain).mean())
