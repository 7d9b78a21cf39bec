"""One softmax for every softmax loss: the target class's log-probability per sample (pixel) and, for
the region losses, each image's per-class sums of the probabilities, with the gradient written in
closed form.

Why by hand: built from autograd's primitives, a soft Dice takes a softmax, a one-hot target of the
logits' size and a product of the two, each a pass over the (N, C, H, W) tensor forward and again
backward, and Dice + CE computes the softmax twice. Every softmax loss of this package is a function
of two small things, and this computes them in one pass of log-softmax:

    l_i    = log p_{i, y_i}                      (N, *spatial)  the per-pixel terms: CE, focal
    P_{nc} = sum_{i in image n} v_i p_{i, c}      (N, C)         the region terms: Dice, Tversky

(p_i = softmax(z_i), v_i = 0 at ignored pixels, 1 elsewhere). Their gradients with respect to the
logits are, with a_i = dL/dl_i and b_{nc} = dL/dP_{nc},

    dL/dz_{ij} = a_i [j = y_i] + p_{ij} (v_i b_{nj} - a_i - v_i sum_c b_{nc} p_{ic})

one multiply, one channel sum and one fused multiply-add over the logits' size. The true-positive
mass TP_{nc} = sum_{i in n, y_i = c} v_i exp(l_i) and the label counts are sums over the (N, *spatial)
target, a C-th of the work, which autograd differentiates as usual. docs/BENCHMARKS.md §7 (i) has the
timings; tests/losses/test_softmax.py holds the values and gradients to autograd's on the textbook
formulas, tests/losses/test_region.py the losses built on them to MONAI's.
"""

from __future__ import annotations

import torch


class _TargetLogSoftmax(torch.autograd.Function):
    """(l, P) of the module docstring from logits (N, C, *spatial), an in-range index (N, 1, *spatial)
    and an optional 0/1 float mask (N, 1, *spatial); P only with ``class_sums``. Computed in float32
    (or float64 for float64 logits); the gradient is returned in the logits' dtype. ``scale`` and
    ``target_shift`` (N, 1, *spatial) take the softmax of s z + shift_i e_{y_i} instead of z (LDAM's
    margin), the gradient then times s."""

    @staticmethod
    def forward(ctx, logits, index, valid, class_sums, scale=1.0, target_shift=None):  # noqa: D102
        ctx.set_materialize_grads(False)
        work = logits if logits.dtype == torch.float64 else logits.float()
        if scale != 1.0 or target_shift is not None:
            work = work * scale
            if target_shift is not None:
                work.scatter_add_(1, index, target_shift.to(work.dtype))
        ctx.scale = scale
        log_p = torch.log_softmax(work, dim=1)
        target_log_p = log_p.gather(1, index).squeeze(1)
        p = log_p.exp_()  # log_p is not needed again: its storage becomes p
        ctx.save_for_backward(p, index, valid)
        ctx.logits_dtype = logits.dtype
        if not class_sums:
            return target_log_p
        spatial = tuple(range(2, p.ndim))
        sums = (p if valid is None else p * valid).sum(dim=spatial)
        return target_log_p, sums

    @staticmethod
    def backward(ctx, grad_target_log_p, grad_sums=None):  # noqa: D102
        p, index, valid = ctx.saved_tensors
        a = None if grad_target_log_p is None else grad_target_log_p.unsqueeze(1)
        if grad_sums is None:
            if a is None:
                return None, None, None, None, None, None
            grad = p * a.neg()
        else:
            grad = p * grad_sums.view(*grad_sums.shape, *([1] * (p.ndim - 2)))  # p_ij b_nj
            along = grad.sum(dim=1, keepdim=True)  # sum_c b_nc p_ic
            if valid is not None:
                grad.mul_(valid)
                along.mul_(valid)
            grad.addcmul_(p, along if a is None else along + a, value=-1.0)
        if a is not None:
            grad.scatter_add_(1, index, a)
        if ctx.scale != 1.0:
            grad.mul_(ctx.scale)
        return grad.to(ctx.logits_dtype), None, None, None, None, None


def target_log_softmax(
    logits: torch.Tensor, target: torch.Tensor, scale: float = 1.0, target_shift: torch.Tensor | None = None
) -> torch.Tensor:
    """log p_{i, y_i} (N, *spatial) of logits (N, C, *spatial) and in-range class indices (N, *spatial)
    (fill ignored entries first: the caller masks them). With ``scale`` s and ``target_shift`` d
    (N, *spatial): of the logits s z_i + d_i e_{y_i} (LDAM: s (z_i - Delta_{y_i} e_{y_i}))."""
    shift = None if target_shift is None else target_shift.unsqueeze(1)
    return _TargetLogSoftmax.apply(logits, target.unsqueeze(1), None, False, float(scale), shift)


def softmax_region_terms(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What every softmax loss of this package needs, from one softmax:

    Returns ``(target_log_p, tp, prob_sum, label_count)``: l_i (N, *spatial); per image and class
    (N, C) the true-positive mass sum_{y_i = c} p_{i, c}, the predicted mass sum_i p_{i, c} and the label
    count sum_i [y_i = c], each over the non-ignored pixels only (``valid``: bool (N, *spatial), or None
    when nothing is ignored; ``target`` in range everywhere). fp = prob_sum - tp, fn = label_count - tp.
    """
    n = logits.shape[0]
    weight = None if valid is None else valid.unsqueeze(1).to(logits.dtype if logits.dtype == torch.float64 else torch.float32)
    target_log_p, prob_sum = _TargetLogSoftmax.apply(logits, target.unsqueeze(1), weight, True)
    flat_target = target.reshape(n, -1)
    hit = target_log_p.exp().reshape(n, -1)
    if weight is None:
        counted = torch.ones_like(hit)
    else:
        counted = weight.reshape(n, -1)
        hit = hit * counted
    zeros = prob_sum.new_zeros(n, num_classes)
    tp = zeros.scatter_add(1, flat_target, hit)
    label_count = zeros.scatter_add(1, flat_target, counted)
    return target_log_p, tp, prob_sum, label_count
