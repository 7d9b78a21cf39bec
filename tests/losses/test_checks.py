import pytest
import torch

from pipeline.losses._checks import check_and_split, check_inputs, reduce_term, safe_pow, valid_mask


def test_check_inputs_accepts_both_shapes_and_ignore_index():
    assert check_inputs(torch.zeros(2, 3), torch.tensor([0, 2]), 3, -100).dtype == torch.int64
    target = torch.tensor([[[0, -100], [2, 1]]], dtype=torch.int32)
    assert check_inputs(torch.zeros(1, 3, 2, 2), target, 3, -100).dtype == torch.int64


@pytest.mark.parametrize(
    ("logits", "target", "message"),
    [
        (torch.zeros(2, 4), torch.tensor([0, 1]), "4 channels but the loss was built for 3"),
        (torch.zeros(2, 3), torch.tensor([[0], [1]]), "does not match"),
        (torch.zeros(2, 3, 2, 2), torch.zeros(2, 1, 2, 2, dtype=torch.long), "does not match"),
        (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), "integer class indices"),
        (torch.zeros(2, 3), torch.tensor([0, 3]), "label 3, outside 0..2"),
        (torch.zeros(2, 3), torch.tensor([0, -1]), "label -1"),
        (torch.zeros(3), torch.tensor([0]), r"\(N, C\)"),
    ],
)
def test_check_inputs_rejects(logits, target, message):
    with pytest.raises(ValueError, match=message):
        check_inputs(logits, target, 3, -100)


@pytest.mark.parametrize(
    ("target", "ignore_index", "counted"),
    [
        ([0, 2, 1], -100, None),  # the usual case: min and max in range, nothing ignored
        ([0, 2, 1], 255, None),
        ([0, 2, 1], None, None),
        ([0, -100, 2], -100, [True, False, True]),
        ([255, 1, 255], 255, [False, True, False]),
        ([0, 1, 2], 1, [True, False, True]),  # an ignored class index inside 0..C-1
        ([0, 2, 2], 1, None),  # ... that no entry holds
        ([], -100, None),
    ],
)
def test_check_and_split_masks_exactly_the_ignored_entries(target, ignore_index, counted):
    target = torch.tensor(target, dtype=torch.int64)
    filled, valid = check_and_split(torch.zeros(len(target), 3), target, 3, ignore_index)
    if counted is None:
        assert valid is None and torch.equal(filled, target)
    else:
        assert valid.tolist() == counted
        assert torch.equal(filled, torch.where(valid, target, 0))


@pytest.mark.parametrize(("target", "bad"), [([0, -100, 3], 3), ([-1, -100, 0], -1), ([255, 0, 1], 255)])
def test_check_and_split_names_an_unknown_label_beside_ignored_ones(target, bad):
    with pytest.raises(ValueError, match=f"label {bad}, outside 0..2"):
        check_and_split(torch.zeros(3, 3), torch.tensor(target), 3, -100)


def test_reduce_term_by_hand():
    loss = torch.tensor([1.0, 2.0, 4.0])
    valid = valid_mask(torch.tensor([0, -100, 1]), -100)
    assert reduce_term(loss, None, valid, "mean")[0].item() == pytest.approx(2.5)
    assert reduce_term(loss, None, valid, "sum")[0].item() == pytest.approx(5.0)
    assert torch.equal(reduce_term(loss, None, valid, "none")[0], torch.tensor([1.0, 0.0, 4.0]))


def test_safe_pow_value_and_zero_gradient_at_zero():
    base = torch.tensor([0.0, 0.25, 1.0], requires_grad=True)
    out = safe_pow(base, 0.5)
    assert torch.allclose(out, torch.tensor([0.0, 0.5, 1.0]))
    out.sum().backward()
    assert torch.allclose(base.grad, torch.tensor([0.0, 1.0, 0.5]))  # 0.5 * x^-0.5, and 0 at x = 0
    assert torch.equal(safe_pow(torch.zeros(2), 0.0), torch.ones(2))
