"""Classification metrics from ``predictions.csv`` → the ``metrics.json`` contract.

Every figure a report shows is computed here once (scikit-learn, SciPy's ranks for AUC, statsmodels for
Wilson intervals, a paired percentile bootstrap over images for the rest, see ``stats.py``).

Rules a reader needs:

* ``balanced_accuracy`` is the mean sensitivity over the classes present in the test set; classes
  with no test image are listed in ``excluded_classes``. ``macro_auc`` is the mean one-vs-rest AUC
  over the same classes (equal to scikit-learn's ``multi_class="ovr"`` macro AUC when every class
  is present).
* A class absent from the test set has no sensitivity, F1, AUC, ROC curve or operating point
  (NaN / ``null``); its specificity, PPV and NPV are still defined when their denominators are.
* Bootstrap resamples in which a class present in the test set happens to be absent are skipped
  for the statistics that need that class (counted in ``n_skipped_resamples``).
* Calibration is top-label: confidence = probability of the predicted class (``pred``), correct =
  ``pred == label``; 15 equal-width bins ``[lo, hi)``, the last one closed at 1.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
import sklearn
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    roc_curve,
)

from pipeline.errors import DataError
from pipeline import rundir
from pipeline.atomic import write_text
from pipeline.evaluation.collapse import prediction_collapse
from pipeline.evaluation.stats import bootstrap_estimates, proportion

__all__ = [
    "ClassificationInputs",
    "align_paired_predictions",
    "calibration_bins",
    "compute_classification_metrics",
    "operating_points",
    "per_class_auc",
    "resolve_class_names",
    "validate_predictions",
    "write_classification_tables",
]

ECE_BINS = 15
TARGET_RATE = 0.95  # the fixed specificity / sensitivity of the reported operating points
PROBABILITY_TOLERANCE = 1e-3  # |sum of a row's probabilities - 1| allowed (CSV rounding)
_RATE_EPS = 1e-12  # so that 1 - 0.05 counts as >= 0.95 despite floating point


@dataclass(frozen=True)
class ClassificationInputs:
    """Validated predictions: class indices in class-list order and an (N, K) probability matrix."""

    image_ids: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray


# --------------------------------------------------------------------------- validation
def validate_predictions(
    predictions: pd.DataFrame, classes: list[str], *, source: str = "predictions"
) -> ClassificationInputs:
    """Check a predictions table against the contract; raise :class:`DataError` naming the fault.

    Rows in messages are counted from 1 after the header, as in the CSV file.
    """
    _check_class_list(classes)
    prob_columns = [f"prob_{c}" for c in classes]
    required = ["image_id", "label", "pred", *prob_columns]
    missing = [c for c in required if c not in predictions.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; expected {required}")
    if len(predictions) == 0:
        raise DataError(f"{source}: no rows to evaluate")
    table = predictions.reset_index(drop=True)
    for column in required:
        _check_no_missing(table, column, source)

    image_ids = table["image_id"].astype(str).to_numpy()
    duplicated = pd.Series(image_ids).duplicated(keep=False)
    if duplicated.any():
        raise DataError(f"{source}: duplicate image_id(s) {sorted(set(image_ids[duplicated.to_numpy()]))[:5]}")

    index = {c: i for i, c in enumerate(classes)}
    y_true = _class_indices(table, "label", index, source)
    y_pred = _class_indices(table, "pred", index, source)
    probs = _probability_matrix(table, prob_columns, source)
    return ClassificationInputs(image_ids, y_true, y_pred, probs)


def _check_class_list(classes: list[str]) -> None:
    if len(classes) < 2:
        raise DataError(f"class list needs at least two classes, got {list(classes)}")
    if len(set(classes)) != len(classes):
        raise DataError(f"class list has duplicates: {list(classes)}")


def _check_no_missing(table: pd.DataFrame, column: str, source: str) -> None:
    empty = table[column].isna().to_numpy()
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise DataError(
            f"{source}: column '{column}' is empty/NaN in {int(empty.sum())} row(s), first row {row + 1} "
            f"(image_id {table['image_id'].iloc[row]!r})"
        )


def _class_indices(table: pd.DataFrame, column: str, index: dict[str, int], source: str) -> np.ndarray:
    codes = table[column].astype(str)
    unknown = ~codes.isin(list(index))
    if unknown.any():
        rows = np.flatnonzero(unknown.to_numpy())[:5]
        details = ", ".join(f"row {r + 1} (image_id {table['image_id'].iloc[r]!r}): {codes.iloc[r]!r}" for r in rows)
        raise DataError(f"{source}: column '{column}' has values not in the class list {list(index)}: {details}")
    return codes.map(index).to_numpy(dtype=np.int64)


def _probability_matrix(table: pd.DataFrame, prob_columns: list[str], source: str) -> np.ndarray:
    for column in prob_columns:
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise DataError(f"{source}: column '{column}' is not numeric")
    probs = table[prob_columns].to_numpy(dtype=float)
    bad = (probs < -PROBABILITY_TOLERANCE) | (probs > 1 + PROBABILITY_TOLERANCE) | ~np.isfinite(probs)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{source}: column '{prob_columns[col]}' row {row + 1} (image_id {table['image_id'].iloc[row]!r}) "
            f"is {float(probs[row, col])}, not a probability in [0, 1]"
        )
    off = np.abs(probs.sum(axis=1) - 1) > PROBABILITY_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise DataError(
            f"{source}: probabilities of row {row + 1} (image_id {table['image_id'].iloc[row]!r}) sum to "
            f"{probs[row].sum():.6f}, not 1 (tolerance {PROBABILITY_TOLERANCE}); {int(off.sum())} row(s) affected"
        )
    return np.clip(probs, 0.0, 1.0)  # exactly in [0, 1]


# --------------------------------------------------------------------------- statistics
def _bootstrapped_statistics(n_classes: int, present: np.ndarray) -> Callable[..., np.ndarray]:
    """The vector statistic resampled together: [balanced accuracy, macro AUC, F1 per class, AUC per class].

    A class present in the test set but absent from a resample makes every entry that needs it NaN
    (balanced accuracy and macro AUC would otherwise silently average over fewer classes).
    """
    labels = np.arange(n_classes)

    def statistic(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray) -> np.ndarray:
        in_sample = np.isin(labels, y_true)
        all_present = bool(np.all(in_sample[present]))
        aucs = per_class_auc(y_true, probs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
            f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
        balanced = balanced_accuracy(y_true, y_pred) if all_present else math.nan
        f1 = np.where(in_sample, f1, np.nan)  # no F1 for a class without true cases
        macro_auc = float(np.mean(aucs[present])) if all_present and present.any() else math.nan
        return np.concatenate([[balanced, macro_auc], f1, aucs])

    return statistic


def balanced_accuracy(y_true: np.ndarray, pred: np.ndarray) -> float:
    """Balanced accuracy: the mean recall over the classes present in y_true (a predicted class with no
    true image does not count), as ``sklearn.metrics.balanced_accuracy_score`` (checked in the tests)
    but in numpy, bit for bit: it runs once per bootstrap resample (evaluate) and resamples x seeds
    times per experiment (the paired comparison), where scikit-learn's input checks took 4.7 ms a
    call (16 of the default comparison's 20 s)."""
    classes, true_index = np.unique(y_true, return_inverse=True)
    support = np.bincount(true_index, minlength=len(classes))
    hits = np.bincount(true_index[np.asarray(y_true) == np.asarray(pred)], minlength=len(classes))
    return float(np.mean(hits / support))


def per_class_auc(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC of every class, exact, from one ranking of all scores.

    AUC_k = (R_k - n_k (n_k + 1) / 2) / (n_k (N - n_k)), with R_k the sum of the ranks (ties
    averaged, ``scipy.stats.rankdata``) of the class-k probabilities of the n_k images of class k:
    the Mann-Whitney U statistic over the number of positive-negative pairs (Hanley and McNeil,
    Radiology 1982), equal to the area under the ROC curve with ties counted as half. One vectorised
    call for all classes rather than a loop of ``sklearn.metrics.roc_auc_score``, because this runs
    in every bootstrap resample; the tests check it against scikit-learn. NaN for a class without
    positives or without negatives, where AUC is undefined.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    positive = y_true[:, None] == np.arange(n_classes)[None, :]
    n_pos = positive.sum(axis=0).astype(np.float64)
    n_neg = len(y_true) - n_pos
    defined = (n_pos > 0) & (n_neg > 0)
    if not defined.any():
        return np.full(n_classes, np.nan)
    ranks = scipy.stats.rankdata(probs, axis=0)
    rank_sum = np.where(positive, ranks, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where(defined, auc, np.nan)


def operating_points(positive: np.ndarray, score: np.ndarray, target: float = TARGET_RATE) -> dict[str, dict[str, Any]]:
    """Best sensitivity at specificity >= ``target`` and best specificity at sensitivity >= ``target``.

    Read from ``sklearn.metrics.roc_curve`` (all thresholds kept). Ties go to the better other rate.
    A score >= ``threshold`` is called positive. When the best point is to call nothing positive
    (roc_curve's threshold ``inf``) the threshold is NaN (JSON ``null``) while the value is defined.
    """
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        undefined = {"value": math.nan, "threshold": math.nan}
        return {"sens_at_95_spec": {**undefined, "specificity": math.nan},
                "spec_at_95_sens": {**undefined, "sensitivity": math.nan}}
    fpr, tpr, thresholds = roc_curve(positive, score, drop_intermediate=False)
    specificity = 1 - fpr
    thresholds = np.where(np.isfinite(thresholds), thresholds, np.nan)
    best_sens = _best(tpr, specificity, specificity >= target - _RATE_EPS)
    best_spec = _best(specificity, tpr, tpr >= target - _RATE_EPS)
    return {
        "sens_at_95_spec": {"value": float(tpr[best_sens]), "specificity": float(specificity[best_sens]),
                            "threshold": float(thresholds[best_sens])},
        "spec_at_95_sens": {"value": float(specificity[best_spec]), "sensitivity": float(tpr[best_spec]),
                            "threshold": float(thresholds[best_spec])},
    }


def validation_operating_points(val_positive: np.ndarray, val_score: np.ndarray, test_positive: np.ndarray,
                                test_score: np.ndarray, target: float = TARGET_RATE) -> dict[str, Any]:
    """The two operating points with thresholds **chosen on the validation split** and applied,
    unchanged, to the test split: ``sens_at_95_spec`` (the threshold that gives the best validation
    sensitivity at validation specificity >= ``target``) and ``spec_at_95_sens``; each with its
    threshold, the validation rates it was chosen at, and the test ``sensitivity`` and
    ``specificity`` it gives, with Wilson intervals. Read off the test ROC curve instead
    (``operating_points``), the threshold is fitted to the test images and the figures are
    optimistic; these are what a clinic would see with a threshold fixed before the test.
    A threshold of NaN (nothing called positive on validation) calls nothing positive on test.
    """
    test_positive = np.asarray(test_positive, dtype=bool)
    test_score = np.asarray(test_score, dtype=float)
    chosen = operating_points(val_positive, val_score, target)
    out: dict[str, Any] = {"chosen_on": "val", "target": target}
    for key, point in chosen.items():
        threshold = point["threshold"]
        called = test_score >= threshold if math.isfinite(threshold) else np.zeros(len(test_score), dtype=bool)
        undefined = not math.isfinite(point["value"])  # the class is missing from the validation split
        tp, fn = int((called & test_positive).sum()), int((~called & test_positive).sum())
        tn, fp = int((~called & ~test_positive).sum()), int((called & ~test_positive).sum())
        out[key] = {
            "threshold": threshold,
            "val_sensitivity": point["value"] if key == "sens_at_95_spec" else point["sensitivity"],
            "val_specificity": point["specificity"] if key == "sens_at_95_spec" else point["value"],
            "sensitivity": proportion(0, 0) if undefined else proportion(tp, tp + fn),
            "specificity": proportion(0, 0) if undefined else proportion(tn, tn + fp),
        }
    return out


# Per-subgroup figures: age bands (years) and the smallest class support worth reading.
AGE_BANDS = ((0, 30, "< 30"), (30, 50, "30–49"), (50, 70, "50–69"), (70, 200, "≥ 70"))
MIN_SUBGROUP_SUPPORT = 10


def subgroup_sensitivity(y_true: np.ndarray, y_pred: np.ndarray, metadata: pd.DataFrame,
                         classes: list[str]) -> dict[str, Any]:
    """Sensitivity per class within each subgroup of ``metadata`` (columns ``sex``, ``site``,
    ``age``, one row per test image, in prediction order), with Wilson intervals.

    Age is cut into ``AGE_BANDS``; empty or missing values form no subgroup. A class with fewer
    than ``MIN_SUBGROUP_SUPPORT`` images in a subgroup is flagged ``too_small``: its interval is
    too wide to compare subgroups by. Returns ``{attribute: {subgroup: {"n_images", "per_class":
    {code: proportion + too_small}}}}`` for the attributes present.
    """
    out: dict[str, Any] = {}
    for attribute in ("sex", "age", "site"):
        if attribute not in metadata.columns:
            continue
        values = metadata[attribute]
        if attribute == "age":
            ages = pd.to_numeric(values, errors="coerce").to_numpy()
            groups = np.full(len(ages), "", dtype=object)
            for low, high, name in AGE_BANDS:
                groups[(ages >= low) & (ages < high)] = name
        else:
            groups = values.fillna("").astype(str).str.strip().to_numpy()
        table = {}
        for group in [g for g in dict.fromkeys(groups) if g]:
            members = groups == group
            per_class = {}
            for i, code in enumerate(classes):
                positive = members & (y_true == i)
                estimate = proportion(int((positive & (y_pred == i)).sum()), int(positive.sum()))
                per_class[code] = {**estimate, "too_small": int(positive.sum()) < MIN_SUBGROUP_SUPPORT}
            table[group] = {"n_images": int(members.sum()), "per_class": per_class}
        if table:
            order = [name for _, _, name in AGE_BANDS] if attribute == "age" else sorted(table)
            out[attribute] = {g: table[g] for g in order if g in table}
    return out


def _best(objective: np.ndarray, tie_break: np.ndarray, feasible: np.ndarray) -> int:
    candidates = np.flatnonzero(feasible)  # never empty: roc_curve starts at (0, 0) and ends at (1, 1)
    order = np.lexsort((-tie_break[candidates], -objective[candidates]))
    return int(candidates[order[0]])


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Top-label expected calibration error (L1) with its reliability-diagram bins.

    ECE = sum_b (n_b / N) * |accuracy_b - confidence_b| over equal-width bins (Guo et al., 2017,
    "On Calibration of Modern Neural Networks"). Same binning as torchmetrics
    ``MulticlassCalibrationError(norm="l1")`` except that a confidence of exactly 1 falls in the
    last bin here (torchmetrics gives it a bin of its own); torchmetrics returns no bins, which the
    reliability diagram needs, hence this short function.
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        members = which == b
        count = int(members.sum())
        mean_conf = float(confidence[members].mean()) if count else math.nan
        mean_acc = float(correct[members].mean()) if count else math.nan
        if count:
            ece += count / confidence.size * abs(mean_acc - mean_conf)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
                     "confidence": mean_conf, "accuracy": mean_acc})
    return {"ece": float(ece), "n_bins": n_bins, "method": "top-label, equal-width bins, L1", "bins": bins}


# --------------------------------------------------------------------------- main entry
def compute_classification_metrics(
    predictions: pd.DataFrame,
    classes: list[str],
    class_names: dict[str, str] | None = None,
    *,
    experiment: str = "",
    seed: int | None = None,
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    source: str = "predictions",
    val_predictions: pd.DataFrame | None = None,
    groups: Sequence[Any] | None = None,
    metadata: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """All classification figures for one run, in the ``metrics.json`` shape (NaN for undefined).

    With ``val_predictions`` (the same model on the validation split), each class also gets
    ``operating_points_val``: thresholds chosen on validation, test rates at them
    (``validation_operating_points``).

    ``predictions`` holds ``image_id``, ``label``, ``pred`` and ``prob_<CLASS>`` per class;
    ``source`` names it in error messages. Intervals: Wilson for proportions (accuracy and the
    per-class rates), a percentile bootstrap over images (``n_bootstrap`` resamples, seeded by
    ``bootstrap_seed``) for balanced accuracy, macro AUC, F1 and AUC: over images, or over whole
    lesions / patients when ``groups`` (their ``group_id``, one per prediction row) is given.
    """
    data = validate_predictions(predictions, classes, source=source)
    names = resolve_class_names(classes, class_names)
    k = len(classes)
    labels = np.arange(k)
    support = np.bincount(data.y_true, minlength=k)
    present = support > 0
    excluded = [c for c, p in zip(classes, present) if not p]

    statistic = _bootstrapped_statistics(k, present)
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):  # inputs validated above
        estimates = bootstrap_estimates(statistic, [data.y_true, data.y_pred, data.probs], n_bootstrap,
                                        bootstrap_seed, groups=groups)
    balanced, macro_auc, f1s, aucs = estimates[0], estimates[1], estimates[2:2 + k], estimates[2 + k:]

    counts = confusion_matrix(data.y_true, data.y_pred, labels=labels)
    n_correct = int(np.trace(counts))
    per_class = _per_class(data, classes, names, counts, f1s, aucs)
    if val_predictions is not None:
        val = validate_predictions(val_predictions, classes, source=f"{source} (validation split)")
        for i, code in enumerate(classes):
            per_class[code]["operating_points_val"] = validation_operating_points(
                val.y_true == i, val.probs[:, i], data.y_true == i, data.probs[:, i])
    subgroups = (subgroup_sensitivity(data.y_true, data.y_pred, metadata.reset_index(drop=True), list(classes))
                 if metadata is not None else {})
    return {
        "task": "classification",
        "experiment": experiment,
        "seed": seed,
        "classes": list(classes),
        "class_names": names,
        "n_images": int(len(data.y_true)),
        "balanced_accuracy": {**balanced, "excluded_classes": excluded},
        "accuracy": proportion(n_correct, len(data.y_true)),
        "macro_auc": {**macro_auc, "averaging": "one-vs-rest, macro", "excluded_classes": excluded},
        "per_class": per_class,
        "operating_points_rule": (
            "thresholds chosen on the validation split, applied to the test split" if val_predictions is not None
            else "read off the test ROC curve (no validation predictions): optimistic"),
        "confusion_matrix": _confusion_block(classes, counts),
        "collapse": prediction_collapse(classes, support, counts.sum(axis=0)),
        "subgroups": subgroups,
        "calibration": calibration_bins(
            data.probs[np.arange(len(data.y_pred)), data.y_pred], data.y_pred == data.y_true
        ),
        "roc": {c: _roc_points(data.y_true == i, data.probs[:, i]) for i, c in enumerate(classes)},
        "bootstrap": {"n_resamples": n_bootstrap, "seed": bootstrap_seed, "method": "percentile",
                      "unit": "image" if groups is None else
                      f"lesion or patient (group_id; {len(set(map(str, groups)))} groups, their images resampled together)"},
    }


def resolve_class_names(classes: list[str], class_names: Mapping[str, str] | None) -> dict[str, str]:
    """Code -> clinician-facing name for every class, in class-list order (the code when unnamed)."""
    names = dict(class_names or {})
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DataError(f"class_names has codes not in the class list {list(classes)}: {unknown}")
    return {c: str(names.get(c, c)) for c in classes}


def _per_class(
    data: ClassificationInputs,
    classes: list[str],
    names: dict[str, str],
    counts: np.ndarray,
    f1s: list[dict[str, Any]],
    aucs: list[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    per_class_2x2 = multilabel_confusion_matrix(data.y_true, data.y_pred, labels=np.arange(len(classes)))
    table = {}
    for i, code in enumerate(classes):
        (tn, fp), (fn, tp) = per_class_2x2[i]
        support = int(tp + fn)
        table[code] = {
            "name": names[code],
            "support": support,
            "predicted": int(tp + fp),
            "sensitivity": proportion(tp, tp + fn),
            "specificity": proportion(tn, tn + fp),
            "ppv": proportion(tp, tp + fp),
            "npv": proportion(tn, tn + fn),
            "f1": f1s[i],
            "auc": aucs[i],
            **operating_points(data.y_true == i, data.probs[:, i]),
            "most_confused_with": _most_confused_with(counts[i], i, classes),
        }
    return table


def _most_confused_with(row: np.ndarray, own: int, classes: list[str]) -> list[dict[str, Any]]:
    misses = [(int(n), j) for j, n in enumerate(row) if j != own and n > 0]
    return [{"class": classes[j], "count": n} for n, j in sorted(misses, key=lambda m: (-m[0], m[1]))]


def _confusion_block(classes: list[str], counts: np.ndarray) -> dict[str, Any]:
    row_totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalized = np.where(row_totals > 0, counts / row_totals, np.nan)
    return {"labels": list(classes), "counts": counts.tolist(), "normalized": normalized.tolist(),
            "rows": "true class", "columns": "predicted class"}


def _roc_points(positive: np.ndarray, score: np.ndarray) -> dict[str, list[float]] | None:
    if positive.all() or not positive.any():
        return None
    fpr, tpr, _ = roc_curve(positive, score)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


# --------------------------------------------------------------------------- tables
_RATE_COLUMNS = ("sensitivity", "specificity", "ppv", "npv", "f1", "auc")


def write_classification_tables(metrics: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write confusion_matrix.csv, confusion_matrix_normalized.csv and per_class.csv from ``metrics``.

    The tables are read from the metrics (in memory or loaded from metrics.json), never recomputed.
    Each file is written atomically.
    """
    out_dir = Path(out_dir)
    block = metrics["confusion_matrix"]
    labels = block["labels"]
    counts = pd.DataFrame(block["counts"], index=pd.Index(labels, name="true"), columns=labels)
    normalized = pd.DataFrame(np.array(block["normalized"], dtype=float),
                              index=pd.Index(labels, name="true"), columns=labels)
    return [
        write_text(out_dir / rundir.CONFUSION_MATRIX, counts.to_csv()),
        write_text(out_dir / rundir.CONFUSION_MATRIX_NORMALIZED, normalized.to_csv()),
        write_text(out_dir / rundir.PER_CLASS, per_class_table(metrics).to_csv(index=False)),
    ]


def per_class_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per class: counts, each rate as value / ci_lo / ci_hi, and the operating points."""
    rows = []
    for code in metrics["classes"]:
        entry = metrics["per_class"][code]
        row = per_class_row(code, entry, _RATE_COLUMNS)
        for point in ("sens_at_95_spec", "spec_at_95_sens"):
            row.update({point: entry[point]["value"], f"{point}_threshold": entry[point]["threshold"]})
        rows.append(row)
    return pd.DataFrame(rows).astype({m: float for m in _RATE_COLUMNS})


def per_class_row(code: str, entry: Mapping[str, Any], rates: Sequence[str]) -> dict[str, Any]:
    """The start of a per_class.csv row (classification and segmentation): class, name, support,
    predicted, and each rate in ``rates`` as value / ci_lo / ci_hi, from the metrics' per_class entry."""
    row: dict[str, Any] = {"class": code, "name": entry["name"], "support": entry["support"],
                           "predicted": entry["predicted"]}
    for metric in rates:
        lo, hi = entry[metric]["ci95"]
        row.update({metric: entry[metric]["value"], f"{metric}_ci_lo": lo, f"{metric}_ci_hi": hi})
    return row


# --------------------------------------------------------------------------- comparisons
def align_paired_predictions(
    experiment: pd.DataFrame, baseline: pd.DataFrame, *, names: tuple[str, str] = ("experiment", "baseline")
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both prediction tables sorted by ``image_id`` so that row i is the same image in each.

    Raises :class:`DataError` when the two runs were not evaluated on the same images, or when an
    image has a different true label in each (the inputs would not be paired).
    """
    ids = []
    for table, name in zip((experiment, baseline), names):
        if "image_id" not in table.columns or "label" not in table.columns:
            raise DataError(f"{name}: predictions need 'image_id' and 'label' columns")
        column = table["image_id"].astype(str)
        if column.duplicated().any():
            raise DataError(f"{name}: duplicate image_id(s) {sorted(set(column[column.duplicated()]))[:5]}")
        ids.append(set(column))
    only_a, only_b = sorted(ids[0] - ids[1]), sorted(ids[1] - ids[0])
    if only_a or only_b:
        raise DataError(
            f"{names[0]} and {names[1]} were not evaluated on the same images: only in {names[0]}: "
            f"{only_a[:5]} ({len(only_a)}), only in {names[1]}: {only_b[:5]} ({len(only_b)})"
        )
    a = experiment.assign(image_id=experiment["image_id"].astype(str)).sort_values("image_id").reset_index(drop=True)
    b = baseline.assign(image_id=baseline["image_id"].astype(str)).sort_values("image_id").reset_index(drop=True)
    differs = a["label"].astype(str).to_numpy() != b["label"].astype(str).to_numpy()
    if differs.any():
        raise DataError(f"{names[0]} and {names[1]} disagree on the true label of image(s) "
                        f"{a['image_id'][differs].tolist()[:5]}")
    return a, b
