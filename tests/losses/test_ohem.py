"""Online hard example mining (pipeline.losses.ohem)."""

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.losses import build_loss
from pipeline.losses.ohem import hardest_mask


def test_mean_over_the_hardest_fraction_by_hand():
    # CE of target 0 with logits (0, x): log(1 + e^x), increasing in x
    xs = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    logits = torch.stack([torch.zeros(4), xs], dim=1)
    target = torch.zeros(4, dtype=torch.long)
    ce = [math.log1p(math.exp(x)) for x in xs.tolist()]
    loss = build_loss("ohem", num_classes=2, fraction=0.5, min_kept=1)
    assert loss(logits, target).item() == pytest.approx((ce[2] + ce[3]) / 2, rel=1e-6)
    assert build_loss("ohem", num_classes=2, fraction=0.25, min_kept=3)(logits, target).item() == pytest.approx(
        sum(ce[1:]) / 3, rel=1e-6)  # the floor wins over ceil(0.25 * 4) = 1
    assert build_loss("ohem", num_classes=2, fraction=0.1, min_kept=10)(logits, target).item() == pytest.approx(
        sum(ce) / 4, rel=1e-6)  # never more than the batch holds


def test_fraction_one_is_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 3, 4, 4), torch.randint(0, 3, (6, 4, 4))
    value = build_loss("ohem", num_classes=3, fraction=1.0)(logits, target)
    assert value.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)


def test_only_the_kept_samples_get_gradient():
    torch.manual_seed(1)
    logits = torch.randn(8, 3, requires_grad=True)
    target = torch.randint(0, 3, (8,))
    build_loss("ohem", num_classes=3, fraction=0.25, min_kept=1)(logits, target).backward()
    per_sample = F.cross_entropy(logits.detach(), target, reduction="none")
    hardest = set(per_sample.topk(2).indices.tolist())
    has_gradient = {i for i in range(8) if logits.grad[i].abs().sum() > 0}
    assert has_gradient == hardest


def test_ignored_pixels_are_never_mined():
    logits = torch.zeros(1, 2, 2, 3)
    logits[0, 1] = 5.0  # every pixel predicts class 1 confidently
    target = torch.tensor([[[0, 0, 1], [1, 1, 1]]])  # the two class-0 pixels are the hard ones
    target_ignored = target.clone()
    target_ignored[0, 0, :2] = -100
    loss = build_loss("ohem", num_classes=2, fraction=0.5, min_kept=1)
    per_pixel = F.cross_entropy(logits, target, reduction="none")
    hard, easy = per_pixel[0, 0, 0].item(), per_pixel[0, 1, 0].item()
    assert loss(logits, target_ignored).item() == pytest.approx(easy, rel=1e-6)  # 2 of 4 valid, all easy
    assert loss(logits, target).item() == pytest.approx((2 * hard + easy) / 3, rel=1e-6)  # 3 of 6: both hard ones


def test_reduction_none_zeroes_what_is_not_kept():
    logits = torch.stack([torch.zeros(4), torch.tensor([-2.0, 0.0, 1.0, 3.0])], dim=1)
    values = build_loss("ohem", num_classes=2, fraction=0.5, min_kept=1, reduction="none")(logits, torch.zeros(4, dtype=torch.long))
    assert values.shape == (4,) and (values[:2] == 0).all() and (values[2:] > 0).all()


def test_hardest_mask_with_no_valid_entry_keeps_nothing():
    mask = hardest_mask(torch.ones(3), torch.zeros(3, dtype=torch.bool), 0.5, 2)
    assert not mask.any()


@pytest.mark.parametrize(
    ("params", "message"),
    [({"fraction": 0.0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"min_kept": 0}, "min_kept"),
     ({"min_kept": 2.5}, "min_kept")],
)
def test_bad_parameters(params, message):
    with pytest.raises(ConfigError, match=f"loss 'ohem': {message}"):
        build_loss("ohem", num_classes=2, **params)


@pytest.mark.parametrize("ignored", [False, True])
def test_large_batches_select_the_same_pixels_as_topk(ignored):
    # from 65,536 entries on the CPU selects by NumPy's argpartition: the same set as torch.topk
    from pipeline.losses.ohem import hardest_indices

    generator = torch.Generator().manual_seed(3)
    loss = torch.rand(2, 256, 256, generator=generator)  # distinct values: one right answer
    valid = torch.rand(loss.shape, generator=generator) > 0.3 if ignored else None
    kept = hardest_indices(loss, valid, 0.25, 8)
    n = loss.numel() if valid is None else int(valid.sum())
    candidates = loss if valid is None else torch.where(valid, loss, -1.0)
    expected = torch.topk(candidates.flatten(), math.ceil(0.25 * n)).indices
    assert kept.dtype == torch.long and sorted(kept.tolist()) == sorted(expected.tolist())
