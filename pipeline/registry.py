"""One registry pattern for everything a config names (timm's ``_registry`` style).

A ``Registry`` maps a name to a factory; modules add theirs with the ``register`` decorator, and a
config's name is looked up with ``get``, whose error lists what exists. Losses, dataset adapters,
samplers, optimizers, schedulers and tasks each have one; ``pipeline list`` prints their names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from pipeline.errors import ConfigError

Factory = TypeVar("Factory", bound=Callable[..., Any])


class Registry(Generic[Factory]):
    """name -> factory, plus free-form facts about each entry (``info``).

    ``modules`` are imported on first use: importing them runs their ``@register`` decorators, so a
    module is loaded only when something of its kind is asked for."""

    def __init__(self, kind: str, modules: Sequence[str] = ()) -> None:
        self.kind = kind
        self._modules = tuple(modules)
        self._loaded = not self._modules
        self._entries: dict[str, Factory] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[Factory], Factory]:
        """Decorator adding a factory under ``name``; ``info`` is kept for ``info(name)``."""

        def decorate(factory: Factory) -> Factory:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            self._info[name] = info
            return factory

        return decorate

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._modules:
                importlib.import_module(module)

    def get(self, name: str) -> Factory:
        """The factory registered as ``name``; an unknown name -> ConfigError listing the names."""
        self._load()
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {self.names()}")
        return self._entries[name]

    def info(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._info[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries
