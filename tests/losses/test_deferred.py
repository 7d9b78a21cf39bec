"""Deferred re-weighting (pipeline.losses.deferred): every loss with class weights accepts drw_start."""

import pytest
import torch

from pipeline.errors import ConfigError, TrainingError
from pipeline.losses import LOSSES, available_losses, build_loss, class_weights, loss_parameters
from pipeline.losses.deferred import DeferredReweighting

COUNTS = [40, 20, 10, 5]
REQUIRED = {"dynamical": {"amplitude": 2.0, "period": 4}}
WEIGHTED = sorted(name for name in available_losses() if LOSSES.info(name)["weights_param"])


def test_the_weighted_losses_are_the_ones_with_class_weights():
    assert WEIGHTED == ["dice_ce", "dice_focal", "dynamical", "focal", "ldam", "weighted_ce"]
    for name in WEIGHTED:
        assert "drw_start" in loss_parameters(name)
    for name in ("ce", "ohem", "cb_focal", "logit_adjusted", "tversky"):
        assert "drw_start" not in loss_parameters(name)


@pytest.mark.parametrize("name", WEIGHTED)
def test_uniform_before_drw_start_and_weighted_from_it(name):
    key = LOSSES.info(name)["weights_param"]
    params = {**REQUIRED.get(name, {}), key: "inverse"}
    deferred = build_loss(name, num_classes=4, class_counts=COUNTS, drw_start=0.5, **params)
    uniform = build_loss(name, num_classes=4, class_counts=COUNTS, **{**params, key: None})
    weighted = build_loss(name, num_classes=4, class_counts=COUNTS, **params)
    assert isinstance(deferred, DeferredReweighting)
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3))
    for step, reference in ((0, uniform), (4, uniform), (5, weighted), (9, weighted)):
        deferred.set_step(step, 10)
        for loss in (uniform, weighted):
            if hasattr(loss, "set_step"):
                loss.set_step(step, 10)
        assert deferred(logits, target).item() == pytest.approx(reference(logits, target).item(), rel=1e-6)
    assert not torch.allclose(uniform(logits, target), weighted(logits, target))


def test_current_weights_are_ones_then_the_scheme():
    loss = build_loss("weighted_ce", num_classes=4, class_counts=COUNTS, weights="sqrt", drw_start=0.8)
    with pytest.raises(TrainingError, match="set_step"):
        loss(torch.zeros(1, 4), torch.tensor([0]))
    loss.set_step(7, 10)
    assert torch.equal(loss.current_weights(), torch.ones(4))
    loss.set_step(8, 10)
    assert torch.allclose(loss.current_weights(), class_weights(COUNTS, "sqrt"))


def test_drw_start_zero_weighs_from_the_first_step():
    loss = build_loss("focal", num_classes=4, class_counts=COUNTS, alpha="inverse", drw_start=0.0)
    loss.set_step(0, 10)
    assert loss.active and torch.allclose(loss.current_weights(), class_weights(COUNTS, "inverse"))


def test_a_time_dependent_inner_loss_gets_the_step():
    loss = build_loss("dynamical", num_classes=4, class_counts=COUNTS, amplitude=3.0, period=4,
                      weights="sqrt", drw_start=0.5)
    loss.set_step(2, 10)
    assert loss.uniform._step == loss.weighted._step == 2
    assert torch.equal(loss.current_weights(), loss.uniform.current_weights())


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("weighted_ce", {"weights": None, "drw_start": 0.5}, "drw_start defers the class weights, but weights is none"),
        ("focal", {"drw_start": 0.5}, "but alpha is none"),
        ("weighted_ce", {"drw_start": 1.0}, r"drw_start must lie in \[0.0, 1.0\)"),
        ("weighted_ce", {"drw_start": "late"}, "drw_start must be a finite number"),
        ("ce", {"drw_start": 0.5}, r"unknown parameter\(s\) \['drw_start'\]"),
        ("weighted_ce", {"weights": "boundary", "drw_start": 0.5}, "needs eps"),
    ],
)
def test_bad_drw_settings_are_config_errors(name, params, message):
    with pytest.raises(ConfigError, match=message):
        build_loss(name, num_classes=4, class_counts=COUNTS, **params)


def test_drw_start_none_is_the_plain_loss():
    loss = build_loss("weighted_ce", num_classes=4, class_counts=COUNTS, drw_start=None)
    assert not isinstance(loss, DeferredReweighting)
