import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError, TrainingError
from pipeline.losses import build_loss, class_weights
from pipeline.losses.long_tail import ldam_margins


def test_logit_adjusted_by_hand():
    # priors (1/4, 3/4), zero logits: softmax of tau*log(pi)
    zeros, target = torch.zeros(2, 2), torch.tensor([0, 1])
    tau1 = build_loss("logit_adjusted", num_classes=2, class_counts=[1, 3], reduction="none")(zeros, target)
    assert tau1.tolist() == pytest.approx([math.log(4), -math.log(0.75)], rel=1e-5)
    # tau = 2: weights 1/16 and 9/16 -> p_0 = 1/10
    tau2 = build_loss("logit_adjusted", num_classes=2, class_counts=[1, 3], tau=2.0, reduction="none")(zeros, target)
    assert tau2[0].item() == pytest.approx(math.log(10), rel=1e-5)


def test_logit_adjusted_tau_zero_is_ce():
    torch.manual_seed(0)
    logits, target = torch.randn(5, 3), torch.randint(0, 3, (5,))
    adjusted = build_loss("logit_adjusted", num_classes=3, class_counts=[1, 5, 9], tau=0.0)(logits, target)
    assert adjusted.item() == pytest.approx(build_loss("ce", num_classes=3)(logits, target).item(), rel=1e-6)


def test_balanced_softmax_by_hand_and_equals_logit_adjusted_tau_one():
    value = build_loss("balanced_softmax", num_classes=2, class_counts=[1, 3])(torch.zeros(1, 2), torch.tensor([0]))
    assert value.item() == pytest.approx(math.log(4), rel=1e-5)  # -log(1 / (1 + 3))
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    counts = [100, 20, 3]
    balanced = build_loss("balanced_softmax", num_classes=3, class_counts=counts)(logits, target)
    adjusted = build_loss("logit_adjusted", num_classes=3, class_counts=counts, tau=1.0)(logits, target)
    assert balanced.item() == pytest.approx(adjusted.item(), rel=1e-5)


def test_ldam_margins_by_hand():
    # n^(-1/4) for (1, 16, 81) is (1, 1/2, 1/3), scaled so that the largest is 0.5
    assert ldam_margins([1, 16, 81], 0.5).tolist() == pytest.approx([0.5, 0.25, 1 / 6], rel=1e-6)


def test_ldam_loss_by_hand():
    loss = build_loss("ldam", num_classes=3, class_counts=[1, 16, 81], scale=2.0)
    # zero logits, target 1: scaled logits (0, -0.5, 0)
    value = loss(torch.zeros(1, 3), torch.tensor([1]))
    assert value.item() == pytest.approx(-math.log(math.exp(-0.5) / (2 + math.exp(-0.5))), rel=1e-5)


def test_ldam_deferred_reweighting_switches_at_drw_start():
    counts = [1, 16, 81]
    loss = build_loss("ldam", num_classes=3, class_counts=counts, scale=2.0, drw_start=0.5, weights="effective", beta=0.9)
    with pytest.raises(TrainingError, match="set_step"):
        loss.current_weights()
    loss.set_step(4, 10)
    assert torch.equal(loss.current_weights(), torch.ones(3))
    loss.set_step(5, 10)
    drw = class_weights(counts, "effective", beta=0.9)
    assert torch.allclose(loss.current_weights(), drw)
    # two samples, targets 0 and 2: weighted mean of the two margin CEs
    ce_0 = -math.log(math.exp(-1.0) / (math.exp(-1.0) + 2))  # margin 0.5 * scale 2
    ce_2 = -math.log(math.exp(-1 / 3) / (math.exp(-1 / 3) + 2))
    expected = (drw[0].item() * ce_0 + drw[2].item() * ce_2) / (drw[0].item() + drw[2].item())
    assert loss(torch.zeros(2, 3), torch.tensor([0, 2])).item() == pytest.approx(expected, rel=1e-5)


def test_ldam_drw_without_weights_says_what_to_set():
    with pytest.raises(ConfigError, match="loss 'ldam': drw_start defers the class weights, but weights is none"):
        build_loss("ldam", num_classes=3, class_counts=[1, 16, 81], drw_start=0.8)


def test_ldam_weights_apply_from_the_start_without_drw():
    counts = [1, 16, 81]
    weighted = build_loss("ldam", num_classes=3, class_counts=counts, scale=2.0, weights="effective", beta=0.9)
    w = class_weights(counts, "effective", beta=0.9)
    ce_0 = -math.log(math.exp(-1.0) / (math.exp(-1.0) + 2))
    ce_2 = -math.log(math.exp(-1 / 3) / (math.exp(-1 / 3) + 2))
    expected = (w[0].item() * ce_0 + w[2].item() * ce_2) / (w[0].item() + w[2].item())
    assert weighted(torch.zeros(2, 3), torch.tensor([0, 2])).item() == pytest.approx(expected, rel=1e-5)


def test_zero_count_names_the_class():
    with pytest.raises(ConfigError, match="loss 'ldam': class 2 has count 0"):
        build_loss("ldam", num_classes=3, class_counts=[4, 2, 0])


def test_counts_length_must_match():
    with pytest.raises(ConfigError, match="2 entries but there are 3"):
        build_loss("logit_adjusted", num_classes=3, class_counts=[4, 2])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weights", [None, "effective"])
@pytest.mark.parametrize("shape", [(12, 4), (2, 4, 3, 5)])
def test_ldam_values_and_gradients_equal_cross_entropy_on_the_shifted_logits(shape, weights, reduction):
    counts = [900, 300, 40, 7]
    generator = torch.Generator().manual_seed(5)
    cosines = torch.rand(shape, dtype=torch.float64, generator=generator) * 2 - 1
    target = torch.randint(0, 4, (shape[0], *shape[2:]), generator=generator)
    target.view(-1)[::5] = 255  # ignored
    loss = build_loss("ldam", num_classes=4, class_counts=counts, weights=weights, ignore_index=255, reduction=reduction)
    x_ours, x_reference = cosines.clone().requires_grad_(True), cosines.clone().requires_grad_(True)
    in_range = torch.where(target == 255, 0, target)
    one_hot = F.one_hot(in_range, 4).movedim(-1, 1).double()
    margins = loss.margins.double()[in_range].unsqueeze(1)
    weight = None if loss.class_weight is None else loss.class_weight.double()
    reference = F.cross_entropy(30.0 * (x_reference - one_hot * margins), target, weight=weight, ignore_index=255,
                                reduction=reduction)
    ours = loss(x_ours, target)
    torch.testing.assert_close(ours, reference)
    upstream = torch.randn(ours.shape, dtype=torch.float64, generator=generator)
    (ours * upstream).sum().backward()
    (reference * upstream).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_reference.grad)
