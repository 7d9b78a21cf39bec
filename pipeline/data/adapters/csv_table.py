"""Any CSV of image paths and labels -> classification manifest (adapter ``csv``).

The form most users already have: one row per image with its path and label, and optionally the
lesion or patient it belongs to, a fixed split, and metadata. Column names are mapped in params, so
the file needs no renaming.

Params:
    csv: the CSV file, relative to root
    image_column: column holding the image path, relative to ``image_dir`` or absolute (default "image")
    label_column: column holding the label (default "label"); values match class codes
        case-insensitively, or through ``label_map``
    group_column: column holding the lesion or patient id (recommended: images of one lesion or
        patient then stay in one split); without it ``group_id = image_id`` and a warning says so
    split_column: column fixing the split of a row: train / val / test, or empty for "the splitter
        decides"; any other value is a DataError naming the row
    id_column: column holding a unique image id (default: the image file's stem)
    image_dir: folder that relative image paths start from, relative to root (default ".")
    label_map: optional ``{value in the CSV: class code}``
    metadata: optional ``{manifest column: CSV column}`` for ``sex``, ``age``, ``site`` (per-subgroup
        figures in the report)
    source: value of the ``source`` column (default "csv")

Every bad row stops the build with a DataError naming the file, the line and the value: an empty or
unknown label, a missing image, a duplicated id, a group in two fixed splits.
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
    check_split,
    check_type_map,
    csv_row,
    listed,
    manifest_frame,
    manifest_path,
    parse_age,
    parse_params,
    read_csv,
    resolve,
)
from pipeline.data.manifest import SPLITS
from pipeline.errors import ConfigError, DataError

logger = logging.getLogger(__name__)
ADAPTER = "csv"
METADATA_COLUMNS = ("sex", "age", "site")


@dataclass(frozen=True)
class CsvParams:
    csv: str
    image_column: str = "image"
    label_column: str = "label"
    group_column: str | None = None
    split_column: str | None = None
    id_column: str | None = None
    image_dir: str = "."
    label_map: dict | None = None
    metadata: dict | None = None
    source: str = ADAPTER


def _label_lookup(classes: list[str], label_map: dict | None) -> dict[str, str]:
    lookup = {code.lower(): code for code in classes}
    if label_map:
        lookup.update({str(k).strip().lower(): v for k, v in check_type_map(label_map, classes, ADAPTER, "label_map").items()})
    return lookup


def _bad_rows(path: Path, mask: pd.Series, values: pd.Series, what: str) -> DataError:
    lines = [f"line {csv_row(i)} ({values[i]!r})" for i in values.index[mask]]
    return DataError(f"{path}: {what}: {listed(lines)}")


@ADAPTERS.register("csv")
def build(root: Path, classes: list[str], mask_root: Path, **params: Any) -> pd.DataFrame:
    """Classification manifest from a CSV of image paths and labels (see module docstring)."""
    options = parse_params(CsvParams, params, ADAPTER)
    classes = check_classes(classes, ADAPTER)
    metadata = dict(options.metadata or {})
    unknown = sorted(set(metadata) - set(METADATA_COLUMNS))
    if unknown:
        raise ConfigError(f"adapter {ADAPTER!r}: metadata names {unknown}; it maps {list(METADATA_COLUMNS)} to CSV columns")
    lookup = _label_lookup(classes, options.label_map)
    root = Path(root)
    path = resolve(options.csv, root)
    optional = [options.group_column, options.split_column, options.id_column, *metadata.values()]
    table = read_csv(path, [options.image_column, options.label_column, *[c for c in optional if c]], "label CSV")
    if table.empty:
        raise DataError(f"{path}: no rows, the manifest would be empty")

    images = table[options.image_column].str.strip()
    if (images == "").any():
        raise _bad_rows(path, images == "", images, f"empty {options.image_column!r}")
    labels_raw = table[options.label_column].str.strip()
    labels = labels_raw.str.lower().map(lookup)
    if labels.isna().any():
        raise _bad_rows(path, labels.isna(), labels_raw,
                        f"label(s) that match no class of {classes} (case-insensitive; or map them with label_map)")

    image_dir = resolve(options.image_dir, root)
    files = [resolve(value, image_dir) for value in images]
    missing = pd.Series([not f.is_file() for f in files], index=table.index)
    if missing.any():
        raise _bad_rows(path, missing, pd.Series([str(f) for f in files], index=table.index), "image file(s) not found")

    ids = (table[options.id_column].str.strip() if options.id_column
           else pd.Series([f.stem for f in files], index=table.index))
    duplicated = ids.duplicated(keep=False) | (ids == "")
    if duplicated.any():
        raise _bad_rows(path, duplicated, ids, "empty or duplicated image id(s) (ids must be unique; set id_column)")

    if options.group_column:
        groups = table[options.group_column].str.strip()
        if (groups == "").any():
            raise _bad_rows(path, groups == "", groups, f"empty {options.group_column!r} (every image needs its lesion or patient id)")
    else:
        groups = ids
        logger.warning("adapter %r: no group_column, so group_id = image_id; images of one lesion or patient "
                       "could land in different splits", ADAPTER)

    splits = pd.Series("", index=table.index)
    if options.split_column:
        raw = table[options.split_column].str.strip().str.lower()
        bad = ~raw.isin(["", *SPLITS])
        if bad.any():
            raise _bad_rows(path, bad, table[options.split_column], f"split value(s) not in {list(SPLITS)} or empty")
        splits = raw.map(lambda value: check_split(value, f"{path}"))

    frame = manifest_frame([
        {"image_id": ids[i], "image_path": manifest_path(files[n], root), "label": labels[i],
         "group_id": groups[i], "split": splits[i], "source": options.source, "label_origin": "expert",
         **{column: (parse_age(table.at[i, source]) if column == "age" else table.at[i, source].strip())
            for column, source in metadata.items()}}
        for n, i in enumerate(table.index)
    ], "label", f"adapter {ADAPTER!r} ({path})")
    # A group with two different fixed splits is a leak the splitter cannot repair.
    fixed = frame[frame["split"] != ""]
    leaking = fixed.groupby("group_id")["split"].nunique()
    leaking = leaking[leaking > 1]
    if len(leaking):
        raise DataError(f"{path}: group(s) {listed(list(leaking.index))} have rows in two fixed splits; "
                        "a lesion or patient must stay in one split")
    return frame
