"""Deferred re-weighting (DRW) for any weighted loss: Cao, Wei, Gaidon, Arechiga and Ma, "Learning
Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019, section 3.3 (their
code: github.com/kaidic/LDAM-DRW).

Train with uniform class weights first, so that the features are learnt from the data as it is,
then switch the class weights on for the rest of training:

    L(t) = L(f, y; w = 1)    for t <  drw_start * T
    L(t) = L(f, y; w)        for t >= drw_start * T          (t: optimizer step, T: total steps)

``build_loss`` applies it to every loss registered with a ``weights_param`` (the name of its class
weight parameter: ``weights`` or ``alpha``) when the config gives ``drw_start``: the wrapper holds
two instances of the same loss, one with that parameter set to none and one as configured, and
forwards each batch to the one the step selects. The step comes from the trainer
(``set_step``), so a resumed run switches at the same step.
"""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

from pipeline.errors import TrainingError
from pipeline.losses._checks import check_step


class DeferredReweighting(_Loss):
    """``uniform`` (the loss without class weights) before ``start * total_steps``, ``weighted``
    (the same loss with them) from then on. ``weights`` are the class weights ``weighted`` uses,
    for ``current_weights`` (the trainer logs them per step to loss_weights.csv)."""

    def __init__(self, uniform: torch.nn.Module, weighted: torch.nn.Module, weights: torch.Tensor, start: float) -> None:
        super().__init__(reduction=getattr(weighted, "reduction", "mean"))
        self.uniform = uniform
        self.weighted = weighted
        self.register_buffer("weights", weights.clone(), persistent=False)
        self.start = start
        self._step: int | None = None
        self._total_steps: int | None = None

    def set_step(self, step: int, total_steps: int, steps_per_epoch: int | None = None) -> None:
        """Called by the trainer before every forward; passed on to time-dependent inner losses."""
        check_step("deferred re-weighting", step, total_steps, steps_per_epoch)
        self._step, self._total_steps = step, total_steps
        for inner in (self.uniform, self.weighted):
            if hasattr(inner, "set_step"):
                inner.set_step(step, total_steps, steps_per_epoch=steps_per_epoch)

    @property
    def active(self) -> bool:
        """True once the class weights apply (step >= drw_start * total_steps)."""
        if self._step is None or self._total_steps is None:
            raise TrainingError("loss with drw_start: set_step(step, total_steps) was not called before use")
        return self._step >= self.start * self._total_steps

    def current(self) -> torch.nn.Module:
        """The loss in use at the current step."""
        return self.weighted if self.active else self.uniform

    def current_weights(self) -> torch.Tensor:
        """The class weights in use now: ones before the switch, the configured weights after (a
        time-dependent inner loss, e.g. 'dynamical', reports its own)."""
        inner = self.current()
        if hasattr(inner, "current_weights"):
            return inner.current_weights()
        return self.weights.detach().cpu().clone() if self.active else torch.ones_like(self.weights).cpu()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.current()(logits, target)
