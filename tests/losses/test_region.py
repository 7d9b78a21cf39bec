import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.losses import build_loss

EPS = 1e-5
# one image, two pixels: background / lesion probabilities chosen so softmax(log p) = p
PROBS = torch.tensor([[0.2, 0.7], [0.8, 0.3]]).view(1, 2, 1, 2)
LOGITS = PROBS.log()
TARGET = torch.tensor([[[1, 0]]])  # pixel 0 is lesion, pixel 1 background


def dice_by_hand(tp, sum_p, sum_g):
    return 1 - (2 * tp + EPS) / (sum_p + sum_g + EPS)


def test_dice_lesion_channel_by_hand():
    value = build_loss("dice", num_classes=2)(LOGITS, TARGET)
    assert value.item() == pytest.approx(dice_by_hand(0.8, 1.1, 1.0), rel=1e-5)


def test_dice_with_background_averages_channels():
    value = build_loss("dice", num_classes=2, include_background=True)(LOGITS, TARGET)
    expected = (dice_by_hand(0.7, 0.9, 1.0) + dice_by_hand(0.8, 1.1, 1.0)) / 2
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_dice_ignore_index_drops_pixel():
    value = build_loss("dice", num_classes=2)(LOGITS, torch.tensor([[[1, -100]]]))
    assert value.item() == pytest.approx(dice_by_hand(0.8, 0.8, 1.0), rel=1e-5)


def test_tversky_by_hand():
    # lesion channel: TP = 0.8, FP = sum p(1-g) = 0.3, FN = sum (1-p)g = 0.2; alpha on FP, beta on FN
    value = build_loss("tversky", num_classes=2, alpha=0.3, beta=0.7)(LOGITS, TARGET)
    assert value.item() == pytest.approx(1 - (0.8 + EPS) / (0.8 + 0.3 * 0.3 + 0.7 * 0.2 + EPS), rel=1e-5)


def test_focal_tversky_by_hand_and_gamma_one_is_tversky():
    tversky = 1 - (0.8 + EPS) / (0.8 + 0.3 * 0.3 + 0.7 * 0.2 + EPS)
    value = build_loss("focal_tversky", num_classes=2, alpha=0.3, beta=0.7, gamma=4 / 3)(LOGITS, TARGET)
    assert value.item() == pytest.approx(tversky**0.75, rel=1e-5)
    gamma_one = build_loss("focal_tversky", num_classes=2, alpha=0.3, beta=0.7, gamma=1.0)(LOGITS, TARGET)
    assert gamma_one.item() == pytest.approx(tversky, rel=1e-5)


def test_tversky_half_half_is_dice():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 5, 5), torch.randint(0, 4, (2, 5, 5))
    for batch in (True, False):
        dice = build_loss("dice", num_classes=4, batch=batch)(logits, target)
        tversky = build_loss("tversky", num_classes=4, alpha=0.5, beta=0.5, batch=batch)(logits, target)
        assert tversky.item() == pytest.approx(dice.item(), rel=1e-5)


def test_none_reduction_shapes():
    logits, target = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3))
    assert build_loss("dice", num_classes=4, batch=False, reduction="none")(logits, target).shape == (2, 3)
    assert build_loss("dice", num_classes=4, reduction="none")(logits, target).shape == (3,)
    assert build_loss("tversky", num_classes=4, include_background=True, reduction="none")(logits, target).shape == (4,)


def test_dice_ce_is_weighted_sum_with_weighted_ce_part():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    weights = [0.2, 1.0, 3.0]
    dice = build_loss("dice", num_classes=3)(logits, target)
    ce = F.cross_entropy(logits, target, weight=torch.tensor(weights))
    value = build_loss("dice_ce", num_classes=3, weights=weights, lambda_dice=0.5, lambda_ce=2.0)(logits, target)
    assert value.item() == pytest.approx(0.5 * dice.item() + 2.0 * ce.item(), rel=1e-5)


def test_dice_focal_is_sum_of_parts():
    torch.manual_seed(2)
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    counts = [500, 20, 5]
    dice = build_loss("dice", num_classes=3)(logits, target)
    focal = build_loss("focal", num_classes=3, class_counts=counts, alpha="sqrt", gamma=2.0)(logits, target)
    value = build_loss("dice_focal", num_classes=3, class_counts=counts, weights="sqrt")(logits, target)
    assert value.item() == pytest.approx(dice.item() + focal.item(), rel=1e-5)


@pytest.mark.parametrize("name", ["dice", "dice_ce", "dice_focal", "tversky", "focal_tversky"])
def test_classification_shapes_are_refused(name):
    loss = build_loss(name, num_classes=3)
    with pytest.raises(ConfigError, match=f"'{name}' is a segmentation loss"):
        loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))


def test_dice_ce_refuses_none_reduction():
    with pytest.raises(ConfigError, match="reduction"):
        build_loss("dice_ce", num_classes=3, reduction="none")


def test_focal_tversky_gradient_finite_on_perfect_saturated_prediction():
    target = torch.tensor([[[1, 0], [0, 2]]])
    logits = (F.one_hot(target, 3).movedim(-1, 1).float() * 200.0).requires_grad_()
    value = build_loss("focal_tversky", num_classes=3)(logits, target)
    value.backward()
    assert math.isfinite(value.item()) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", ["dice_ce", "dice_focal"])
def test_a_composite_loss_checks_its_inputs_once_per_forward(name, monkeypatch):
    from pipeline.losses import _checks

    calls = []
    checked = _checks._checked

    def counting(*args, **kwargs):
        calls.append(1)
        return checked(*args, **kwargs)

    monkeypatch.setattr(_checks, "_checked", counting)
    loss = build_loss(name, num_classes=3)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    loss(logits, target)
    assert len(calls) == 1


@pytest.mark.parametrize("name", ["dice_ce", "dice_focal", "focal", "dice"])
def test_a_loss_takes_one_softmax_and_one_autograd_node_for_it(name):
    """Forward and backward: one log-softmax, no second softmax or one-hot tensor for a composite's
    terms, in one autograd node; a per-pixel loss's term and reduction inside that node."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Calls(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    with Calls():
        value = build_loss(name, num_classes=3)(logits, target)
        value.backward()
    assert seen.count("aten._log_softmax") == 1
    assert not {"aten.softmax", "aten._softmax", "aten.one_hot", "aten._log_softmax_backward_data"} & set(seen)
    nodes, stack = set(), [value.grad_fn]
    while stack:  # the nodes that take a tensor of the logits' size
        node = stack.pop()
        if node is not None and node not in nodes:
            nodes.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    assert len([node for node in nodes if "TargetLogSoftmax" in node.name()]) == 1
    if name == "focal":
        assert "TargetLogSoftmax" in value.grad_fn.name()


def _random_batch(seed, ignore_index=None, shape=(3, 4, 9, 10)):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, dtype=torch.float64, generator=generator) * 2
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    if ignore_index is not None:
        target[torch.rand(target.shape, generator=generator) < 0.2] = ignore_index
    return logits, target


@pytest.mark.parametrize("ignore_index", [None, -100, 255])
@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["dice", "tversky"])
def test_values_and_gradients_equal_monais(name, reduction, batch, include_background, ignore_index):
    monai_losses = pytest.importorskip("monai.losses")
    logits, target = _random_batch(7, ignore_index)
    options = {"include_background": include_background, "batch": batch, "smooth_nr": 1e-5, "smooth_dr": 1e-5,
               "ignore_index": -100 if ignore_index is None else ignore_index}
    extra = {"alpha": 0.3, "beta": 0.7} if name == "tversky" else {}
    ours = build_loss(name, num_classes=4, reduction=reduction, **options, **extra)
    monai_class = monai_losses.DiceLoss if name == "dice" else monai_losses.TverskyLoss
    theirs = monai_class(to_onehot_y=True, softmax=True, reduction=reduction, **options, **extra)
    x_ours, x_theirs = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    got, want = ours(x_ours, target), theirs(x_theirs, target.unsqueeze(1))
    want = want.reshape(got.shape)  # MONAI keeps singleton spatial dims with 'none'
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    weights = torch.randn(got.shape, dtype=torch.float64)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ignore_index", [None, 255])
@pytest.mark.parametrize("weights", [None, [0.5, 1.0, 2.0, 4.0]])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_dice_ce_equals_monais_dice_plus_torchs_cross_entropy_with_gradients(reduction, weights, ignore_index):
    monai_losses = pytest.importorskip("monai.losses")
    logits, target = _random_batch(8, ignore_index)
    index = -100 if ignore_index is None else ignore_index
    ours = build_loss("dice_ce", num_classes=4, weights=weights, lambda_dice=0.7, lambda_ce=1.3,
                      ignore_index=index, reduction=reduction)
    dice = monai_losses.DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                                 ignore_index=index, reduction=reduction)
    x_ours, x_theirs = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    got = ours(x_ours, target)
    want = 0.7 * dice(x_theirs, target.unsqueeze(1)) + 1.3 * F.cross_entropy(
        x_theirs, target, weight=None if weights is None else ours.pixel_loss.class_weight.double(),  # normalised weights
        ignore_index=index, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    got.backward()
    want.backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ignore_index", [None, 255])
def test_dice_focal_equals_monais_dice_plus_the_focal_loss_with_gradients(ignore_index):
    monai_losses = pytest.importorskip("monai.losses")
    logits, target = _random_batch(9, ignore_index)
    index = -100 if ignore_index is None else ignore_index
    counts = [5000, 300, 40, 9]
    ours = build_loss("dice_focal", num_classes=4, class_counts=counts, weights="sqrt", ignore_index=index)
    focal = build_loss("focal", num_classes=4, class_counts=counts, alpha="sqrt", ignore_index=index)
    dice = monai_losses.DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True, ignore_index=index)
    x_ours, x_theirs = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    got = ours(x_ours, target)
    want = dice(x_theirs, target.unsqueeze(1)) + focal(x_theirs, target)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    got.backward()
    want.backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-9, atol=1e-12)
