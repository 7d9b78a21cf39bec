"""Dataset adapters: turn a dataset on disk into a manifest (docs/ARCHITECTURE.md).

Every adapter has one signature::

    build(root: Path, classes: list[str], mask_root: Path, **params) -> pandas.DataFrame

Paths in ``params`` are relative to ``root`` unless absolute; manifest ``image_path`` values are
relative to ``root`` and ``mask_path`` values to ``mask_root``. Unknown params -> ConfigError.
Adapter modules register with ``@ADAPTERS.register(name)`` and are imported when an adapter is asked for.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from pipeline.registry import Registry

Adapter = Callable[..., pd.DataFrame]

ADAPTERS: Registry[Adapter] = Registry("dataset adapter", modules=[
    f"pipeline.data.adapters.{module}"
    for module in ("isic2018", "ham10000", "folder", "csv_table", "voc_boxes", "box_crops", "circles", "masks", "synthetic")
])


def get_adapter(name: str) -> Adapter:
    """The ``build`` function registered as ``name``; an unknown name -> ConfigError listing them."""
    return ADAPTERS.get(name)
