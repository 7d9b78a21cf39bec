"""ISIC 2018 Task 3 ground truth -> classification manifest.

The official ground truth (Codella et al. 2019, arXiv:1902.03368) is one-hot CSVs
``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``; class columns are read by name (any order, ints or
floats), so a file with reordered columns gives the same labels. The training images are
HAM10000 (Tschandl et al. 2018), whose metadata gives the lesion of each image: pass it as
``metadata_csv`` so that ``group_id`` is the lesion, otherwise several images of one lesion
could land in different splits. Images without a lesion id keep ``group_id = image_id`` and a
warning says how many.

Params:
    ground_truth: list of ``{csv: path, split: null | train | val | test}``
    image_dir: folder of the images, relative to root (default ".")
    image_ext: image file extension (default ".jpg")
    metadata_csv: optional path or list of paths with ``image_id`` (or ``image``) and ``lesion_id``
        columns; ``dx_type``/``diagnosis_confirm_type``, ``age``, ``sex``, ``localization`` and
        ``dx`` are used when present (``dx`` is cross-checked against the ground truth)
    require_images: a ground-truth image with no file is a DataError (default true); false drops
        it with a logged count (e.g. to build a manifest from labels alone)
    source: value of the ``source`` column (default "isic2018")
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
    csv_row,
    listed,
    log_dropped,
    manifest_frame,
    manifest_path,
    parse_age,
    parse_params,
    read_csv,
    resolve,
)
from pipeline.errors import ConfigError, DataError

logger = logging.getLogger(__name__)
ADAPTER = "isic2018"
_CONFIRM_TYPE_COLUMNS = ("dx_type", "diagnosis_confirm_type")
_METADATA_USED = ("lesion_id", *_CONFIRM_TYPE_COLUMNS, "age", "sex", "localization")


@dataclass(frozen=True)
class Isic2018Params:
    ground_truth: list
    image_dir: str = "."
    image_ext: str = ".jpg"
    metadata_csv: str | list | None = None
    require_images: bool = True
    source: str = ADAPTER


def _ground_truth_entries(entries: list, root: Path) -> list[tuple[Path, str]]:
    if not entries:
        raise ConfigError(f"adapter {ADAPTER!r}: `ground_truth` must list at least one {{csv, split}} entry")
    parsed = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or "csv" not in entry or set(entry) - {"csv", "split"}:
            raise ConfigError(f"adapter {ADAPTER!r}: ground_truth entry {number} must be {{csv: path, split: ...}}, got {entry!r}")
        split = check_split(entry.get("split"), f"adapter {ADAPTER!r}, ground_truth entry {number}")
        parsed.append((resolve(entry["csv"], root), split))
    return parsed


def _class_columns(frame: pd.DataFrame, classes: list[str], path: Path) -> dict[str, str]:
    """CSV column -> class code, matched by name (case-insensitive); missing or extra -> DataError."""
    by_lower = {code.lower(): code for code in classes}
    columns = {column: by_lower.get(column.lower()) for column in frame.columns if column != "image"}
    unknown = [column for column, code in columns.items() if code is None]
    missing = [code for code in classes if code not in columns.values()]
    if unknown or missing:
        raise DataError(
            f"ground truth {path}: class column(s) missing {missing}, unknown {unknown}; "
            f"expected `image` plus one column per class {classes}"
        )
    return {column: code for column, code in columns.items() if code is not None}


def read_ground_truth(path: Path, classes: list[str]) -> pd.DataFrame:
    """One-hot ground truth -> frame ``image_id, label``; a row not exactly one-hot -> DataError."""
    frame = read_csv(path, ["image"], "ground truth")
    class_columns = _class_columns(frame, classes, path)
    values = frame[list(class_columns)].apply(pd.to_numeric, errors="coerce")
    one_hot = values.isin([0, 1]).all(axis=1) & (values.sum(axis=1) == 1)
    if not one_hot.all():
        index = one_hot.index[~one_hot][0]
        row = frame.loc[index, list(class_columns)].to_dict()
        raise DataError(
            f"ground truth {path}: line {csv_row(index)} (image {frame.at[index, 'image']!r}) is not one-hot "
            f"(exactly one 1, all others 0): {row}; {int((~one_hot).sum())} such row(s)"
        )
    ids = frame["image"].str.strip()
    if (ids == "").any():
        raise DataError(f"ground truth {path}: line {csv_row(ids.index[ids == ''][0])} has an empty image id")
    duplicated = ids[ids.duplicated()]
    if not duplicated.empty:
        raise DataError(f"ground truth {path}: image id {duplicated.iloc[0]!r} appears more than once (line {csv_row(duplicated.index[0])})")
    labels = values.idxmax(axis=1).map(class_columns)
    return pd.DataFrame({"image_id": ids, "label": labels, "ground_truth": str(path)})


def _first_repeated_id(frame: pd.DataFrame, file_column: str) -> tuple[str, list[str]] | None:
    """The first ``image_id`` that occurs more than once, with the files (``file_column``) it is in."""
    repeated = frame[frame["image_id"].duplicated(keep=False)]
    if repeated.empty:
        return None
    image_id = repeated["image_id"].iloc[0]
    return image_id, sorted(set(repeated.loc[repeated["image_id"] == image_id, file_column]))


def _read_metadata(paths: list[Path]) -> pd.DataFrame:
    """Metadata rows indexed by image id (first of ``image_id`` / ``image``)."""
    frames = []
    for path in paths:
        frame = read_csv(path, ["lesion_id"], "metadata")
        id_column = next((c for c in ("image_id", "image") if c in frame.columns), None)
        if id_column is None:
            raise DataError(f"metadata {path} lacks an `image_id` (or `image`) column; it has {list(frame.columns)}")
        frame = frame.rename(columns={id_column: "image_id"})
        frame["metadata"] = str(path)
        frames.append(frame)
    metadata = pd.concat(frames, ignore_index=True)
    repeated = _first_repeated_id(metadata, "metadata")
    if repeated is not None:
        image_id, files = repeated
        raise DataError(f"metadata: image id {image_id!r} appears more than once (in {files})")
    return metadata.set_index("image_id")


def _text(value: Any) -> str:
    """A metadata cell as text; a cell missing after the join (NaN) is empty."""
    return "" if pd.isna(value) else str(value)


def _metadata_fields(record: dict[str, Any], metadata_columns: list[str]) -> dict[str, Any]:
    """label_origin (how the diagnosis was confirmed), age, sex, site from the metadata row."""
    origin = next((_text(record[c]) for c in _CONFIRM_TYPE_COLUMNS if c in metadata_columns and _text(record[c])), "expert")
    fields: dict[str, Any] = {"label_origin": origin}
    if "age" in metadata_columns:
        fields["age"] = parse_age(_text(record["age"]))
    if "sex" in metadata_columns:
        fields["sex"] = _text(record["sex"])
    if "localization" in metadata_columns:
        fields["site"] = _text(record["localization"])
    return fields


def _check_dx(labels: pd.DataFrame, metadata: pd.DataFrame) -> None:
    """Where the metadata has a diagnosis it must agree with the ground truth."""
    if "dx" not in metadata.columns:
        return
    joined = labels.join(metadata[["dx", "metadata"]], on="image_id", how="inner")
    disagree = joined[joined["dx"].str.lower() != joined["label"].str.lower()]
    if not disagree.empty:
        row = disagree.iloc[0]
        raise DataError(
            f"image {row['image_id']!r}: ground truth {row['ground_truth']} says {row['label']} but metadata "
            f"{row['metadata']} says dx={row['dx']!r}; {len(disagree)} image(s) disagree"
        )


@ADAPTERS.register("isic2018")
def build(root: Path, classes: list[str], mask_root: Path, **params: Any) -> pd.DataFrame:
    """Classification manifest from ISIC 2018 Task 3 ground-truth CSVs (see module docstring)."""
    options = parse_params(Isic2018Params, params, ADAPTER)
    classes = check_classes(classes, ADAPTER)
    root = Path(root)

    parts = []
    for path, split in _ground_truth_entries(options.ground_truth, root):
        part = read_ground_truth(path, classes)
        part["split"] = split
        parts.append(part)
    labels = pd.concat(parts, ignore_index=True)
    repeated = _first_repeated_id(labels, "ground_truth")
    if repeated is not None:
        image_id, files = repeated
        raise DataError(f"image id {image_id!r} is in more than one ground-truth file: {files}")

    metadata = None
    if options.metadata_csv is not None:
        names = options.metadata_csv if isinstance(options.metadata_csv, list) else [options.metadata_csv]
        metadata = _read_metadata([resolve(name, root) for name in names])
        _check_dx(labels, metadata)

    metadata_columns = [] if metadata is None else [c for c in _METADATA_USED if c in metadata.columns]
    joined = labels if metadata is None else labels.join(metadata[metadata_columns], on="image_id")
    image_dir = resolve(options.image_dir, root)
    rows, missing, ungrouped = [], [], []
    for record in joined.to_dict("records"):
        image = image_dir / f"{record['image_id']}{options.image_ext}"
        if not image.is_file():
            missing.append(str(image))
            continue
        lesion_id = _text(record.get("lesion_id"))
        if not lesion_id:
            ungrouped.append(record["image_id"])
        rows.append({
            "image_id": record["image_id"],
            "image_path": manifest_path(image, root),
            "label": record["label"],
            "group_id": lesion_id or record["image_id"],
            "split": record["split"],
            "source": options.source,
            **_metadata_fields(record, metadata_columns),
        })

    if missing and options.require_images:
        raise DataError(f"{len(missing)} ground-truth image(s) have no file: {listed(missing)} (require_images: false drops them)")
    log_dropped(ADAPTER, len(missing), "ground-truth row(s) with no image file", missing)
    if ungrouped:
        logger.warning(
            "adapter %r: %d of %d image(s) have no lesion id (%s): group_id = image_id for them, so images of "
            "one lesion could land in different splits",
            ADAPTER, len(ungrouped), len(rows),
            "no metadata_csv given" if metadata is None else "not in metadata_csv",
        )
    return manifest_frame(rows, "label", f"adapter {ADAPTER!r}")
