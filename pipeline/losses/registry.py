"""Loss registry (``pipeline.registry``): ``@register_loss(name)`` on a loss class, ``build_loss(name, ...)`` to make one.

A registered class takes keyword arguments ``num_classes``, ``class_counts`` and its own
parameters. A loss that needs a particular classifier head says so with a class attribute
``head`` (a head of ``pipeline.models.HEADS``; default ``linear``), read by ``loss_head``: LDAM
declares ``cosine``, and the classification task builds that head unless the config chooses. ``build_loss`` checks the parameter names against the class signature so that a
typo in a config fails with the list of what exists, and prefixes every ConfigError with the
loss name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import nn

from pipeline.errors import ConfigError
from pipeline.registry import Registry

TASKS = ("classification", "segmentation")
_COMMON = ("num_classes", "class_counts")

_LossClass = TypeVar("_LossClass", bound=Callable[..., nn.Module])
LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")


def register_loss(name: str, *, segmentation_only: bool = False) -> Callable[[_LossClass], _LossClass]:
    """Class decorator adding a loss to the registry under ``name``."""
    return LOSSES.register(name, segmentation_only=segmentation_only)


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
    return {
        param.name: param.default
        for param in inspect.signature(factory).parameters.values()
        if param.name not in _COMMON and param.kind is not inspect.Parameter.VAR_KEYWORD
    }


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
        return LOSSES.get(name)(num_classes=num_classes, class_counts=class_counts, **params)
    except ConfigError as err:
        raise ConfigError(f"loss {name!r}: {err}") from err

