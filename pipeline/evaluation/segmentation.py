"""Segmentation metrics from label maps → the ``metrics.json`` contract (``task="segmentation"``).

Label maps are 2-D integer arrays: 0 = background, ``i + 1`` = lesion type ``classes[i]``.

Two levels, each with its own rule (also written into metrics.json):

* **Pixels** (MONAI ``compute_dice`` / ``compute_iou``): Dice and IoU per image and lesion type.
  An image where a type is absent from both truth and prediction says nothing about that type and
  is left out of that type's mean (DICE_RULE). An image's Dice is the mean over the types it does
  count for; ``mean_dice`` is the mean over images with a percentile bootstrap CI over images.
* **Lesions**: a true lesion is one instance of the manifest's instance map (one per annotation);
  without one, an 8-connected component of one lesion type's mask (types never merge). Predicted
  lesions come from :func:`pipeline.evaluation.instances.predicted_instances` (per type, touching
  lesions split; SPLIT_RULE). A lesion's type is the majority label among its pixels (ties: the
  lower label). True and predicted lesions are matched one-to-one (MATCHING_RULE). Sensitivity of a type = true lesions of that type
  matched to a predicted lesion of the SAME type / true lesions of that type; PPV = predicted
  lesions of that type matched to a true lesion of the same type / predicted lesions of that type;
  ``detected_any_type`` = true lesions matched whatever the predicted type. Wilson intervals for
  these; F1 gets a bootstrap over images (lesions of an image resampled together).
* **Counts and grades**: lesions per image and type, predicted against annotated (MAE, Spearman),
  and the severity grade of each image from its lesion count (``grading``, GRADING_RULE).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import confusion_matrix, f1_score, mean_absolute_error

from pipeline.data.instances import HAYASHI_THRESHOLDS, check_instances, components_per_type
from pipeline.errors import DataError
from pipeline.evaluation.collapse import prediction_collapse
from pipeline.progress import progress
from pipeline.evaluation.classification import per_class_row, resolve_class_names
from pipeline import rundir
from pipeline.atomic import write_text
from pipeline.evaluation.instances import (
    SPLIT_RULE,
    annotated_grade_list,
    calibrated_counts,
    calibration_inputs,
    grading_metrics,
    predicted_instances,
    spearman,
)
from pipeline.evaluation.stats import bootstrap_estimates, bootstrap_mean, proportion

__all__ = [
    "DICE_RULE",
    "FALSE_LESION",
    "MATCHING_RULE",
    "MISSED",
    "compute_segmentation_metrics",
    "MACRO_DICE_RULE",
    "lesion_components",
    "macro_dice",
    "match_lesions",
    "pixel_scores",
    "write_segmentation_tables",
]

FALSE_LESION = "false lesion"  # confusion-matrix row: a predicted lesion with no true partner
MISSED = "missed"  # confusion-matrix column: a true lesion with no predicted partner

MATCHING_RULE = (
    "True lesions are the instances of the annotation's instance map (one per annotated lesion), or, "
    "without one, 8-connected components of each lesion type's mask; predicted lesions are "
    "separated per type and split where they touch (split_rule). Each is typed by the majority "
    "label of its pixels. A true and a predicted lesion are eligible for matching when their IoU "
    ">= iou_threshold; among eligible pairs, the one-to-one assignment with the most matched pairs, "
    "and among those the largest total IoU, is found (Hungarian algorithm, "
    "scipy.optimize.linear_sum_assignment). Unassigned true lesions are "
    "missed, unassigned predicted lesions are false lesions. A match counts for a type's sensitivity "
    "and PPV only when both lesions have that type; detected_any_type ignores the type."
)
# Why an annotated lesion went unmatched (lesions.csv column ``miss``; per type in metrics.json
# ``per_class.<type>.missed_by_cause``): what a reader needs to tell a detector that does not see a
# lesion from one that sees it but draws it into a neighbour (dense faces) or draws it badly.
MISS_CAUSES = {
    "not_found": "no predicted lesion pixel on it",
    "merged": "it lies (partly) under a predicted lesion that was matched to another annotated lesion: "
              "touching lesions drawn as one",
    "poor_overlap": "only predicted lesions that matched nothing overlap it, each below the IoU threshold",
}

DICE_RULE = (
    "Dice and IoU per image and lesion type (MONAI). An image where a type is absent from both truth "
    "and prediction is excluded from that type's mean; a type predicted but absent from the truth "
    "(or the reverse) scores 0. An image's Dice is the mean over its counted types; images with no "
    "lesion in truth or prediction are excluded from mean_dice."
)

MACRO_DICE_RULE = (
    "macro_dice is the mean over lesion types of each type's mean Dice (per_class dice: over the images "
    "where the type is in the truth or the prediction, so a type predicted where none is annotated "
    "scores 0). Every type weighs the same, so a model that finds only the large common types cannot "
    "score well. The trainer selects its checkpoint on the validation split by this same function."
)


@dataclass(frozen=True)
class Components:
    """Lesions of one label map: ``ids`` map (0 = background, 1..n), type and area of each, and the
    id each had in its instance map (``source_ids``)."""

    ids: np.ndarray
    types: np.ndarray  # label value (1..K) of component j at index j - 1
    areas: np.ndarray
    source_ids: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self.types)


# --------------------------------------------------------------------------- lesions
def lesion_components(label_map: np.ndarray, instance_map: np.ndarray | None = None) -> Components:
    """Lesions of a label map, each typed by its majority label: the instances of ``instance_map``
    (renumbered 1..n in id order), or without one the 8-connected components of each type's mask."""
    label_map = np.asarray(label_map)
    instance_map = components_per_type(label_map) if instance_map is None else np.asarray(instance_map, dtype=np.int64)
    source_ids = np.unique(instance_map[instance_map > 0])
    count = len(source_ids)
    ids = np.zeros(label_map.shape, dtype=np.int64)
    foreground = instance_map > 0
    ids[foreground] = np.searchsorted(source_ids, instance_map[foreground]) + 1
    n_labels = int(label_map.max(initial=0)) + 1
    # pixel counts per (lesion, label value); row 0 is the background
    per_label = np.bincount(ids.ravel() * n_labels + label_map.ravel().astype(np.int64),
                            minlength=(count + 1) * n_labels).reshape(count + 1, n_labels)
    types = per_label[1:, 1:].argmax(axis=1) + 1 if count and n_labels > 1 else np.zeros(count, dtype=np.int64)
    areas = per_label[1:].sum(axis=1)
    return Components(ids=ids, types=types.astype(np.int64), areas=areas.astype(np.int64),
                      source_ids=source_ids.astype(np.int64))


def _iou_matrix(true: Components, pred: Components) -> np.ndarray:
    """IoU of every (true lesion, predicted lesion) pair, shape (n_true, n_pred)."""
    pairs = np.bincount(true.ids.ravel() * (pred.count + 1) + pred.ids.ravel(),
                        minlength=(true.count + 1) * (pred.count + 1))
    intersection = pairs.reshape(true.count + 1, pred.count + 1)[1:, 1:]
    union = true.areas[:, None] + pred.areas[None, :] - intersection
    return intersection / np.maximum(union, 1)


def match_lesions(
    true_map: np.ndarray,
    pred_map: np.ndarray,
    iou_threshold: float = 0.1,
    *,
    classes: list[str] | None = None,
    true_instances: np.ndarray | None = None,
    pred_instances: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Match true and predicted lesions one-to-one; one row per lesion pair or unmatched lesion.

    Rule (also ``MATCHING_RULE``): lesions are the instances of ``true_instances`` /
    ``pred_instances`` (instance maps; without one, the 8-connected components of each type's mask;
    the evaluate stage passes :func:`~pipeline.evaluation.instances.predicted_instances` of the
    prediction), typed by majority label; pairs with IoU >= ``iou_threshold`` are eligible, and the one-to-one assignment with the
    most eligible pairs, ties broken by the largest total IoU, is taken
    (``scipy.optimize.linear_sum_assignment``). Counting matches first means a small predicted
    lesion inside a large true one does not cost a neighbouring true lesion its only partner.
    Unassigned true lesions are missed (``pred_type`` None), unassigned predicted lesions are false
    lesions (``true_type`` None).

    Rows: ``lesion_id`` (0.. in this image), ``instance_id`` (the true lesion's id in its instance
    map, or 0.. per type component; None for a false lesion), ``true_type``, ``pred_type`` (label values, or codes
    from ``classes`` when given), ``matched``, ``iou`` (of the matched pair; for an unmatched lesion
    its largest IoU with any lesion of the other map, 0 if it touches none), ``true_area``,
    ``pred_area`` (pixels; None for the absent side), ``miss`` (why an unmatched true lesion was missed,
    a key of ``MISS_CAUSES``; None on the other rows). Order: true lesions in component order, then
    false lesions.
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    true_map, pred_map = np.asarray(true_map), np.asarray(pred_map)
    if true_map.shape != pred_map.shape:
        raise ValueError(f"true and predicted maps differ in shape: {true_map.shape} vs {pred_map.shape}")
    true, pred = lesion_components(true_map, true_instances), lesion_components(pred_map, pred_instances)
    iou = _iou_matrix(true, pred)
    eligible = iou >= iou_threshold
    # each eligible pair is worth more than any total IoU (<= min(n_true, n_pred)), so the
    # assignment maximises the number of matches first and the total IoU second
    worth = np.where(eligible, min(true.count, pred.count) + 1 + iou, 0.0)
    partner_of_true: dict[int, int] = {}
    for t, p in zip(*linear_sum_assignment(worth, maximize=True)):
        if eligible[t, p]:
            partner_of_true[int(t)] = int(p)

    name = _type_namer(classes)
    rows: list[dict[str, Any]] = []
    for t in range(true.count):
        p = partner_of_true.get(t)
        rows.append({
            "instance_id": int(true.source_ids[t]),
            "true_type": name(true.types[t]),
            "pred_type": None if p is None else name(pred.types[p]),
            "matched": p is not None,
            "iou": float(iou[t, p]) if p is not None else _best_overlap(iou[t, :]),
            "true_area": int(true.areas[t]),
            "pred_area": None if p is None else int(pred.areas[p]),
            "miss": None,
        })
    matched_preds = set(partner_of_true.values())
    for t, row in enumerate(rows):
        if not row["matched"]:
            overlapping = np.flatnonzero(iou[t, :] > 0)
            row["miss"] = ("not_found" if overlapping.size == 0 else
                           "merged" if matched_preds.intersection(overlapping.tolist()) else "poor_overlap")
    for p in range(pred.count):
        if p not in matched_preds:
            rows.append({"instance_id": None, "true_type": None, "pred_type": name(pred.types[p]), "matched": False,
                         "iou": _best_overlap(iou[:, p]), "true_area": None, "pred_area": int(pred.areas[p]),
                         "miss": None})
    return [{"lesion_id": i, **row} for i, row in enumerate(rows)]


def match_counts_by_area(
    true: Components, pred_map: np.ndarray, pred_instances: np.ndarray, min_areas: Sequence[int], iou_threshold: float = 0.1
) -> np.ndarray:
    """(matched, true, predicted) lesion counts for each minimum lesion area, shape (len(min_areas), 3):
    what :func:`match_lesions` counts after removing predicted lesions whose 8-connected lesion-union
    component is smaller than the area, for every area at once (choosing the post-processing on
    validation asks for a grid of them).

    Removing small components drops whole predicted instances and leaves the others' pixels and
    types as they were, so each area's IoU matrix is a column subset of the full one, and the number
    of matches of ``match_lesions``' assignment (most matches first) is the maximum bipartite matching
    of its eligible pairs (``scipy.sparse.csgraph.maximum_bipartite_matching``). ``true``: the
    annotation's :func:`lesion_components`, computed once per image.
    """
    pred = lesion_components(pred_map, pred_instances)
    eligible = _iou_matrix(true, pred) >= iou_threshold
    union, _ = ndimage.label(np.asarray(pred_map) > 0, structure=np.ones((3, 3)))
    union_area = np.bincount(union.ravel())
    union_area[0] = 0
    # every pixel of a predicted instance lies in one union component: any pixel gives its area
    instance_union_area = np.zeros(pred.count + 1, dtype=np.int64)
    instance_union_area[pred.ids.ravel()] = union_area[union.ravel()]
    instance_union_area = instance_union_area[1:]
    counts = np.zeros((len(min_areas), 3), dtype=np.int64)
    for a, area in enumerate(min_areas):
        keep = instance_union_area >= max(int(area), 1)
        kept = eligible[:, keep]
        matched = 0
        if kept.any():
            matched = int((maximum_bipartite_matching(csr_matrix(kept), perm_type="column") >= 0).sum())
        counts[a] = (matched, true.count, int(keep.sum()))
    return counts


def _best_overlap(ious: np.ndarray) -> float:
    return float(ious.max(initial=0.0))


def _type_namer(classes: list[str] | None):
    if classes is None:
        return lambda value: int(value)
    return lambda value: classes[int(value) - 1]


# --------------------------------------------------------------------------- pixels
def pixel_scores(true_map: np.ndarray, pred_map: np.ndarray, n_types: int) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU per lesion type for one image (MONAI), NaN where the type is in neither map.

    Only pixels that are foreground in at least one map are passed to MONAI, as a 1-D image: a
    pixel that is background in both adds nothing to any lesion type's overlap or sizes, so the
    scores are unchanged, and MONAI's per-channel loop runs on a few percent of a photo.
    """
    foreground = (np.asarray(true_map) > 0) | (np.asarray(pred_map) > 0)
    if not foreground.any():
        return np.full(n_types, np.nan), np.full(n_types, np.nan)
    # torch and MONAI imported here: MONAI's package import loads all of it (about 2.5 s of CPU), and
    # a classification run's evaluation needs neither
    import torch
    from monai.metrics import compute_dice, compute_iou
    from monai.networks.utils import one_hot

    true_t = torch.as_tensor(np.asarray(true_map, dtype=np.int64)[foreground])[None, None]
    pred_t = torch.as_tensor(np.asarray(pred_map, dtype=np.int64)[foreground])[None, None]

    y = one_hot(true_t, n_types + 1, dtype=torch.float64)
    y_pred = one_hot(pred_t, n_types + 1, dtype=torch.float64)
    # ignore_empty=False: a type absent from the truth scores 0 when predicted (1 when not; masked below)
    dice = compute_dice(y_pred, y, include_background=False, ignore_empty=False)[0].numpy().copy()
    iou = compute_iou(y_pred, y, include_background=False, ignore_empty=False)[0].numpy().copy()
    absent = (y.sum(dim=2) + y_pred.sum(dim=2))[0, 1:].numpy() == 0
    dice[absent] = np.nan
    iou[absent] = np.nan
    return dice, iou


def macro_dice(dice_table: np.ndarray) -> float:
    """Mean over lesion types of the per-type mean Dice; ``dice_table`` is (images, types) from
    :func:`pixel_scores`, NaN where a type is in neither map. Types with no scored image are left
    out; NaN when no type has one (MACRO_DICE_RULE)."""
    table = np.atleast_2d(np.asarray(dice_table, dtype=float))
    scored = np.isfinite(table)
    if not scored.any():
        return math.nan
    sums = np.where(scored, table, 0.0).sum(axis=0)
    counts = scored.sum(axis=0)
    per_type = sums[counts > 0] / counts[counts > 0]
    return float(per_type.mean())


# --------------------------------------------------------------------------- main entry
def compute_segmentation_metrics(
    samples: Iterable[tuple[str, np.ndarray, np.ndarray]],
    classes: list[str],
    class_names: dict[str, str] | None = None,
    *,
    experiment: str = "",
    seed: int | None = None,
    iou_threshold: float = 0.1,
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    split_touching: bool = True,
    min_peak_distance: int = 3,
    min_neck_depth: float = 1.0,
    grade_thresholds: Sequence[float] = HAYASHI_THRESHOLDS,
    annotated_grades: Mapping[str, int | None] | None = None,
    count_calibration: Mapping[str, Any] | None = None,
    lesion_masses: Mapping[str, float] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Pixel- and lesion-level metrics over ``(image_id, true_map, pred_map[, true_instances])``
    samples (``true_instances``: the annotation's instance map, or None for components per type).

    Returns ``(metrics, lesions, per_image)``: the metrics.json dict (NaN where undefined), the
    lesion table (``image_id`` + :func:`match_lesions` rows, types as class codes) and one row per
    image (``image_id``, ``dice``, ``iou``, ``dice_<TYPE>``, ``n_true[_<TYPE>]``, ``n_pred[_<TYPE>]``,
    ``grade_annotated`` (empty when none), ``grade_true`` (the reference), ``grade_pred``).
    Predicted lesions come from :func:`predicted_instances` with ``split_touching``,
    ``min_peak_distance`` and ``min_neck_depth``; grades use ``grade_thresholds`` and
    ``annotated_grades`` (image_id -> grade or None), from the count ``count_calibration`` maps
    the lesions found (or, for a calibration fitted on them, the ``lesion_masses``: image_id -> mass,
    per-image column ``lesion_mass``) to (fitted on validation; per-image column ``n_graded``).
    ``samples`` may be a generator: maps are read once and not kept.
    """
    classes = list(classes)
    _check_class_list(classes)
    names = resolve_class_names(classes, class_names)
    per_image_rows, lesion_rows, dice_rows, iou_rows = [], [], [], []
    seen: set[str] = set()
    split = dict(split_touching=split_touching, min_peak_distance=min_peak_distance, min_neck_depth=min_neck_depth)
    for sample in progress(samples, "evaluating", unit="image"):
        image_id, true_map, pred_map = sample[:3]
        true_instances = sample[3] if len(sample) > 3 else None
        image_id = str(image_id)
        if image_id in seen:
            raise DataError(f"segmentation evaluation: image_id {image_id!r} appears twice")
        seen.add(image_id)
        true_map = _checked_map(true_map, image_id, "true", len(classes))
        pred_map = _checked_map(pred_map, image_id, "predicted", len(classes))
        if true_map.shape != pred_map.shape:
            raise DataError(f"image {image_id!r}: true map {true_map.shape} and predicted map "
                            f"{pred_map.shape} differ in shape")
        if true_instances is not None:
            check_instances(true_map, true_instances, f"image {image_id!r}")
        dice, iou = pixel_scores(true_map, pred_map, len(classes))
        lesions = match_lesions(true_map, pred_map, iou_threshold, classes=classes, true_instances=true_instances,
                                pred_instances=predicted_instances(pred_map, **split))
        dice_rows.append(dice)
        iou_rows.append(iou)
        lesion_rows.extend({"image_id": image_id, **row} for row in lesions)
        per_image_rows.append(_per_image_row(image_id, dice, iou, lesions, classes))
    if not per_image_rows:
        raise DataError("segmentation evaluation: no images to evaluate")

    dice_table, iou_table = np.vstack(dice_rows), np.vstack(iou_rows)
    lesions = _lesion_frame(lesion_rows)
    per_image = pd.DataFrame(per_image_rows)
    metrics = _metrics(classes, names, dice_table, iou_table, lesions, per_image,
                       n_bootstrap=n_bootstrap, bootstrap_seed=bootstrap_seed)
    annotated = annotated_grade_list(per_image["image_id"].tolist(), annotated_grades)
    masses = None
    if lesion_masses is not None:
        missing = [i for i in per_image["image_id"] if i not in lesion_masses]
        if missing:
            raise DataError(f"lesion masses: no value for {len(missing)} image(s), e.g. {missing[0]!r}")
        masses = per_image["image_id"].map(lesion_masses).astype(float).to_numpy()
        per_image["lesion_mass"] = masses
    grading, reference, predicted = grading_metrics(per_image["n_true"], per_image["n_pred"], annotated,
                                                    grade_thresholds, n_bootstrap=n_bootstrap,
                                                    bootstrap_seed=bootstrap_seed,
                                                    count_calibration=count_calibration, lesion_masses=masses)
    if count_calibration:
        per_image["n_graded"] = calibrated_counts(calibration_inputs(per_image["n_pred"], masses, count_calibration),
                                                  count_calibration)
    per_image["grade_annotated"] = pd.Series(annotated, dtype=object)  # None (empty in CSV): not annotated
    per_image["grade_true"], per_image["grade_pred"] = reference, predicted
    metrics = {"task": "segmentation", "experiment": experiment, "seed": seed, "classes": classes,
               "class_names": names, "n_images": len(per_image), "iou_threshold": iou_threshold,
               "matching_rule": MATCHING_RULE, "split_rule": SPLIT_RULE, "lesion_split": split,
               "dice_rule": DICE_RULE, **metrics, "grading": grading,
               "bootstrap": {"n_resamples": n_bootstrap, "seed": bootstrap_seed, "method": "percentile",
                             "unit": "image"}}
    return metrics, lesions, per_image


def _check_class_list(classes: list[str]) -> None:
    if not classes:
        raise DataError("segmentation class list is empty: it must name the lesion types")
    if len(set(classes)) != len(classes):
        raise DataError(f"segmentation class list has duplicates: {classes}")


def _checked_map(label_map: np.ndarray, image_id: str, which: str, n_types: int) -> np.ndarray:
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise DataError(f"image {image_id!r}: {which} label map must be 2-D, got shape {label_map.shape}")
    if not (np.issubdtype(label_map.dtype, np.integer) or label_map.dtype == bool):
        raise DataError(f"image {image_id!r}: {which} label map must hold integers, got {label_map.dtype}")
    label_map = label_map.astype(np.int64)
    if label_map.size and (label_map.min() < 0 or label_map.max() > n_types):
        raise DataError(f"image {image_id!r}: {which} label map has values outside 0..{n_types} "
                        f"(0 = background, 1..{n_types} = lesion types): {sorted(np.unique(label_map))[:10]}")
    return label_map


def _per_image_row(image_id: str, dice: np.ndarray, iou: np.ndarray, lesions: list[dict[str, Any]],
                   classes: list[str]) -> dict[str, Any]:
    true_types = [r["true_type"] for r in lesions if r["true_type"] is not None]
    pred_types = [r["pred_type"] for r in lesions if r["pred_type"] is not None]
    row: dict[str, Any] = {"image_id": image_id, "dice": _mean_or_nan(dice), "iou": _mean_or_nan(iou)}
    row.update({f"dice_{c}": float(d) for c, d in zip(classes, dice)})
    row.update({"n_true": len(true_types), "n_pred": len(pred_types)})
    for c in classes:
        row[f"n_true_{c}"] = true_types.count(c)
        row[f"n_pred_{c}"] = pred_types.count(c)
    return row


def _mean_or_nan(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _lesion_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    columns = ["image_id", "lesion_id", "true_type", "pred_type", "matched", "iou", "true_area", "pred_area",
               "instance_id", "miss"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({"lesion_id": "int64", "instance_id": "Int64", "matched": bool, "iou": float,
                         "true_area": "Int64", "pred_area": "Int64",
                         "true_type": object, "pred_type": object, "miss": object})


# --------------------------------------------------------------------------- aggregation
def _metrics(classes: list[str], names: dict[str, str], dice: np.ndarray, iou: np.ndarray,
             lesions: pd.DataFrame, per_image: pd.DataFrame, *, n_bootstrap: int,
             bootstrap_seed: int) -> dict[str, Any]:
    none = len(classes)  # code for "no lesion on this side" (false lesion row / missed column)
    code = {c: i for i, c in enumerate(classes)}
    true_codes = lesions["true_type"].map(code).fillna(none).to_numpy(dtype=np.int64)
    pred_codes = lesions["pred_type"].map(code).fillna(none).to_numpy(dtype=np.int64)
    counts = confusion_matrix(true_codes, pred_codes, labels=np.arange(none + 1)) if len(lesions) \
        else np.zeros((none + 1, none + 1), dtype=np.int64)
    f1s = _lesion_f1(lesions, true_codes, pred_codes, per_image["image_id"].tolist(), len(classes),
                     n_bootstrap, bootstrap_seed)
    unmatched = lesions[lesions["true_type"].notna() & ~lesions["matched"]]
    missed_causes = {t: group.value_counts().to_dict() for t, group in unmatched.groupby("true_type")["miss"]}

    per_class = {}
    for i, c in enumerate(classes):
        support, predicted, correct = int(counts[i].sum()), int(counts[:, i].sum()), int(counts[i, i])
        per_class[c] = {
            "name": names[c],
            "support": support,
            "predicted": predicted,
            "sensitivity": proportion(correct, support),
            "ppv": proportion(correct, predicted),
            "f1": f1s[i],
            "detected_any_type": proportion(support - int(counts[i, none]), support),
            "dice": bootstrap_mean(dice[:, i], n_bootstrap, bootstrap_seed),
            "iou": bootstrap_mean(iou[:, i], n_bootstrap, bootstrap_seed),
            "count_error": _count_error(per_image[f"n_true_{c}"], per_image[f"n_pred_{c}"]),
            # the type's unmatched annotated lesions (the confusion matrix's "missed" column), by cause
            "missed_by_cause": {cause: int(missed_causes.get(c, {}).get(cause, 0)) for cause in MISS_CAUSES},
            "most_confused_with": [{"class": classes[j], "count": int(counts[i, j])}
                                   for j in np.argsort(-counts[i, :none], kind="stable")
                                   if j != i and counts[i, j] > 0],
        }
    n_true, n_pred = int(counts[:none].sum()), int(counts[:, :none].sum())
    n_matched = int(counts[:none, :none].sum())
    return {
        "mean_dice": {**bootstrap_mean(per_image["dice"], n_bootstrap, bootstrap_seed),
                      "excluded_images": int(per_image["dice"].isna().sum())},
        "macro_dice": {**bootstrap_estimates(lambda rows: [macro_dice(rows)], [dice], n_bootstrap,
                                             bootstrap_seed)[0], "rule": MACRO_DICE_RULE},
        "mean_iou": {**bootstrap_mean(per_image["iou"], n_bootstrap, bootstrap_seed),
                     "excluded_images": int(per_image["iou"].isna().sum())},
        "lesion_detection": {"sensitivity": proportion(n_matched, n_true), "ppv": proportion(n_matched, n_pred),
                             "rule": "matched regardless of type"},
        "lesion_count_error": {**_count_error(per_image["n_true"], per_image["n_pred"]),
                               "spearman": spearman(per_image["n_true"], per_image["n_pred"])},
        "per_class": per_class,
        "collapse": prediction_collapse(classes, [per_class[c]["support"] for c in classes],
                                        [per_class[c]["predicted"] for c in classes], unit="lesion"),
        "confusion_matrix": {"labels": classes, "row_labels": [*classes, FALSE_LESION],
                             "col_labels": [*classes, MISSED], "counts": counts.tolist(),
                             "rows": "true lesion type", "columns": "predicted lesion type"},
    }


def _count_error(true_counts: pd.Series, pred_counts: pd.Series) -> dict[str, float]:
    """Per-image lesion count error: mean absolute and mean signed (predicted - true)."""
    return {"mae": float(mean_absolute_error(true_counts, pred_counts)),
            "mean_signed": float(np.mean(pred_counts.to_numpy() - true_counts.to_numpy()))}


def _lesion_f1(lesions: pd.DataFrame, true_codes: np.ndarray, pred_codes: np.ndarray, image_ids: list[str],
               n_types: int, n_bootstrap: int, bootstrap_seed: int) -> list[dict[str, Any]]:
    """Lesion-level F1 per type (scikit-learn), bootstrapped by resampling whole images."""
    rows_of_image = lesions.groupby("image_id", sort=False).indices
    true_by_image = [true_codes[rows_of_image.get(i, [])] for i in image_ids]
    pred_by_image = [pred_codes[rows_of_image.get(i, [])] for i in image_ids]
    labels = np.arange(n_types)

    def statistic(image_index: np.ndarray) -> np.ndarray:
        y_true = np.concatenate([true_by_image[i] for i in image_index]).astype(np.int64)
        y_pred = np.concatenate([pred_by_image[i] for i in image_index]).astype(np.int64)
        if y_true.size == 0:
            return np.full(n_types, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
        return np.where(np.isin(labels, y_true), f1, np.nan)  # no F1 for a type without true lesions

    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):  # codes built above
        return bootstrap_estimates(statistic, [np.arange(len(image_ids))], n_bootstrap, bootstrap_seed)


# --------------------------------------------------------------------------- tables
_SEGMENTATION_RATES = ("sensitivity", "ppv", "f1", "detected_any_type", "dice", "iou")


def write_segmentation_tables(
    metrics: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    lesions: pd.DataFrame | None = None,
    per_image: pd.DataFrame | None = None,
) -> list[Path]:
    """Write confusion_matrix.csv (lesions) and per_class.csv from ``metrics``, and lesions.csv /
    per_image.csv when those tables are given. Read from the metrics, never recomputed; atomic."""
    out_dir = Path(out_dir)
    block = metrics["confusion_matrix"]
    counts = pd.DataFrame(block["counts"], index=pd.Index(block["row_labels"], name="true"),
                          columns=block["col_labels"])
    rows = []
    for code in metrics["classes"]:
        entry = metrics["per_class"][code]
        row = per_class_row(code, entry, _SEGMENTATION_RATES)
        row.update({"count_mae": entry["count_error"]["mae"],
                    "count_mean_signed": entry["count_error"]["mean_signed"]})
        rows.append(row)
    per_class = pd.DataFrame(rows).astype({m: float for m in _SEGMENTATION_RATES})
    written = [write_text(out_dir / rundir.CONFUSION_MATRIX, counts.to_csv()),
               write_text(out_dir / rundir.PER_CLASS, per_class.to_csv(index=False))]
    if lesions is not None:
        written.append(write_text(out_dir / rundir.LESIONS, lesions.to_csv(index=False)))
    if per_image is not None:
        written.append(write_text(out_dir / rundir.PER_IMAGE, per_image.to_csv(index=False)))
    return written
