"""Lesion instances and severity grades: what both data preparation and evaluation need.

An **instance map** sits beside each label map (manifest column ``instance_path``): an ``(H, W)``
integer image, 0 = background, 1..n = one annotated lesion each (uint16 PNG on disk). It must agree
with its label map: an instance's pixels are lesion pixels of one single type, and every lesion
pixel belongs to an instance (:func:`check_instances`). Without an instance map, lesions are the
8-connected components of each type's mask (:func:`components_per_type`), never of the union of
all types, so two touching lesions of different types stay two lesions.

**Grades** follow the Hayashi criterion for acne severity (lesions counted on a face): the grade
of a count is the number of thresholds strictly below it, so the default ``[5, 20, 50]`` gives
<= 5 -> 0 (mild), 6-20 -> 1 (moderate), 21-50 -> 2 (severe), > 50 -> 3 (very severe).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from pipeline.errors import DataError

HAYASHI_THRESHOLDS: tuple[int, ...] = (5, 20, 50)
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def grade_from_count(counts, thresholds: Sequence[float] = HAYASHI_THRESHOLDS) -> np.ndarray:
    """Grade of each lesion count: how many thresholds lie strictly below it (int64 array)."""
    thresholds = np.asarray(list(thresholds), dtype=float)
    if thresholds.size == 0 or np.any(np.diff(thresholds) <= 0):
        raise ValueError(f"grading thresholds must be a non-empty increasing list, got {thresholds.tolist()}")
    counts = np.asarray(counts, dtype=float)
    # side="left": a count equal to a threshold stays in the lower grade (5 lesions -> mild)
    return np.searchsorted(thresholds, counts, side="left").astype(np.int64)


def components_per_type(label_map: np.ndarray) -> np.ndarray:
    """Instance map of the 8-connected components of each lesion type's mask (int64).

    Instances are numbered type by type (label value 1 first), components in scan order.
    """
    label_map = np.asarray(label_map)
    instance_map = np.zeros(label_map.shape, dtype=np.int64)
    next_id = 0
    for value in np.unique(label_map):
        if value == 0:
            continue
        ids, count = ndimage.label(label_map == value, structure=EIGHT_CONNECTED)
        instance_map[ids > 0] = ids[ids > 0] + next_id
        next_id += count
    return instance_map


def check_instances(label_map: np.ndarray, instance_map: np.ndarray, where: str) -> None:
    """DataError naming ``where`` unless the instance map agrees with its label map."""
    label_map, instance_map = np.asarray(label_map), np.asarray(instance_map)
    if label_map.shape != instance_map.shape:
        raise DataError(f"{where}: instance map {instance_map.shape} and label map {label_map.shape} differ in shape")
    if instance_map.size and int(instance_map.min()) < 0:
        raise DataError(f"{where}: instance map has negative values")
    on_background = (instance_map > 0) & (label_map == 0)
    if on_background.any():
        row, col = np.argwhere(on_background)[0]
        raise DataError(f"{where}: {int(on_background.sum())} instance pixel(s) lie on label-map background "
                        f"(first at row {row}, column {col}, instance {int(instance_map[row, col])})")
    unassigned = (instance_map == 0) & (label_map > 0)
    if unassigned.any():
        row, col = np.argwhere(unassigned)[0]
        raise DataError(f"{where}: {int(unassigned.sum())} lesion pixel(s) belong to no instance "
                        f"(first at row {row}, column {col})")
    foreground = instance_map > 0
    ids, types = instance_map[foreground].astype(np.int64), label_map[foreground].astype(np.int64)
    if ids.size:
        low = np.full(int(ids.max()) + 1, np.iinfo(np.int64).max)
        high = np.full(int(ids.max()) + 1, -1)
        np.minimum.at(low, ids, types)
        np.maximum.at(high, ids, types)
        mixed = np.flatnonzero((high >= 0) & (low != high))
        if mixed.size:
            first = int(mixed[0])
            raise DataError(f"{where}: instance {first} spans lesion types {int(low[first])} and {int(high[first])}; "
                            f"an instance is one lesion of one type ({mixed.size} such instance(s))")


def grade_synthetic_rows(frame: pd.DataFrame, classes: Sequence[str], thresholds: Sequence[float]) -> pd.DataFrame:
    """Fill an empty ``grade`` of synthetic rows (``label_origin == "synthetic"``) from their
    ``n_<type>`` lesion counts with the dataset's thresholds: a generated image is annotated
    completely, so its count is its grade. Other rows are returned as they are."""
    columns = [f"n_{c}" for c in classes]
    if "label_origin" not in frame or not all(c in frame for c in columns):
        return frame
    frame = frame.copy()
    if "grade" not in frame:
        frame["grade"] = ""
    empty = frame["grade"].astype(str).isin(["", "nan", "None"])
    rows = empty & (frame["label_origin"] == "synthetic")
    if rows.any():
        totals = frame.loc[rows, columns].astype(int).sum(axis=1)
        frame["grade"] = frame["grade"].astype(object)
        frame.loc[rows, "grade"] = grade_from_count(totals, thresholds).tolist()
    return frame
