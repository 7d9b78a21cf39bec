import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.losses import available_losses, build_loss, register_loss
from pipeline.losses import registry

SEGMENTATION_ONLY = {"dice", "dice_ce", "dice_focal", "tversky", "focal_tversky"}
REQUIRED = {"dynamical": {"amplitude": 2.0, "period": 4}}
COUNTS = [40, 20, 10, 5]


def test_available_losses_lists_every_family():
    expected = {"ce", "weighted_ce", "focal", "dynamical", "logit_adjusted", "balanced_softmax", "ldam", "ohem", "cb_focal", "sharpness"}
    assert set(available_losses()) == expected | SEGMENTATION_ONLY
    assert set(available_losses("classification")) == expected


@pytest.mark.parametrize("name", sorted(set(available_losses())))
def test_every_loss_runs_on_both_shapes(name):
    torch.manual_seed(0)
    loss = build_loss(name, num_classes=4, class_counts=COUNTS, **REQUIRED.get(name, {}))
    if hasattr(loss, "set_step"):
        loss.set_step(1, 10)
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    target = torch.randint(0, 4, (2, 3, 3))
    target[0, 0, 0] = -100
    value = loss(logits, target)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    flat_logits, flat_target = torch.randn(5, 4), torch.randint(0, 4, (5,))
    if name in SEGMENTATION_ONLY:
        with pytest.raises(ConfigError, match="segmentation loss"):
            loss(flat_logits, flat_target)
    else:
        assert torch.isfinite(loss(flat_logits, flat_target))


def test_unknown_loss_lists_what_exists():
    with pytest.raises(ConfigError, match="unknown loss 'focall'.*'focal'"):
        build_loss("focall", num_classes=3)


def test_unknown_parameter_lists_accepted_ones():
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['gama'\].*'gamma'"):
        build_loss("focal", num_classes=3, gama=2.0)


def test_missing_required_parameter():
    with pytest.raises(ConfigError, match=r"'dynamical' needs parameter\(s\) \['amplitude'\]"):
        build_loss("dynamical", num_classes=3, period=4)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("focal", {"gamma": -1.0}, "loss 'focal': gamma"),
        ("ce", {"reduction": "avg"}, "loss 'ce': reduction"),
        ("ce", {"label_smoothing": 1.5}, "label_smoothing"),
        ("weighted_ce", {"weights": "inverse"}, "needs class_counts"),
        ("logit_adjusted", {}, "loss 'logit_adjusted': this loss needs class_counts"),
        ("ldam", {}, "needs class_counts"),
        ("balanced_softmax", {}, "needs class_counts"),
        ("dice", {"include_background": "no"}, "include_background must be true or false"),
    ],
)
def test_invalid_values_raise_config_error_with_loss_name(name, params, message):
    with pytest.raises(ConfigError, match=message):
        build_loss(name, num_classes=3, **params)


def test_bad_num_classes():
    with pytest.raises(ConfigError, match="num_classes"):
        build_loss("ce", num_classes=1)


def test_register_loss_adds_and_refuses_duplicates():
    @register_loss("_test_constant")
    class ConstantLoss(nn.Module):
        def __init__(self, *, num_classes, class_counts=None, value: float = 1.0):
            super().__init__()
            self.value = value

        def forward(self, logits, target):
            return torch.tensor(self.value)

    try:
        assert build_loss("_test_constant", num_classes=2, value=3.0)(None, None).item() == 3.0
        with pytest.raises(ValueError, match="registered twice"):
            register_loss("_test_constant")(ConstantLoss)
    finally:
        registry.LOSSES._entries.pop("_test_constant")


REDUCTIONS_OF = {"dice_ce": ("mean", "sum"), "dice_focal": ("mean", "sum")}


@pytest.mark.parametrize(("name", "shape"), [(name, shape) for name in sorted(set(available_losses()))
                                              for shape in [(6, 4), (2, 4, 3, 3)]
                                              if len(shape) == 4 or name not in SEGMENTATION_ONLY])
@pytest.mark.parametrize("ignored", [False, True])
def test_every_losss_gradient_equals_finite_differences(name, shape, ignored):
    """The closed-form gradients (each loss's term and reduction inside one autograd node) against
    torch.autograd.gradcheck's central differences, float64, every reduction, with and without ignored
    entries, at each shape the loss accepts."""
    generator = torch.Generator().manual_seed(len(name) + len(shape) + ignored)
    logits = torch.randn(shape, dtype=torch.float64, generator=generator) * 2
    target = torch.randint(0, 4, (shape[0], *shape[2:]), generator=generator)
    if ignored:
        target.view(-1)[::5] = -100
    for reduction in REDUCTIONS_OF.get(name, ("mean", "sum", "none")):
        params = {"weights": "inverse"} if name in ("weighted_ce", "dice_ce", "dynamical", "ldam", "sharpness") else {}
        loss = build_loss(name, num_classes=4, class_counts=COUNTS, reduction=reduction,
                          **REQUIRED.get(name, {}), **params)
        if hasattr(loss, "set_step"):
            loss.set_step(1, 10)
        x = (logits.clamp(-0.99, 0.99) if getattr(loss, "head", None) == "cosine" else logits).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda z, loss=loss: loss(z, target), (x,)), (name, reduction)
