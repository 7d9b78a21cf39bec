"""One softmax for every softmax loss: the target class's log-probability per sample (pixel), a loss's
per-sample term of it and, for the region losses, each image's per-class sums of the probabilities,
with the gradient written in closed form.

Why by hand: built from autograd's primitives, a soft Dice takes a softmax, a one-hot target of the
logits' size and a product of the two, each a pass over the (N, C, H, W) tensor forward and again
backward, and Dice + CE computes the softmax twice. Every softmax loss of this package is a function
of two small things, and this computes them in one pass of log-softmax:

    l_i    = log p_{i, y_i}                      (N, *spatial)  the per-pixel terms: CE, focal
    P_{nc} = sum_{i in image n} v_i p_{i, c}      (N, C)         the region terms: Dice, Tversky

(p_i = softmax(z_i), v_i = 0 at ignored pixels, 1 elsewhere). Their gradients with respect to the
logits are, with a_i = dL/dl_i and b_{nc} = dL/dP_{nc},

    dL/dz_{ij} = a_i [j = y_i] + p_{ij} (v_i b_{nj} - a_i - v_i sum_c b_{nc} p_{ic})

one matrix product (the channel sum), one broadcast difference and one multiply over the logits'
size. The true-positive mass TP_{nc} = sum_{i in n, y_i = c} v_i exp(l_i) and the label counts are
sums over the (N, *spatial) target, a C-th of the work, which autograd differentiates as usual.

A loss's term of l (CE's -w_{y_i} l_i, focal's -w (1 - p)^gamma l_i, ..., and its reduction) is
computed inside the same autograd node, as a *term*: a function ``term(l, with_slope) -> (F, dF/dl_i
or None)`` of l alone, which must not write into l; F is per sample or already reduced (a mean), the
slope always per sample (or one number for all). The slope enters a_i above (a_i = dL/dF dF/dl_i),
so a loss is one node of the autograd graph and not one per elementwise step: at a classification
batch's size (256 x 7) each node costs more than its arithmetic (``pipeline.losses._checks.reduced_term``
builds the reduction into a per-sample term).

docs/BENCHMARKS.md §7 (i) and (j) have the timings; tests/losses/test_softmax.py holds the values and
gradients to autograd's on the textbook formulas, tests/losses/test_region.py the losses built on
them to MONAI's.
"""

from __future__ import annotations

import torch

from pipeline.losses._checks import Term, chain_through_term


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """The dtype the softmax and its terms are computed in: float64 for float64 logits, else float32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def log_softmax_over_classes(logits: torch.Tensor) -> torch.Tensor:
    """torch.log_softmax(logits, dim=1), on the CPU for (N, C) logits with C < 16 taken over the
    transposed view (dim 0 of (C, N)), whose kernel vectorises along the batch: the last-dimension
    kernel loops over rows shorter than an AVX-512 vector one by one, 25 us against 5 us at 256 x 7
    (docs/BENCHMARKS.md §7 (j)). The same values (the same max, sum and log per row); the result is
    the transposed view back, (N, C) with C-major strides."""
    if logits.ndim == 2 and logits.shape[1] < 16 and logits.device.type == "cpu":
        return torch.log_softmax(logits.t(), dim=0).t()
    return torch.log_softmax(logits, dim=1)


class _TargetLogSoftmax(torch.autograd.Function):
    """(l, term(l), P) of the module docstring from logits (N, C, *spatial), an in-range index
    (N, 1, *spatial), an optional 0/1 float mask (N, 1, *spatial), whether to compute P, and an optional
    term; None in place of what is not computed. In ``compute_dtype``; the gradient is returned in the
    logits' dtype. ``scale`` and ``target_shift`` (N, 1, *spatial) take the softmax of s z + shift_i
    e_{y_i} instead of z (LDAM's margin), the gradient then times s."""

    @staticmethod
    def forward(ctx, logits, index, valid, class_sums, scale=1.0, target_shift=None, term=None):  # noqa: D102
        ctx.set_materialize_grads(False)
        dtype = compute_dtype(logits)
        work = logits if logits.dtype == dtype else logits.to(dtype)
        if scale != 1.0 or target_shift is not None:
            work = work * scale
            if target_shift is not None:
                work.scatter_add_(1, index, target_shift.to(work.dtype))
        ctx.scale = scale
        log_p = log_softmax_over_classes(work)
        target_log_p = log_p.gather(1, index).squeeze(1)
        value = slope = None
        if term is not None:
            value, slope = term(target_log_p, ctx.needs_input_grad[0])
        p = log_p.exp_()  # log_p is not needed again: its storage becomes p
        ctx.save_for_backward(p, index, valid, slope)
        ctx.logits_dtype, ctx.sample_shape = logits.dtype, target_log_p.shape
        sums = None
        if class_sums:
            spatial = tuple(range(2, p.ndim))
            sums = (p if valid is None else p * valid).sum(dim=spatial)
        return target_log_p, value, sums

    @staticmethod
    def backward(ctx, grad_target_log_p, grad_value, grad_sums):  # noqa: D102
        p, index, valid, slope = ctx.saved_tensors
        a = chain_through_term(grad_target_log_p, grad_value, slope, ctx.sample_shape)
        a = None if a is None else a.unsqueeze(1)
        if grad_sums is None:
            if a is None:
                return None, None, None, None, None, None, None
            grad = p * a.neg()
        else:
            b = grad_sums.view(*grad_sums.shape, *([1] * (p.ndim - 2)))  # b_nj
            along = torch.einsum("nc,nc...->n...", grad_sums, p).unsqueeze(1)  # sum_c b_nc p_ic: one matmul
            if valid is None:  # p_ij (b_nj - a_i - sum_c b_nc p_ic)
                grad = torch.sub(b, along if a is None else along.add_(a)).mul_(p)
            else:  # p_ij (v_i (b_nj - sum_c b_nc p_ic) - a_i)
                grad = torch.sub(b, along).mul_(valid)
                if a is not None:
                    grad.sub_(a)
                grad.mul_(p)
        if a is not None:
            grad.scatter_add_(1, index, a)
        if ctx.scale != 1.0:
            grad.mul_(ctx.scale)
        grad = grad if grad.dtype == ctx.logits_dtype else grad.to(ctx.logits_dtype)
        return grad, None, None, None, None, None, None


def target_log_softmax(
    logits: torch.Tensor, target: torch.Tensor, scale: float = 1.0, target_shift: torch.Tensor | None = None
) -> torch.Tensor:
    """log p_{i, y_i} (N, *spatial) of logits (N, C, *spatial) and in-range class indices (N, *spatial)
    (fill ignored entries first: the caller masks them). With ``scale`` s and ``target_shift`` d
    (N, *spatial): of the logits s z_i + d_i e_{y_i} (LDAM: s (z_i - Delta_{y_i} e_{y_i}))."""
    return softmax_sample_loss(logits, target, None, scale, target_shift)


def softmax_sample_loss(
    logits: torch.Tensor, target: torch.Tensor, term: Term | None,
    scale: float = 1.0, target_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """A loss's term F of l (the module docstring; l (N, *spatial) itself when ``term`` is None), as
    ``target_log_softmax`` with the same arguments."""
    shift = None if target_shift is None else target_shift.unsqueeze(1)
    target_log_p, value, _ = _TargetLogSoftmax.apply(logits, target.unsqueeze(1), None, False, float(scale), shift, term)
    return target_log_p if term is None else value


def softmax_region_terms(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, num_classes: int,
    term: Term | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What every softmax loss of this package needs, from one softmax:

    Returns ``(pixel, tp, prob_sum, label_count)``: the term's F (the module docstring), or l (N, *spatial)
    itself without a ``term``; per image and class (N, C) the true-positive mass sum_{y_i = c} p_{i, c},
    the predicted mass sum_i p_{i, c} and the label count sum_i [y_i = c], each over the non-ignored
    pixels only (``valid``: bool (N, *spatial), or None when nothing is ignored; ``target`` in range
    everywhere). fp = prob_sum - tp, fn = label_count - tp.
    """
    n = logits.shape[0]
    weight = None if valid is None else valid.unsqueeze(1).to(compute_dtype(logits))
    target_log_p, value, prob_sum = _TargetLogSoftmax.apply(
        logits, target.unsqueeze(1), weight, True, 1.0, None, term)
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
    return (target_log_p if term is None else value), tp, prob_sum, label_count
