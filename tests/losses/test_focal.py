import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses.focal_loss import softmax_focal_loss as monai_softmax_focal_loss

from pipeline.errors import ConfigError
from pipeline.losses import build_loss

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
    loss = build_loss("focal", num_classes=3, gamma=2.0, alpha=[0.25, 1.0, 2.0], reduction="none")
    values = loss(PROBS.log(), TARGET)
    expected = [0.25 * -(0.3**2) * math.log(0.7), 2.0 * -(0.7**2) * math.log(0.3)]
    assert values.tolist() == pytest.approx(expected, rel=1e-5)


def test_matches_monai_per_channel_terms_summed():
    # MONAI's softmax focal term summed over the one-hot channels is the per-pixel focal loss.
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 3, 3)
    target = torch.randint(0, 4, (2, 3, 3))
    alpha = torch.tensor([0.5, 1.0, 1.5, 2.0])
    one_hot = F.one_hot(target, 4).movedim(-1, 1).float()
    expected = monai_softmax_focal_loss(logits, one_hot, 2.0, alpha).sum(1)
    ours = build_loss("focal", num_classes=4, gamma=2.0, alpha=alpha.tolist(), reduction="none")(logits, target)
    assert torch.allclose(ours, expected, atol=1e-6)


def test_alpha_scheme_uses_weighting():
    loss = build_loss("focal", num_classes=3, class_counts=[1, 3, 4], alpha="inverse", gamma=0.0, reduction="none")
    values = loss(PROBS.log(), TARGET)
    assert values.tolist() == pytest.approx([8 * -math.log(0.7), 2 * -math.log(0.3)], rel=1e-5)


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
