import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses.focal_loss import softmax_focal_loss as monai_softmax_focal_loss

from pipeline.errors import ConfigError
from pipeline.losses import build_loss
from pipeline.losses.focal import softmax_focal_loss

PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
TARGET = torch.tensor([0, 2])


@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 4, 4)])
def test_gamma_zero_no_alpha_is_cross_entropy(shape):
    torch.manual_seed(0)
    logits = torch.randn(*shape)
    target = torch.randint(0, 3, (shape[0], *shape[2:]))
    focal = build_loss("focal", num_classes=3, gamma=0.0)(logits, target)
    assert focal.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)


def test_gamma_two_with_alpha_by_hand():
    alpha = [0.25, 1.0, 2.0]
    loss = build_loss("focal", num_classes=3, gamma=2.0, alpha=alpha, reduction="none")
    values = loss(PROBS.log(), TARGET)
    # an explicit alpha is rescaled to mean 1 (no class counts: uniform priors)
    a0, a2 = (alpha[k] * len(alpha) / sum(alpha) for k in (0, 2))
    expected = [a0 * -(0.3**2) * math.log(0.7), a2 * -(0.7**2) * math.log(0.3)]
    assert values.tolist() == pytest.approx(expected, rel=1e-5)


def test_matches_monai_per_channel_terms_summed():
    # MONAI's softmax focal term summed over the one-hot channels is the per-pixel focal loss.
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 3, 3)
    target = torch.randint(0, 4, (2, 3, 3))
    alpha = torch.tensor([0.5, 1.0, 1.5, 2.0])
    one_hot = F.one_hot(target, 4).movedim(-1, 1).float()
    expected = monai_softmax_focal_loss(logits, one_hot, 2.0, alpha / alpha.mean()).sum(1)  # ours: mean 1
    ours = build_loss("focal", num_classes=4, gamma=2.0, alpha=alpha.tolist(), reduction="none")(logits, target)
    assert torch.allclose(ours, expected, atol=1e-6)


def test_alpha_scheme_uses_weighting():
    counts = [1, 3, 4]
    loss = build_loss("focal", num_classes=3, class_counts=counts, alpha="inverse", gamma=0.0, reduction="none")
    values = loss(PROBS.log(), TARGET)
    # M / m_i, divided by its prior-weighted mean sum_i (m_i / M)(M / m_i) = C
    alpha = [sum(counts) / m / len(counts) for m in counts]
    assert values.tolist() == pytest.approx([alpha[0] * -math.log(0.7), alpha[2] * -math.log(0.3)], rel=1e-5)


@pytest.mark.parametrize("alpha", ["inverse", "sqrt", "effective", [0.25, 1.0, 2.0]])
def test_gamma_zero_with_alpha_equals_ce_at_uniform_logits(alpha):
    # a batch with the training priors exactly: the mean focal loss at gamma 0 and uniform logits is
    # sum_i pi_i alpha_i log C = log C, CE's value, whatever the alpha (normalised to mean 1)
    counts = [1, 3, 4]
    target = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    logits = torch.zeros(len(target), 3)
    focal = build_loss("focal", num_classes=3, class_counts=counts, alpha=alpha, gamma=0.0, beta=0.5)(logits, target)
    ce = F.cross_entropy(logits, target)
    assert focal.item() == pytest.approx(ce.item(), rel=1e-6)
    assert ce.item() == pytest.approx(math.log(3), rel=1e-6)


def test_alpha_scheme_without_counts_is_config_error():
    with pytest.raises(ConfigError, match="alpha: scheme 'sqrt' needs class_counts"):
        build_loss("focal", num_classes=3, alpha="sqrt")


def test_ignore_index_and_mean_over_valid_pixels():
    logits = torch.zeros(1, 2, 1, 3)
    target = torch.tensor([[[0, -100, 1]]])
    value = build_loss("focal", num_classes=2, gamma=2.0)(logits, target)
    assert value.item() == pytest.approx(0.25 * math.log(2), rel=1e-5)  # p = 0.5 on both valid pixels


def test_saturated_prediction_has_finite_gradient_for_small_gamma():
    logits = torch.tensor([[0.0, 200.0], [200.0, 0.0]], requires_grad=True)
    value = build_loss("focal", num_classes=2, gamma=0.5)(logits, torch.tensor([1, 1]))
    value.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 1.5, 2.0, 3.5])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_closed_form_gradient_equals_autograds_on_the_formula(gamma, with_alpha):
    generator = torch.Generator().manual_seed(int(gamma * 10) + with_alpha)
    logits = torch.randn(6, 4, 5, 5, dtype=torch.float64, generator=generator) * 3
    logits[0, :, 0, 0] = torch.tensor([60.0, -60.0, -60.0, -60.0])  # p = 1 (to double precision) at class 0
    target = torch.randint(0, 4, (6, 5, 5), generator=generator)
    target[0, 0, 0] = 0
    alpha = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64) if with_alpha else None
    weights = torch.randn(target.shape, dtype=torch.float64, generator=generator)

    def by_autograd(x):
        log_p = torch.log_softmax(x, 1).gather(1, target.unsqueeze(1)).squeeze(1)
        q = -torch.expm1(log_p)
        loss = -q.pow(gamma) * log_p
        return loss if alpha is None else alpha[target] * loss

    x_ours, x_reference = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ours = softmax_focal_loss(x_ours, target, gamma, alpha)
    reference = by_autograd(x_reference)
    torch.testing.assert_close(ours, reference)
    (ours * weights).sum().backward()
    (reference * weights).sum().backward()
    assert torch.isfinite(x_ours.grad).all()
    finite = torch.isfinite(x_reference.grad)  # autograd gives NaN at p = 1 for gamma < 1; ours 0
    torch.testing.assert_close(x_ours.grad[finite], x_reference.grad[finite])
    if gamma > 0:
        assert torch.autograd.gradcheck(lambda x: softmax_focal_loss(x, target[1:], gamma, alpha),
                                        (logits[1:].clone().requires_grad_(True),))
