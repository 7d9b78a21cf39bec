import math

import pytest
import torch

from pipeline.errors import ConfigError, TrainingError
from pipeline.losses import build_loss
from pipeline.losses.weighting import normalise_weights
from pipeline.losses.sharpness import multiclass_margin, sharpness_eps, sharpness_gain, sharpness_loss
from pipeline.optim import build_scheduler

LOGITS = torch.tensor([[1.0, 0.0, 0.5], [0.0, 2.0, 1.0]])
TARGET = torch.tensor([0, 0])  # margins 0.5 and -2


def test_margin_is_true_logit_minus_largest_other():
    assert multiclass_margin(LOGITS, TARGET).tolist() == pytest.approx([0.5, -2.0])
    assert multiclass_margin(LOGITS, torch.tensor([2, 1])).tolist() == pytest.approx([-0.5, 1.0])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape", [(16, 5), (2, 4, 3, 5)])
def test_margin_gradient_equals_autograds_on_the_masked_max(shape, ties):
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(shape, dtype=torch.float64, generator=generator)
    logits = (logits.round() if ties else logits).requires_grad_(True)  # rounded: the others tie often
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    weights = torch.randn(target.shape, dtype=torch.float64, generator=generator)
    is_true = torch.nn.functional.one_hot(target, shape[1]).movedim(-1, 1).bool()
    reference = logits.gather(1, target.unsqueeze(1)).squeeze(1) - logits.masked_fill(is_true, -math.inf).amax(1)
    ours = multiclass_margin(logits, target)
    torch.testing.assert_close(ours, reference)
    grad_ours = torch.autograd.grad((ours * weights).sum(), logits)[0]
    grad_reference = torch.autograd.grad((reference * weights).sum(), logits)[0]
    torch.testing.assert_close(grad_ours, grad_reference)  # ties: the -1 shared evenly, as amax's
    if not ties:
        assert torch.autograd.gradcheck(lambda x: multiclass_margin(x, target), (logits,))


def test_values_by_hand():
    loss = build_loss("sharpness", num_classes=3, eps=1.0, reduction="none")
    expected = [1 - 0.5 / math.sqrt(1.25), 1 + 2 / math.sqrt(5)]
    assert loss(LOGITS, TARGET).tolist() == pytest.approx(expected, rel=1e-6)
    assert build_loss("sharpness", num_classes=3, eps=1.0)(LOGITS, TARGET).item() == pytest.approx(sum(expected) / 2)
    assert build_loss("sharpness", num_classes=3, eps=1.0, reduction="sum")(LOGITS, TARGET).item() == pytest.approx(
        sum(expected))


def test_gain_is_the_talks_phi():
    x = torch.tensor([-3.0, 0.0, 0.25, 10.0])
    assert sharpness_gain(x, 0.25).tolist() == pytest.approx([3 / math.sqrt(9.25), 0.0, -0.25 / math.sqrt(0.3125),
                                                              -10 / math.sqrt(100.25)])


@pytest.mark.parametrize("x, eps", [(0.0, 1.0), (0.0, 0.01), (0.5, 1.0), (-2.0, 0.3)])
def test_gradient_at_known_points(x, eps):
    # dl/dx = -eps / (x^2 + eps)^(3/2): into the true logit with that sign, out of the best other logit
    logits = torch.tensor([[x, 0.0, -5.0]], requires_grad=True)
    sharpness_loss(logits, torch.tensor([0]), eps).sum().backward()
    slope = -eps / (x * x + eps) ** 1.5
    assert logits.grad[0].tolist() == pytest.approx([slope, -slope, 0.0], rel=1e-5)
    if x == 0.0:
        assert slope == pytest.approx(-1 / math.sqrt(eps))


def test_eps_to_zero_is_twice_the_zero_one_error_with_vanishing_gradient():
    logits = torch.tensor([[0.3, 0.0], [0.0, 0.3], [2.0, -1.0]], requires_grad=True)
    target = torch.tensor([0, 0, 1])  # right, wrong, wrong
    values = sharpness_loss(logits, target, 1e-10)
    assert values.tolist() == pytest.approx([0.0, 2.0, 2.0], abs=1e-6)
    values.sum().backward()
    assert logits.grad.abs().max().item() < 1e-6  # piecewise constant: GD cannot move (seed 000)


def test_eps_to_infinity_is_a_linear_margin_loss():
    margins = torch.tensor([-4.0, -0.5, 0.0, 1.0, 6.0])
    logits = torch.stack([margins, torch.zeros(5)], dim=1)
    eps = 1e8
    scaled = (sharpness_loss(logits, torch.zeros(5, dtype=torch.long), eps) - 1) * math.sqrt(eps)
    assert scaled.tolist() == pytest.approx((-margins).tolist(), abs=1e-3)


def test_class_weights_and_ignore_index_on_segmentation_maps():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, :] = -100
    weighted = build_loss("sharpness", num_classes=3, eps=0.5, weights=[1.0, 2.0, 3.0], reduction="none")
    plain = build_loss("sharpness", num_classes=3, eps=0.5, reduction="none")
    values, base = weighted(logits, target), plain(logits, target)
    valid = target != -100
    assert torch.all(values[~valid] == 0)
    w = normalise_weights(torch.tensor([1.0, 2.0, 3.0]), None)[target.clamp(min=0)]  # a list is rescaled to mean 1
    assert torch.allclose(values[valid], (w * base)[valid])
    mean = build_loss("sharpness", num_classes=3, eps=0.5, weights=[1.0, 2.0, 3.0])(logits, target)
    assert mean.item() == pytest.approx(values.sum().item() / valid.sum().item(), rel=1e-6)


def test_weight_scheme_uses_class_counts():
    loss = build_loss("sharpness", num_classes=2, class_counts=[30, 10], weights="inverse", reduction="none")
    values = loss(torch.zeros(2, 2), torch.tensor([0, 1]))  # margin 0: loss 1 times the weight
    # inverse weights M/m_i = [4/3, 4], rescaled so that sum_i pi_i w_i = 0.75 * 4/3 + 0.25 * 4 = 2 becomes 1
    assert values.tolist() == pytest.approx([40 / 30 / 2, 40 / 10 / 2])


def test_bad_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="sharpness.*eps must lie in"):
        build_loss("sharpness", num_classes=2, eps=0.0)
    with pytest.raises(ConfigError, match="eps_final .* must not exceed eps"):
        build_loss("sharpness", num_classes=2, eps=1.0, eps_final=2.0)
    with pytest.raises(ConfigError, match="weights: scheme 'sqrt' needs class_counts"):
        build_loss("sharpness", num_classes=2, weights="sqrt")


def test_eps_schedule_is_geometric_in_the_step():
    loss = build_loss("sharpness", num_classes=2, eps=1.0, eps_final=0.01)
    with pytest.raises(TrainingError, match="set_step"):
        loss(torch.zeros(1, 2), torch.tensor([0]))
    for step, expected in [(0, 1.0), (50, 0.1), (100, 0.01), (25, 10 ** -0.5)]:
        loss.set_step(step, 100)
        assert loss.current_eps() == pytest.approx(expected)
    with pytest.raises(TrainingError, match="outside"):
        loss.set_step(101, 100)
    constant = build_loss("sharpness", num_classes=2, eps=0.3)
    constant.set_step(7, 10)
    assert constant.current_eps() == 0.3 and sharpness_eps(7, 10, 0.3, None) == 0.3


def test_schedule_is_resume_safe():
    # the state is only the step set: a fresh module at step s equals one that went through 0..s-1
    torch.manual_seed(0)
    logits, target = torch.randn(3, 4, 2, 2), torch.randint(0, 4, (3, 2, 2))
    ran = build_loss("sharpness", num_classes=4, eps=2.0, eps_final=0.02)
    for step in range(37):
        ran.set_step(step, 60)
        ran(logits, target)
    fresh = build_loss("sharpness", num_classes=4, eps=2.0, eps_final=0.02)
    fresh.set_step(36, 60)
    assert torch.equal(ran(logits, target), fresh(logits, target))


def test_geometric_scheduler_tracks_eps():
    # lr(t) / lr(0) = eps(t) / eps with final_factor = eps_final / eps, step for step
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.5)
    scheduler = build_scheduler({"name": "geometric", "final_factor": 0.01}, optimizer, steps_per_epoch=10, epochs=3)
    for step in range(30):
        assert optimizer.param_groups[0]["lr"] / 0.5 == pytest.approx(sharpness_eps(step, 30, 1.0, 0.01))
        optimizer.step()
        scheduler.step()
    with pytest.raises(ConfigError, match="final_factor"):
        build_scheduler({"name": "geometric"}, optimizer, 10, 3)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        build_scheduler({"name": "geometric", "final_factor": 0.1, "warmup_epochs": 1}, optimizer, 10, 3)


def test_trainer_drives_eps_and_the_coupled_learning_rate(tmp_path):
    import pandas as pd

    from pipeline import training
    from tests.helpers import tiny_classification_run

    run = tiny_classification_run(tmp_path, optimizer={"name": "sgd", "lr": 0.1},
                                  scheduler={"name": "geometric", "final_factor": 0.01})
    run["loss"] = {"name": "sharpness", "eps": 1.0, "eps_final": 0.01}
    summary = training.train(run, threads=1)
    history = pd.read_csv(tmp_path / "results" / "tiny_ce" / "seed0" / "history.csv")
    # lr after epoch k of 2 = 0.1 * 0.01^(k/2), exactly eps(t) / eps times the start
    assert history["lr"].tolist() == pytest.approx([0.1 * 0.1, 0.1 * 0.01])
    assert summary["steps"] > 0 and history["train_loss"].between(0, 2).all()


def test_gain_gradient_equals_autograds_on_the_formula():
    margin = torch.linspace(-6, 6, 49, dtype=torch.float64, requires_grad=True)
    for eps in (1e-3, 0.5, 40.0):
        reference = -margin * torch.rsqrt(margin * margin + eps)
        torch.testing.assert_close(sharpness_gain(margin, eps), reference)
        assert torch.autograd.gradcheck(lambda x, eps=eps: sharpness_gain(x, eps), (margin,))
