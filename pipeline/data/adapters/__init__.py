"""Dataset adapters: turn a dataset on disk into a manifest (docs/ARCHITECTURE.md).

Every adapter has one signature::

    build(root: Path, classes: list[str], mask_root: Path, **params) -> pandas.DataFrame

Paths in ``params`` are relative to ``root`` unless absolute; manifest ``image_path`` values are
relative to ``root`` and ``mask_path`` values to ``mask_root``. Unknown params -> ConfigError.
Modules are imported only when their adapter is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pandas as pd

from pipeline.errors import ConfigError

Adapter = Callable[..., pd.DataFrame]

# name -> "module:function"
_ADAPTERS: dict[str, str] = {
    "isic2018": "pipeline.data.adapters.isic2018:build",
    "ham10000": "pipeline.data.adapters.ham10000:build",
    "folder": "pipeline.data.adapters.folder:build",
    "voc_boxes": "pipeline.data.adapters.voc_boxes:build",
    "circles": "pipeline.data.adapters.circles:build",
    "masks": "pipeline.data.adapters.masks:build",
    "synthetic_isic": "pipeline.data.adapters.synthetic:build_synthetic_isic",
    "synthetic_acne": "pipeline.data.adapters.synthetic:build_synthetic_acne",
}


def available_adapters() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(name: str) -> Adapter:
    """The ``build`` function registered as ``name``; an unknown name -> ConfigError listing them."""
    if name not in _ADAPTERS:
        raise ConfigError(f"unknown dataset adapter {name!r}; available: {', '.join(available_adapters())}")
    module_name, function_name = _ADAPTERS[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)
