"""The shared softmax (pipeline.losses._softmax): values and closed-form gradients against autograd's
own on the textbook formulas (one-hot target, softmax, masked sums), in float64."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.losses._softmax import softmax_region_terms, target_log_softmax


def by_autograd(logits, target, valid, num_classes):
    """The four terms of softmax_region_terms from one-hot tensors of the logits' size."""
    spatial = tuple(range(2, logits.ndim))
    one_hot = F.one_hot(target, num_classes).movedim(-1, 1).to(logits.dtype)
    mask = valid.unsqueeze(1).to(logits.dtype)
    p = torch.softmax(logits, 1)
    target_log_p = torch.log_softmax(logits, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    return target_log_p, (p * one_hot * mask).sum(spatial), (p * mask).sum(spatial), (one_hot * mask).sum(spatial)


@pytest.mark.parametrize("shape", [(3, 5, 6, 7), (4, 3, 9), (2, 4, 3, 3, 2)])
@pytest.mark.parametrize("ignored", [False, True])
def test_region_terms_and_their_gradient_equal_autograds_on_the_formulas(shape, ignored):
    generator = torch.Generator().manual_seed(sum(shape))
    logits = torch.randn(shape, dtype=torch.float64, generator=generator, requires_grad=True)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    valid = torch.rand(target.shape, generator=generator) > 0.3 if ignored else torch.ones_like(target, dtype=torch.bool)
    ours = softmax_region_terms(logits, target, valid if ignored else None, shape[1])
    reference = by_autograd(logits, target, valid, shape[1])
    # l is only defined where counted: callers mask the rest, so do the weights here
    weights = [torch.randn(t.shape, dtype=torch.float64, generator=generator) for t in reference]
    weights[0] = weights[0] * valid
    for got, want in zip(ours, reference):
        assert got.shape == want.shape
    for got, want in zip(ours[1:], reference[1:]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[0] * valid, reference[0] * valid, rtol=1e-12, atol=1e-12)
    grad_ours = torch.autograd.grad(sum((t * w).sum() for t, w in zip(ours, weights)), logits)[0]
    grad_reference = torch.autograd.grad(sum((t * w).sum() for t, w in zip(reference, weights)), logits)[0]
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("outputs", [(0,), (1,), (2,), (1, 2), (0, 2)])
def test_gradcheck_with_some_outputs_unused(outputs):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 3, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    target = torch.randint(0, 4, (2, 3, 5), generator=generator)
    valid = torch.rand(target.shape, generator=generator) > 0.25
    for mask in (None, valid):
        def selected(x, mask=mask):
            terms = softmax_region_terms(x, target, mask, 4)
            return tuple(terms[i] * (1 if mask is None or i else mask) for i in outputs)
        assert torch.autograd.gradcheck(selected, (logits,))


def test_target_log_softmax_is_cross_entropy_with_its_gradient():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(64, 7, generator=generator, requires_grad=True)
    target = torch.randint(0, 7, (64,), generator=generator)
    ours = -target_log_softmax(logits, target).mean()
    grad_ours = torch.autograd.grad(ours, logits)[0]
    reference = F.cross_entropy(logits, target)
    grad_reference = torch.autograd.grad(reference, logits)[0]
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(grad_ours, grad_reference)


def test_low_precision_logits_are_computed_in_float32_and_get_a_gradient_of_their_dtype():
    generator = torch.Generator().manual_seed(5)
    full = torch.randn(2, 3, 4, 4, generator=generator)
    target = torch.randint(0, 3, (2, 4, 4), generator=generator)
    low = full.bfloat16().requires_grad_(True)
    terms = softmax_region_terms(low, target, None, 3)
    assert all(t.dtype == torch.float32 for t in terms)
    (terms[0].sum() + terms[2].sum()).backward()
    assert low.grad.dtype == torch.bfloat16
    reference = softmax_region_terms(low.detach().float(), target, None, 3)
    for got, want in zip(terms, reference):
        torch.testing.assert_close(got, want)


def test_scale_and_target_shift_are_the_softmax_of_the_shifted_logits():
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    target = torch.randint(0, 4, (3, 5), generator=generator)
    shift = torch.randn(3, 5, dtype=torch.float64, generator=generator)
    one_hot = F.one_hot(target, 4).movedim(-1, 1).double()
    reference = torch.log_softmax(7.0 * logits + one_hot * shift.unsqueeze(1), 1).gather(1, target.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(target_log_softmax(logits, target, 7.0, shift), reference)
    assert torch.autograd.gradcheck(lambda x: target_log_softmax(x, target, 7.0, shift), (logits,))
