"""Lesion instances for evaluation: predicted lesions from a label map, reference lesions from the
manifest's instance maps, and severity grading from lesion counts.

The predict stage writes label maps only; :func:`predicted_instances` is the one place where a
predicted label map becomes lesions. Each lesion type is separated on its own (connected
components of that type's mask, never of the union of all types), and lesions of one type that
touch are split at their necks: peaks of the distance transform seed a watershed
(``skimage.segmentation.watershed``), as in the classical nuclei-splitting recipe.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.stats import spearmanr
from skimage.morphology import disk, h_maxima, local_maxima
from skimage.segmentation import watershed
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from pipeline.data.instances import (
    EIGHT_CONNECTED,
    HAYASHI_THRESHOLDS,
    check_instances,
    components_per_type,
    grade_from_count,
)
from pipeline import rundir
from pipeline.data.io import read_instance_map, read_label_map
from pipeline.data.manifest import read_manifest, resolve
from pipeline.errors import DataError
from pipeline.evaluation.stats import bootstrap_estimates, proportion

__all__ = [
    "COUNT_CALIBRATIONS",
    "GRADING_RULE",
    "SPLIT_RULE",
    "COUNT_SOURCES",
    "calibrated_counts",
    "calibration_inputs",
    "fit_count_calibration",
    "grade_labels",
    "grading_metrics",
    "predicted_instances",
    "read_reference",
    "reference_table",
    "segmentation_inputs",
]

SPLIT_RULE = (
    "Predicted lesions: 8-connected components of each lesion type's mask (types never merge). "
    "Touching lesions of one type are split by a watershed of the distance transform seeded at its "
    "peaks that stand at least min_neck_depth pixels above the neck to a higher peak (h-maxima); "
    "peaks about min_peak_distance pixels apart or closer seed one lesion."
)
GRADING_RULE = (
    "Grade of an image = number of grading thresholds strictly below its lesion count (all types). "
    "The predicted grade comes from the predicted lesion count; the reference is the annotated grade "
    "(manifest column `grade`) or, where there is none, the grade of the annotated lesion count."
)
_HAYASHI_NAMES = ("mild", "moderate", "severe", "very severe")


# --------------------------------------------------------------------------- predicted lesions
def predicted_instances(
    label_map: np.ndarray,
    *,
    split_touching: bool = True,
    min_peak_distance: int = 3,
    min_neck_depth: float = 1.0,
) -> np.ndarray:
    """Instance map (int64, 0 = background) of a predicted label map; see ``SPLIT_RULE``."""
    label_map = np.asarray(label_map)
    if not split_touching:
        return components_per_type(label_map)
    instances = np.zeros(label_map.shape, dtype=np.int64)
    next_id = 0
    for value in np.unique(label_map[label_map > 0]):
        ids = _split_touching(label_map == value, min_peak_distance, min_neck_depth)
        instances[ids > 0] = ids[ids > 0] + next_id
        next_id += int(ids.max(initial=0))
    return instances


def _split_touching(mask: np.ndarray, min_peak_distance: int, min_neck_depth: float) -> np.ndarray:
    components, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
    ids = np.zeros(mask.shape, dtype=np.int64)
    next_id = 0
    # one component at a time, on its bounding box plus a background margin: the distance
    # transform and h-maxima of a whole photo cost ~10x more than those of its few lesions
    for number, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        window = tuple(slice(max(axis.start - 1, 0), axis.stop + 1) for axis in box)
        local = _split_component(components[window] == number, min_peak_distance, min_neck_depth)
        target = ids[window]
        target[local > 0] = local[local > 0] + next_id
        next_id += int(local.max())
    return ids


def _split_component(mask: np.ndarray, min_peak_distance: int, min_neck_depth: float) -> np.ndarray:
    """Lesion ids 1..k of one 8-connected component (``mask``), split at its necks."""
    distance = ndimage.distance_transform_edt(mask)
    # h-maxima, not every local maximum: a plateau (a strip of even width) or a ridge along an
    # elongated lesion is one peak; two round lesions joined by a narrow neck are two.
    peaks = h_maxima(distance, min_neck_depth) > 0 if min_neck_depth > 0 else local_maxima(distance)
    peaks &= mask
    radius = int(min_peak_distance) // 2
    if radius > 0:  # peaks closer than about min_peak_distance join into one seed
        peaks = ndimage.binary_dilation(peaks, structure=disk(radius)) & mask
    seeds, count = ndimage.label(peaks, structure=EIGHT_CONNECTED)
    if count <= 1:
        return mask.astype(np.int64)
    ids = watershed(-distance, seeds, mask=mask, connectivity=2).astype(np.int64)
    unseeded = mask & (ids == 0)  # cannot happen in one connected component; kept as a guard
    if unseeded.any():
        ids[unseeded] = 1
    return ids


# --------------------------------------------------------------------------- reference lesions
def reference_table(manifest_path: str | Path, mask_root: str | Path) -> pd.DataFrame:
    """``image_id`` -> ``instance_path`` (resolved against ``mask_root``, "" when none) and
    ``grade`` (int or None) from a manifest; images the manifest lacks get neither."""
    manifest = read_manifest(manifest_path)
    table = pd.DataFrame({"image_id": manifest["image_id"]})
    paths = manifest["instance_path"] if "instance_path" in manifest else pd.Series("", index=manifest.index)
    table["instance_path"] = [str(resolve(p, Path(mask_root))) if p else "" for p in paths]
    grades = manifest["grade"] if "grade" in manifest else pd.Series("", index=manifest.index)
    table["grade"] = pd.Series([_grade_cell(g, manifest_path, i) for i, g in enumerate(grades, start=1)],
                               index=table.index, dtype=object)  # int or None, never NaN
    return table.set_index("image_id")


def _grade_cell(text: str, source: Any, row: int) -> int | None:
    text = str(text).strip()
    if text in ("", "nan"):
        return None
    try:
        grade = int(float(text))
    except ValueError:
        raise DataError(f"{source}: row {row}: grade {text!r} is not a whole number") from None
    if grade < 0 or grade != float(text):
        raise DataError(f"{source}: row {row}: grade {text!r} must be a whole number >= 0")
    return grade


def read_reference(true_mask_path: str | Path, instance_path: str | Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The true label map and, when the manifest names one, its instance map, checked against it
    (a disagreement is a DataError naming the instance map's file)."""
    label_map = read_label_map(true_mask_path)
    if not instance_path:
        return label_map, None
    instances = read_instance_map(instance_path)
    check_instances(label_map, instances, f"instance map {instance_path} (label map {true_mask_path})")
    return label_map, instances


def segmentation_inputs(predictions: pd.DataFrame, run_dir: str | Path, dataset: Mapping[str, Any],
                        evaluation: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """What the evaluate stage hands to ``compute_segmentation_metrics``: a generator of
    ``(image_id, true_map, pred_map, true_instances)`` (instance maps named by the manifest) and
    the keyword settings (lesion splitting, grading thresholds, annotated grades)."""
    reference = reference_table(dataset["manifest"], dataset["mask_root"])
    instance_paths = reference["instance_path"].to_dict()
    run_dir = Path(run_dir)

    def samples():
        for row in predictions.itertuples():
            true_map, instances = read_reference(row.true_mask_path, instance_paths.get(row.image_id, ""))
            yield row.image_id, true_map, read_label_map(run_dir / row.pred_mask_path), instances

    tuned = rundir.read_postprocessing(run_dir)  # written by the predict stage when it tuned on validation
    settings = {
        "split_touching": bool(evaluation.get("split_touching", True)),
        "min_peak_distance": int(evaluation.get("min_peak_distance", 3)),
        "min_neck_depth": float(evaluation.get("min_neck_depth", 1.0)),
        "grade_thresholds": list(dataset.get("grading", {}).get("thresholds", HAYASHI_THRESHOLDS)),
        "annotated_grades": reference["grade"].to_dict(),
        "count_calibration": (tuned or {}).get("count_calibration"),
        # written by the predict stage: what a count_from: lesion_mass calibration reads
        "lesion_masses": (dict(zip(predictions["image_id"], predictions["lesion_mass"].astype(float)))
                          if "lesion_mass" in predictions else None),
    }
    return samples(), settings


# --------------------------------------------------------------------------- grading
def grade_labels(thresholds: Sequence[float]) -> list[str]:
    """One label per grade: the count range, with the Hayashi names when there are four grades."""
    bounds = [float(t) for t in thresholds]
    text = [f"{t:g}" for t in bounds]
    ranges = [f"≤ {text[0]}"]
    for low, high, high_text in zip(bounds, bounds[1:], text[1:]):
        ranges.append(f"{math.floor(low) + 1:g}–{high_text}" if low == int(low) else f"> {low:g} to {high_text}")
    ranges.append(f"> {text[-1]}")
    if len(ranges) == len(_HAYASHI_NAMES):
        return [f"{g} {name} ({r})" for g, (name, r) in enumerate(zip(_HAYASHI_NAMES, ranges))]
    return [f"grade {g} ({r})" for g, r in enumerate(ranges)]


def grading_metrics(
    true_counts: Sequence[int],
    pred_counts: Sequence[int],
    annotated_grades: Sequence[int | None],
    thresholds: Sequence[float] = HAYASHI_THRESHOLDS,
    *,
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    count_calibration: Mapping[str, Any] | None = None,
    lesion_masses: Sequence[float] | None = None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The metrics.json ``grading`` block, and the reference and predicted grade of each image.

    Accuracy with a Wilson interval; quadratic-weighted Cohen's kappa (scikit-learn) with a
    percentile bootstrap over images; count MAE and Spearman correlation (SciPy) of total counts.
    With a ``count_calibration`` (fitted on validation, :func:`fit_count_calibration`) the predicted
    grade, count MAE and Spearman use the calibrated count, read from the lesions found or, when the
    calibration says ``count_from: lesion_mass``, from ``lesion_masses`` (one per image);
    ``found`` keeps the raw count's figures.
    """
    true_counts = np.asarray(true_counts, dtype=float)
    found_counts = np.asarray(pred_counts, dtype=float)
    pred_counts = calibrated_counts(calibration_inputs(found_counts, lesion_masses, count_calibration), count_calibration)
    annotated = [None if g is None or (isinstance(g, float) and math.isnan(g)) else int(g) for g in annotated_grades]
    n_grades = len(thresholds) + 1
    from_counts = grade_from_count(true_counts, thresholds)
    reference = np.array([a if a is not None else c for a, c in zip(annotated, from_counts)], dtype=np.int64)
    predicted = grade_from_count(pred_counts, thresholds)
    if reference.size and reference.max() >= n_grades:
        raise DataError(f"annotated grade {int(reference.max())} is beyond the {n_grades} grades of thresholds "
                        f"{list(thresholds)}")
    given = sum(a is not None for a in annotated)
    source = ("annotated grade" if given == len(annotated) and given else
              "graded from annotated counts" if given == 0 else
              "annotated grade where given, else graded from annotated counts")
    labels = np.arange(n_grades)
    counts = confusion_matrix(reference, predicted, labels=labels) if reference.size \
        else np.zeros((n_grades, n_grades), dtype=np.int64)

    def kappa(ref: np.ndarray, pred: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one grade on both sides: kappa undefined (NaN)
            return float(cohen_kappa_score(ref, pred, labels=labels, weights="quadratic"))

    (kappa_estimate,) = bootstrap_estimates(kappa, [reference, predicted], n_bootstrap, bootstrap_seed)
    block = {
        "thresholds": [float(t) if float(t) != int(t) else int(t) for t in thresholds],
        "reference": source,
        "n_images": int(reference.size),
        "n_annotated_grades": int(given),
        "rule": GRADING_RULE,
        "accuracy": proportion(int(np.trace(counts)), int(reference.size)),
        "kappa": {**kappa_estimate, "weights": "quadratic"},
        "count_mae": float(np.mean(np.abs(pred_counts - true_counts))) if true_counts.size else math.nan,
        "spearman": spearman(true_counts, pred_counts),
        "count_rule": count_calibration_rule(count_calibration),
        "count_calibration": dict(count_calibration) if count_calibration else None,
        "confusion_matrix": {"labels": grade_labels(thresholds), "counts": counts.tolist(),
                             "rows": f"reference grade ({source})", "columns": "predicted grade"},
    }
    if count_calibration:
        found_grades = grade_from_count(found_counts, thresholds)
        block["found"] = {"accuracy": proportion(int(np.sum(found_grades == reference)), int(reference.size)),
                          "count_mae": float(np.mean(np.abs(found_counts - true_counts))) if true_counts.size else math.nan,
                          "rule": "the same figures graded from the number of lesions found, uncalibrated"}
    return block, reference, predicted


# --------------------------------------------------------------------------- count calibration
COUNT_CALIBRATIONS = ("none", "linear", "huber", "isotonic")
# what a calibrated count is read from: the lesions found, or the lesion probability mass of the photo
# (pipeline.tasks.segmentation.lesion_mass)
COUNT_SOURCES = ("lesions", "lesion_mass")


def fit_count_calibration(found: Sequence[float], annotated: Sequence[float], method: str,
                          count_from: str = "lesions") -> dict[str, Any] | None:
    """A map from the number of lesions a model finds on a photo (or, with ``count_from="lesion_mass"``,
    from the photo's lesion probability mass) to the annotated number, fitted on the VALIDATION split
    (``predict.count_calibration``, ``predict.count_from``); None for ``"none"``.

    Why: a detector at recall r and a roughly constant number f of false lesions per photo finds
    about f + r * n lesions where n are annotated, so mild photos are over-counted and severe ones
    under-counted, and a grade read from the raw count regresses to the middle grades. The count
    a grade is read from is then the expected annotated count given the found count, as a count
    regression on the detector's output is in detection-plus-grading models (Wu et al., ICCV 2019,
    counting branch; AcneDGNet, Sci Rep 2024):

    - ``linear``: least squares n ≈ a + b * found (scikit-learn ``LinearRegression``), clipped at 0;
    - ``huber``: the same line fitted with the Huber loss (scikit-learn ``HuberRegressor``), so a few
      photos whose lesions the model misses almost entirely do not tilt it;
    - ``isotonic``: the monotone least-squares map (scikit-learn ``IsotonicRegression``), stored as
      its breakpoints and applied by linear interpolation, constant beyond the fitted range.

    ``found`` holds what the map reads (lesions found, or lesion masses); the record says which in
    ``count_from``. The result is plain JSON (written to postprocessing.json beside the tuned threshold
    and area).
    """
    if count_from not in COUNT_SOURCES:
        raise ValueError(f"count_from must be one of {list(COUNT_SOURCES)}, got {count_from!r}")
    if method not in COUNT_CALIBRATIONS:
        raise ValueError(f"count calibration must be one of {list(COUNT_CALIBRATIONS)}, got {method!r}")
    if method == "none":
        return None
    found = np.asarray(found, dtype=float)
    annotated = np.asarray(annotated, dtype=float)
    if found.shape != annotated.shape or found.ndim != 1:
        raise ValueError(f"count calibration: found {found.shape} and annotated {annotated.shape} counts differ in shape")
    if found.size < 3 or np.ptp(found) == 0:
        what = "found lesions" if count_from == "lesions" else "lesion masses"
        raise DataError(f"count calibration ({method}) needs validation photos with at least two different numbers "
                        f"of {what}; got {found.size} photo(s) with values {sorted(set(found.tolist()))[:5]}")
    record: dict[str, Any] = {"method": method, "count_from": count_from, "fitted_on": "val", "n_images": int(found.size)}
    if method in ("linear", "huber"):
        from sklearn.linear_model import HuberRegressor, LinearRegression

        model = LinearRegression() if method == "linear" else HuberRegressor(max_iter=1000)
        # a mass is thousands of pixels: fitted in units of its mean, so the Huber fit's small L2
        # penalty and its solver see a slope near 1 whatever the photo size (lesion counts as they are)
        scale = float(found.mean()) if count_from == "lesion_mass" else 1.0
        fit = model.fit(found[:, None] / scale, annotated)
        record.update(intercept=float(fit.intercept_), slope=float(fit.coef_[0]) / scale)
    else:
        from sklearn.isotonic import IsotonicRegression

        fit = IsotonicRegression(out_of_bounds="clip", y_min=0.0).fit(found, annotated)
        record.update(found=[float(v) for v in fit.X_thresholds_], annotated=[float(v) for v in fit.y_thresholds_])
    estimate = calibrated_counts(found, record)
    if count_from == "lesions":  # a mass is not a count: no uncalibrated count error to compare with
        record["val_count_mae_found"] = float(np.mean(np.abs(found - annotated)))
    record["val_count_mae"] = float(np.mean(np.abs(estimate - annotated)))
    return record


def calibration_inputs(found: Sequence[float], lesion_masses: Sequence[float] | None,
                       calibration: Mapping[str, Any] | None) -> np.ndarray:
    """What ``calibration`` reads, per image: the lesions found, or the lesion masses when it was
    fitted on them (``count_from: lesion_mass``; a DataError when they are missing)."""
    if not calibration or calibration.get("count_from", "lesions") == "lesions":
        return np.asarray(found, dtype=float)
    if lesion_masses is None:
        raise DataError("the count calibration was fitted on lesion masses (count_from: lesion_mass), but the "
                        "predictions carry none (predictions.csv column lesion_mass): run the predict stage again")
    masses = np.asarray(lesion_masses, dtype=float)
    if masses.shape != np.shape(found) or not np.all(np.isfinite(masses)):
        raise DataError(f"lesion masses: {masses.size} values for {np.size(found)} images, or not all finite")
    return masses


def calibrated_counts(found: Sequence[float], calibration: Mapping[str, Any] | None) -> np.ndarray:
    """The annotated-count estimate of each found count under ``calibration`` (identity for None)."""
    found = np.asarray(found, dtype=float)
    if not calibration:
        return found
    method = calibration.get("method")
    if method in ("linear", "huber"):
        return np.clip(calibration["intercept"] + calibration["slope"] * found, 0.0, None)
    if method == "isotonic":
        return np.interp(found, calibration["found"], calibration["annotated"])
    raise DataError(f"count calibration: unknown method {method!r} (known: {list(COUNT_CALIBRATIONS[1:])})")


def count_calibration_rule(calibration: Mapping[str, Any] | None) -> str:
    """One sentence on the count a grade is read from."""
    if not calibration:
        return "The count graded is the number of lesions found."
    n = calibration.get("n_images", "?")
    source = calibration.get("count_from", "lesions")
    read = "lesions found" if source == "lesions" else "lesion mass in thousands of pixels"
    per = 1.0 if source == "lesions" else 1000.0  # the slope is per pixel of mass; shown per thousand
    if calibration.get("method") in ("linear", "huber"):
        how = (f"{calibration['intercept']:.2f} + {calibration['slope'] * per:.3f} × {read}, at least 0; "
               f"{'least squares' if calibration['method'] == 'linear' else 'Huber loss'}")
    else:
        how = f"an isotonic (monotone) map of {read}, {len(calibration.get('found', []))} breakpoints"
    what = ("the lesions found" if source == "lesions" else
            "the photo's lesion probability mass (the summed lesion probability of the pixels at or above the "
            "lesion threshold, small lesions included)")
    return (f"The count graded is the annotated count expected from {what}, fitted on {n} validation "
            f"images ({how}); the test split is not used to fit it.")


def spearman(true_counts: Sequence[float], pred_counts: Sequence[float]) -> dict[str, Any]:
    """Spearman rank correlation of per-image counts (SciPy); null when a side is constant."""
    true_counts, pred_counts = np.asarray(true_counts, dtype=float), np.asarray(pred_counts, dtype=float)
    if true_counts.size < 3 or np.ptp(true_counts) == 0 or np.ptp(pred_counts) == 0:
        return {"value": math.nan, "p_value": math.nan, "n": int(true_counts.size)}
    result = spearmanr(true_counts, pred_counts)
    return {"value": float(result.statistic), "p_value": float(result.pvalue), "n": int(true_counts.size)}


def annotated_grade_list(image_ids: Sequence[str], grades: Mapping[str, int | None] | None) -> list[int | None]:
    if grades is None:
        return [None] * len(image_ids)
    return [grades.get(i) for i in image_ids]
