"""Class-balanced focal loss (pipeline.losses.class_balanced), Cui et al., CVPR 2019."""

import math

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.losses import build_loss, class_weights, loss_parameters
from pipeline.losses import focal

COUNTS = [100, 10, 2]


def test_defaults_are_the_authors_long_tailed_cifar_setting():
    params = loss_parameters("cb_focal")
    assert params["beta"] == 0.9999 and params["gamma"] == 1.0


def test_equals_focal_with_effective_number_alpha():
    torch.manual_seed(0)
    logits, target = torch.randn(5, 3, 4, 4), torch.randint(0, 3, (5, 4, 4))
    cb = build_loss("cb_focal", num_classes=3, class_counts=COUNTS, beta=0.99, gamma=0.5)
    reference = build_loss("focal", num_classes=3, class_counts=COUNTS, alpha="effective", beta=0.99, gamma=0.5)
    assert torch.equal(cb.alpha, class_weights(COUNTS, "effective", beta=0.99))
    assert cb(logits, target).item() == pytest.approx(reference(logits, target).item(), rel=1e-6)


def test_one_sample_by_hand():
    beta, gamma = 0.9, 2.0
    loss = build_loss("cb_focal", num_classes=3, class_counts=COUNTS, beta=beta, gamma=gamma)
    weight = class_weights(COUNTS, "effective", beta=beta)[2].item()
    p = 1 / 3  # zero logits
    expected = weight * (1 - p) ** gamma * -math.log(p)
    assert loss(torch.zeros(1, 3), torch.tensor([2])).item() == pytest.approx(expected, rel=1e-6)


def test_uses_the_focal_modules_pure_function(monkeypatch):
    calls = []
    original = focal.focal_term

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(focal, "focal_term", spy)
    build_loss("cb_focal", num_classes=3, class_counts=COUNTS)(torch.zeros(2, 3), torch.tensor([0, 1]))
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("params", "counts", "message"),
    [({}, None, "cb_focal needs class_counts"), ({"beta": 1.0}, COUNTS, "beta"), ({"gamma": -1}, COUNTS, "gamma"),
     ({"alpha": "inverse"}, COUNTS, r"unknown parameter\(s\) \['alpha'\]")],
)
def test_bad_settings(params, counts, message):
    with pytest.raises(ConfigError, match=message):
        build_loss("cb_focal", num_classes=3, class_counts=counts, **params)
