import math

import pytest
import torch

from pipeline.errors import ConfigError, TrainingError
from pipeline.losses import build_loss, dynamical_weights
from pipeline.losses.dynamical import DynamicalLoss, resolve_period

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
        ({"period": None}, r"exactly one of period \(steps\), period_epochs or cycles; got none"),
        ({"cycles": 2}, r"exactly one of .*got \['cycles', 'period'\]"),
        ({"period": None, "period_epochs": 0}, "period_epochs must be >= 1"),
        ({"period": None, "cycles": 0}, "cycles must be >= 1"),
        ({"period": None, "cycles": 1.5}, "cycles must be an integer"),
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


def test_period_resolves_from_steps_epochs_or_cycles():
    assert resolve_period("period", 40, cycle_length=7, total_steps=370) == 40
    assert resolve_period("period_epochs", 2, cycle_length=7, total_steps=370, steps_per_epoch=37) == 74
    # cycles: k passes over the cycle in the run, T = total // (k * len(cycle))
    assert resolve_period("cycles", 1, cycle_length=7, total_steps=370) == 52
    assert resolve_period("cycles", 3, cycle_length=7, total_steps=370) == 17
    assert resolve_period("cycles", 3, cycle_length=6, total_steps=360) == 20


def test_cycles_use_the_total_steps_the_trainer_passes_and_the_cycle_length():
    loss = build_loss("dynamical", num_classes=4, amplitude=A, cycles=2, cycle=[1, 3])
    loss.set_step(0, 100)
    assert loss.period == 100 // (2 * 2)
    for step in range(100):
        loss.set_step(step, 100)
        assert torch.equal(loss.current_weights(), dynamical_weights(step, 4, A, 25, [1, 3])), step


@pytest.mark.parametrize("total", [70, 700, 7000])
def test_a_cycles_config_means_the_same_at_any_run_length(total):
    # the class emphasised at a given fraction of the run does not depend on the run's length
    loss = build_loss("dynamical", num_classes=7, amplitude=A, cycles=2)
    emphasised = []
    for fraction in (0.05, 0.2, 0.4, 0.55, 0.8, 0.95):
        step = int(fraction * total)
        # mid-period of the period holding `step`, where the emphasised class is the weights' argmax
        loss.set_step(step, total)
        mid = (step // loss.period) * loss.period + loss.period // 2
        loss.set_step(mid, total)
        emphasised.append(loss.current_weights().argmax().item())
    assert emphasised == [0, 2, 5, 0, 4, 6]


def test_period_epochs_follow_the_steps_per_epoch_and_need_them():
    loss = build_loss("dynamical", num_classes=C, amplitude=A, period_epochs=2)
    loss.set_step(0, 300, steps_per_epoch=30)
    assert loss.period == 60
    loss.set_step(0, 3000, steps_per_epoch=300)
    assert loss.period == 600
    with pytest.raises(TrainingError, match="period_epochs needs the steps per epoch"):
        loss.set_step(0, 300)


def test_a_period_under_two_steps_is_a_config_error_naming_the_setting():
    loss = build_loss("dynamical", num_classes=7, amplitude=A, cycles=10)
    with pytest.raises(ConfigError, match="cycles: 10 over 7 classes in 100 steps gives a period of 1 step"):
        loss.set_step(0, 100)
    loss.set_step(0, 140)  # 140 // 70 = 2 steps: allowed
    assert loss.period == 2


@pytest.mark.parametrize("unit", [{"cycles": 3}, {"period_epochs": 1}])
def test_final_plain_ce_period_uses_the_resolved_period(unit):
    total, per_epoch = 300, 25  # cycles 3 over 3 classes: T = 33; period_epochs 1: T = 25
    loss = build_loss("dynamical", num_classes=C, amplitude=A, final_plain_ce=True, **unit)
    loss.set_step(0, total, steps_per_epoch=per_epoch)
    period = loss.period
    assert period == (33 if "cycles" in unit else 25)
    for step in range(total - period, total):
        loss.set_step(step, total, steps_per_epoch=per_epoch)
        assert torch.equal(loss.current_weights(), torch.ones(C)), step
    step = total - period - 1 - period // 2  # mid-period of the one before: still tilted
    loss.set_step(step, total, steps_per_epoch=per_epoch)
    assert torch.equal(loss.current_weights(), dynamical_weights(step, C, A, period))
    assert not torch.equal(loss.current_weights(), torch.ones(C))


def test_resume_with_cycles_matches_an_uninterrupted_run():
    torch.manual_seed(0)
    logits, target = torch.randn(8, C), torch.randint(0, C, (8,))
    ran = build_loss("dynamical", num_classes=C, amplitude=A, cycles=2, final_plain_ce=True)
    values = []
    for step in range(60):
        ran.set_step(step, 60)
        values.append(ran(logits, target).item())
    for step in (0, 13, 41, 55):  # a fresh module set to any step (a resumed run) continues the schedule
        fresh = build_loss("dynamical", num_classes=C, amplitude=A, cycles=2, final_plain_ce=True)
        fresh.set_step(step, 60)
        assert fresh(logits, target).item() == values[step], step
