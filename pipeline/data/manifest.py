"""The manifest: one row per image, the contract between data preparation and every later stage.

Rows are checked against ``pipeline/schemas/manifest.schema.yaml``; the rules that span rows
(unique image ids, known labels, one split per group) are checked here. Every error names the
manifest file and the offending row(s).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import jsonschema
import pandas as pd
import yaml

from pipeline.atomic import write_csv
from pipeline.errors import DataError

SPLITS = ("train", "val", "test")
ID_COLUMNS = ("image_id", "image_path", "label", "mask_path", "instance_path", "group_id", "split", "source",
              "label_origin", "sex", "site", "grade")
MAX_LISTED = 5


def _row_schema() -> dict:
    return yaml.safe_load(resources.files("pipeline.schemas").joinpath("manifest.schema.yaml").read_text())


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    try:
        frame = pd.read_csv(path, dtype={c: str for c in ID_COLUMNS}, keep_default_na=False, na_values={"age": [""]})
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV manifest: {exc}") from None
    frame.attrs["source"] = str(path)
    return frame


def write_manifest(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write atomically, so a crash never leaves a truncated manifest that looks complete."""
    return write_csv(frame, path)


def _rows(frame: pd.DataFrame, mask: pd.Series) -> str:
    """Human-readable row numbers (1-based data rows, as a spreadsheet shows them minus the header)."""
    rows = [str(i + 1) for i in frame.index[mask][:MAX_LISTED]]
    more = int(mask.sum()) - len(rows)
    return ", ".join(rows) + (f" (+{more} more)" if more > 0 else "")


def validate_manifest(
    frame: pd.DataFrame,
    *,
    task: str,
    classes: list[str],
    require_split: bool = False,
    root: Path | None = None,
    mask_root: Path | None = None,
    check_files: bool = False,
) -> pd.DataFrame:
    """Check a manifest; raise DataError naming the file and row on the first kind of problem found."""
    source = frame.attrs.get("source", "manifest")
    target = "label" if task == "classification" else "mask_path"
    required = ["image_id", "image_path", target, "group_id", "split"]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; a {task} manifest needs {required}")
    if frame.empty:
        raise DataError(f"{source}: the manifest has no rows")

    validator = jsonschema.Draft202012Validator(_row_schema())
    known = [c for c in frame.columns if c in validator.schema["properties"]]
    for number, row in enumerate(frame[known].to_dict("records"), start=1):
        clean = {k: v for k, v in row.items() if not (isinstance(v, float) and pd.isna(v))}
        clean = {k: v for k, v in clean.items() if not (k in {"label", "mask_path"} and k != target)}
        error = jsonschema.exceptions.best_match(validator.iter_errors(clean))
        if error is not None:
            field = "/".join(map(str, error.absolute_path)) or "row"
            raise DataError(f"{source}: row {number} ({row.get('image_id')!r}) fails the manifest schema at {field}: {error.message}")

    duplicated = frame["image_id"].duplicated(keep=False)
    if duplicated.any():
        ids = sorted(set(frame.loc[duplicated, "image_id"]))[:MAX_LISTED]
        raise DataError(f"{source}: duplicate image_id {ids} at rows {_rows(frame, duplicated)}")

    if task == "classification":
        unknown = ~frame["label"].isin(classes)
        if unknown.any():
            values = sorted(set(frame.loc[unknown, "label"]))[:MAX_LISTED]
            raise DataError(f"{source}: unknown label(s) {values} at rows {_rows(frame, unknown)}; the classes are {classes}")

    if require_split:
        unsplit = ~frame["split"].isin(SPLITS)
        if unsplit.any():
            raise DataError(f"{source}: rows {_rows(frame, unsplit)} have no split; run `pipeline split` first")
    assigned = frame[frame["split"] != ""]
    splits_per_group = assigned.groupby("group_id")["split"].nunique()
    leaking = splits_per_group[splits_per_group > 1]
    if not leaking.empty:
        group = leaking.index[0]
        where = sorted(set(assigned.loc[assigned["group_id"] == group, "split"]))
        raise DataError(
            f"{source}: group {group!r} (a lesion or patient) appears in splits {where}; "
            f"{len(leaking)} group(s) leak across splits. Split by group, never by image."
        )

    if check_files:
        check_files_exist(frame, root=root, mask_root=mask_root if task == "segmentation" else None, source=source)
    return frame


def resolve(path: str, root: Path) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(root) / candidate


def check_files_exist(frame: pd.DataFrame, *, root: Path | None, mask_root: Path | None, source: str) -> None:
    columns = [("image_path", root)] + ([("mask_path", mask_root)] if mask_root is not None else [])
    if mask_root is not None and "instance_path" in frame.columns:
        columns.append(("instance_path", mask_root))
    for column, base in columns:
        for number, value in enumerate(frame[column], start=1):
            if column == "instance_path" and (value == "" or value is None or (isinstance(value, float) and pd.isna(value))):
                continue  # optional per row
            if not Path(value).is_absolute() and os.path.normpath(value).split(os.sep)[0] == "..":
                # a relative path is read under its root; '../' out of it is a manifest error (or an
                # attack), never followed. An absolute path is an explicit choice and is read as is.
                raise DataError(f"{source}: row {number}: {column} {value!r} leaves its root {base}; "
                                "give a path inside the root, or an absolute path")
            path = resolve(value, base or Path("."))
            if not path.is_file():
                raise DataError(f"{source}: row {number}: {column} {path} does not exist")


def class_counts(frame: pd.DataFrame, classes: list[str], split: str | None = None) -> list[int]:
    """Images per class (classification), in class-list order."""
    rows = frame if split is None else frame[frame["split"] == split]
    counts = rows["label"].value_counts()
    return [int(counts.get(c, 0)) for c in classes]
