"""Loss registry (``pipeline.registry``): ``@register_loss(name)`` on a loss class, ``build_loss(name, ...)`` to make one.

A registered class takes keyword arguments ``num_classes``, ``class_counts`` and its own
parameters. A loss that needs a particular classifier head says so with a class attribute
``head`` (a head of ``pipeline.models.HEADS``; default ``linear``), read by ``loss_head``: LDAM
declares ``cosine``, and the classification task builds that head unless the config chooses. ``build_loss`` checks the parameter names against the class signature so that a
typo in a config fails with the list of what exists, and prefixes every ConfigError with the
loss name.

A loss registered with ``weights_param`` (the name of its class-weight parameter, ``weights`` or
``alpha``) also accepts ``drw_start``: deferred re-weighting, in one place for every weighted loss
(``pipeline.losses.deferred``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import nn

from pipeline.errors import ConfigError
from pipeline.losses._checks import check_number
from pipeline.losses.deferred import DeferredReweighting
from pipeline.losses.weighting import resolve_weights
from pipeline.registry import Registry

TASKS = ("classification", "segmentation")
_COMMON = ("num_classes", "class_counts")

_LossClass = TypeVar("_LossClass", bound=Callable[..., nn.Module])
LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")


def register_loss(
    name: str, *, segmentation_only: bool = False, weights_param: str | None = None
) -> Callable[[_LossClass], _LossClass]:
    """Class decorator adding a loss to the registry under ``name``. ``weights_param``: the name of
    the loss's class-weight parameter (None means it has none), which ``drw_start`` defers."""
    return LOSSES.register(name, segmentation_only=segmentation_only, weights_param=weights_param)


def available_losses(task: str | None = None) -> list[str]:
    """Registered loss names, sorted; with ``task='classification'`` the segmentation-only ones are left out."""
    if task is not None and task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; use one of {list(TASKS)}")
    names = LOSSES.names()
    if task == "classification":
        names = [name for name in names if not LOSSES.info(name)["segmentation_only"]]
    return names


def loss_head(name: str) -> str:
    """The classifier head the loss ``name`` assumes: its class attribute ``head``, else "linear"."""
    return getattr(LOSSES.get(name), "head", "linear")


def loss_parameters(name: str) -> dict[str, Any]:
    """The parameters a loss accepts besides num_classes / class_counts, with their defaults
    (``inspect.Parameter.empty`` for required ones)."""
    factory = LOSSES.get(name)
    accepted = {
        param.name: param.default
        for param in inspect.signature(factory).parameters.values()
        if param.name not in _COMMON and param.kind is not inspect.Parameter.VAR_KEYWORD
    }
    if LOSSES.info(name).get("weights_param") and "drw_start" not in accepted:
        accepted["drw_start"] = None
    return accepted


def build_loss(
    name: str, *, num_classes: int, class_counts: Sequence[float] | None = None, **params: Any
) -> nn.Module:
    """Build the loss registered as ``name``; unknown names or parameters raise ConfigError."""
    accepted = loss_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"loss {name!r} got unknown parameter(s) {unknown}; it accepts {sorted(accepted)}")
    required = {key for key, default in accepted.items() if default is inspect.Parameter.empty}
    missing = sorted(required - set(params))
    if missing:
        raise ConfigError(f"loss {name!r} needs parameter(s) {missing}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"loss {name!r}: num_classes must be an integer >= 2, got {num_classes!r}")
    try:
        if params.get("drw_start") is not None and LOSSES.info(name).get("weights_param"):
            return _deferred_reweighting(name, num_classes, class_counts, params, accepted)
        params.pop("drw_start", None)
        return LOSSES.get(name)(num_classes=num_classes, class_counts=class_counts, **params)
    except ConfigError as err:
        raise ConfigError(f"loss {name!r}: {err}") from err


def _deferred_reweighting(
    name: str, num_classes: int, class_counts: Sequence[float] | None, params: dict[str, Any], accepted: dict[str, Any]
) -> nn.Module:
    """The loss ``name`` without class weights until ``drw_start`` of training, with them after."""
    params = dict(params)
    start = check_number("drw_start", params.pop("drw_start"), low=0.0, high=1.0, high_open=True)
    key = LOSSES.info(name)["weights_param"]
    spec = params.get(key, accepted[key])
    beta = params.get("beta", accepted.get("beta", 0.999))
    weights = resolve_weights(spec, num_classes=num_classes, class_counts=class_counts, beta=beta, name=key)
    if weights is None:
        raise ConfigError(f"drw_start defers the class weights, but {key} is none: set {key} to a scheme or a list")
    factory = LOSSES.get(name)
    weighted = factory(num_classes=num_classes, class_counts=class_counts, **params)
    uniform = factory(num_classes=num_classes, class_counts=class_counts, **{**params, key: None})
    return DeferredReweighting(uniform, weighted, weights, start)

