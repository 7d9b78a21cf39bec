"""HAM10000 metadata -> classification manifest (Tschandl, Rosendahl & Kittler, Sci Data 2018).

``HAM10000_metadata(.csv)`` has ``lesion_id,image_id,dx,dx_type,age,sex,localization``. ``dx``
(akiec, bcc, bkl, df, mel, nv, vasc) maps case-insensitively to the class codes, or through
``dx_map``. ``group_id`` is the lesion; ``label_origin`` is ``dx_type`` (histo, follow_up,
consensus, confocal). Images are found by ``image_id`` anywhere under ``image_dir`` (one
recursive listing; class subfolders are fine).

Params:
    metadata_csv: path of the metadata CSV (relative to root)
    image_dir: folder searched recursively for ``<image_id>.<ext>`` (default ".")
    require_images: a metadata row without an image file is a DataError (default true); false
        drops such rows with a logged count
    dx_map: optional ``{dx: class code}`` for configs whose codes are not the upper-cased dx
    source: value of the ``source`` column (default "ham10000")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.data.adapters import ADAPTERS
from pipeline.data.adapters._common import (
    check_classes,
    check_type_map,
    csv_row,
    index_images,
    listed,
    log_dropped,
    manifest_frame,
    manifest_path,
    parse_age,
    parse_params,
    read_csv,
    require_dir,
    resolve,
)
from pipeline.errors import DataError

logger = logging.getLogger(__name__)
ADAPTER = "ham10000"
REQUIRED_COLUMNS = ("lesion_id", "image_id", "dx")


@dataclass(frozen=True)
class Ham10000Params:
    metadata_csv: str
    image_dir: str = "."
    require_images: bool = True
    dx_map: dict | None = None
    source: str = ADAPTER


def _dx_lookup(classes: list[str], dx_map: dict | None) -> dict[str, str]:
    """Lower-cased dx -> class code: the codes themselves, overridden by ``dx_map``."""
    lookup = {code.lower(): code for code in classes}
    if dx_map:
        lookup.update({dx.lower(): code for dx, code in check_type_map(dx_map, classes, ADAPTER, "dx_map").items()})
    return lookup


def _labels(metadata: pd.DataFrame, lookup: dict[str, str], path: Path) -> pd.Series:
    labels = metadata["dx"].str.strip().str.lower().map(lookup)
    unknown = labels.isna()
    if unknown.any():
        index = labels.index[unknown][0]
        raise DataError(
            f"metadata {path}: line {csv_row(index)} (image {metadata.at[index, 'image_id']!r}) has unknown dx "
            f"{metadata.at[index, 'dx']!r}; known: {sorted(lookup)} ({int(unknown.sum())} such row(s))"
        )
    return labels


def _check_ids(metadata: pd.DataFrame, path: Path) -> None:
    empty = metadata["image_id"] == ""
    if empty.any():
        raise DataError(f"metadata {path}: line {csv_row(metadata.index[empty][0])} has an empty image_id")
    duplicated = metadata["image_id"].duplicated()
    if duplicated.any():
        index = metadata.index[duplicated][0]
        raise DataError(f"metadata {path}: image_id {metadata.at[index, 'image_id']!r} is repeated at line {csv_row(index)}")


@ADAPTERS.register("ham10000")
def build(root: Path, classes: list[str], mask_root: Path, **params: Any) -> pd.DataFrame:
    """Classification manifest from HAM10000 metadata and images (see module docstring)."""
    options = parse_params(Ham10000Params, params, ADAPTER)
    classes = check_classes(classes, ADAPTER)
    root = Path(root)
    path = resolve(options.metadata_csv, root)
    metadata = read_csv(path, REQUIRED_COLUMNS, "HAM10000 metadata")
    metadata["image_id"] = metadata["image_id"].str.strip()
    _check_ids(metadata, path)
    labels = _labels(metadata, _dx_lookup(classes, options.dx_map), path)
    images = index_images(require_dir(resolve(options.image_dir, root), "image_dir"), recursive=True)

    rows, missing = [], []
    for record, label in zip(metadata.to_dict("records"), labels):
        image = images.get(record["image_id"])
        if image is None:
            missing.append(record["image_id"])
            continue
        rows.append({
            "image_id": record["image_id"],
            "image_path": manifest_path(image, root),
            "label": label,
            "group_id": record["lesion_id"] or record["image_id"],
            "split": "",
            "source": options.source,
            "label_origin": record.get("dx_type") or "expert",
            "age": parse_age(record.get("age", "")),
            "sex": record.get("sex", ""),
            "site": record.get("localization", ""),
        })

    if missing and options.require_images:
        raise DataError(
            f"metadata {path}: {len(missing)} image(s) not found under {options.image_dir!r}: {listed(missing)} "
            f"(require_images: false drops them)"
        )
    log_dropped(ADAPTER, len(missing), f"of {len(metadata)} metadata row(s) with no image file", missing)
    ungrouped = sum(1 for row in rows if row["group_id"] == row["image_id"])
    if ungrouped:
        logger.warning("adapter %r: %d image(s) have no lesion_id: group_id = image_id for them", ADAPTER, ungrouped)
    return manifest_frame(rows, "label", f"adapter {ADAPTER!r} ({path})")
