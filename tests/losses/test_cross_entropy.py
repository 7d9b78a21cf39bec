import math

import pytest
import torch

from pipeline.losses import build_loss

# logits = log(p) make softmax(logits) = p, so every CE below is -log of a chosen probability.
PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
LOGITS = PROBS.log()
TARGET = torch.tensor([0, 2])


def test_ce_by_hand():
    loss = build_loss("ce", num_classes=3)
    assert loss(LOGITS, TARGET).item() == pytest.approx((-math.log(0.7) - math.log(0.3)) / 2, rel=1e-5)
    summed = build_loss("ce", num_classes=3, reduction="sum")(LOGITS, TARGET)
    assert loss(LOGITS, TARGET).item() == pytest.approx(summed.item() / 2)


def test_label_smoothing_by_hand():
    eps = 0.1
    loss = build_loss("ce", num_classes=3, label_smoothing=eps, reduction="none")(LOGITS[:1], TARGET[:1])
    expected = (1 - eps) * -math.log(0.7) + eps / 3 * -(math.log(0.7) + math.log(0.2) + math.log(0.1))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_weighted_ce_by_hand():
    # counts (1, 3, 4): inverse weights M/m = (8, 8/3, 2); torch's mean divides by the weights used
    loss = build_loss("weighted_ce", num_classes=3, class_counts=[1, 3, 4], weights="inverse")
    expected = (8 * -math.log(0.7) + 2 * -math.log(0.3)) / (8 + 2)
    assert loss(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weights", ["inverse", "sqrt", "effective", [2.0, 2.0, 2.0]])
@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 4, 4)])
def test_equal_weights_equal_plain_ce(weights, shape):
    torch.manual_seed(1)
    logits = torch.randn(*shape)
    target = torch.randint(0, 3, (shape[0], *shape[2:]))
    plain = build_loss("ce", num_classes=3)(logits, target)
    weighted = build_loss("weighted_ce", num_classes=3, class_counts=[5, 5, 5], weights=weights)(logits, target)
    assert weighted.item() == pytest.approx(plain.item(), rel=1e-6)


def test_unequal_weights_differ_from_ce():
    plain = build_loss("ce", num_classes=3)(LOGITS, TARGET)
    weighted = build_loss("weighted_ce", num_classes=3, weights=[1.0, 1.0, 5.0])(LOGITS, TARGET)
    assert weighted.item() != pytest.approx(plain.item())


def test_ignore_index_drops_pixels():
    torch.manual_seed(2)
    logits = torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 1], [-100, 2]]])
    kept = build_loss("ce", num_classes=3, reduction="none")(logits, target)
    assert kept.shape == (1, 2, 2) and kept[0, 1, 0] == 0
    expected = kept.sum() / 3
    assert build_loss("ce", num_classes=3)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
