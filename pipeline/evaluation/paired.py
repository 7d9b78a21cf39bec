"""Paired comparison of two experiments on the same test images: bootstrap differences and Holm.

For every statistic of a task (classification: balanced accuracy and each class's sensitivity;
segmentation: mean Dice and each type's lesion sensitivity) the difference experiment - baseline
with its 95% CI and p-value (``pipeline.evaluation.stats.paired_bootstrap_difference``); the
per-class p-values are Holm-adjusted as one family.

Several seeds: the runs are paired seed by seed (the seeds both have) and the bootstrap statistic is
the seed-averaged difference, every seed's predictions resampled with the same test images; each
seed pair's own headline difference is returned too. The comparison report (reporting/compare.py) turns
the results into tables, verdicts and figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from pipeline import rundir
from pipeline.errors import DataError
from pipeline.evaluation.classification import align_paired_predictions, balanced_accuracy
from pipeline.evaluation.stats import paired_bootstrap_difference

Statistic = Callable[[np.ndarray, np.ndarray], float]


# ---------------------------------------------------------------------------------------------
# Statistics of one run's outputs against the truth
# ---------------------------------------------------------------------------------------------
def seed_mean(statistic: Statistic) -> Statistic:
    """Turn a statistic of one run's predictions into the mean over seeds (columns of ``pred``)."""

    def mean_over_seeds(y_true: np.ndarray, pred: np.ndarray) -> float:
        pred = pred.reshape(len(pred), -1)
        values = [statistic(y_true, pred[:, s]) for s in range(pred.shape[1])]
        return float(np.mean(values))  # NaN when undefined on this resample: skipped by the bootstrap

    return mean_over_seeds


def class_sensitivity(code: str) -> Statistic:
    """Recall of one class: the share of its images predicted as it, NaN when it has none.

    Identical to ``sklearn.metrics.recall_score(y_true == code, pred == code)`` (checked in the
    tests) but in numpy: it runs resamples x classes x seeds times in each comparison.
    """

    def sensitivity(y_true: np.ndarray, pred: np.ndarray) -> float:
        positives = y_true == code
        return float(np.mean(pred[positives] == code)) if positives.any() else math.nan

    return sensitivity


def nanmean_statistic(_: np.ndarray, values: np.ndarray) -> float:
    """Mean of per-image scores, ignoring images where the score is undefined (NaN)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def lesion_sensitivity(true_counts: np.ndarray, found_counts: np.ndarray) -> float:
    """Lesion sensitivity of one type over a set of images: found with the right type / annotated
    (the evaluation's per_class sensitivity, pooled over the resampled images)."""
    total = float(np.sum(true_counts))
    return float(np.sum(found_counts)) / total if total > 0 else math.nan


@dataclass(frozen=True)
class PairedStatistic:
    """One compared figure: ``key`` names it (``sensitivity_<CLASS>`` for per-class ones), ``code``
    is its class (None for the headline), ``truth`` / ``output`` the PairedData columns it reads."""

    key: str
    code: str | None
    statistic: Statistic
    truth: str
    output: str


def paired_statistics(task: str, classes: Sequence[str]) -> list[PairedStatistic]:
    """The headline statistic of a task first, then one per class."""
    if task == "classification":
        return [PairedStatistic("balanced_accuracy", None, balanced_accuracy, "label", "pred")] + [
            PairedStatistic(f"sensitivity_{c}", c, class_sensitivity(c), "label", "pred") for c in classes
        ]
    return [PairedStatistic("mean_dice", None, nanmean_statistic, f"true_{classes[0]}", "dice")] + [
        PairedStatistic(f"sensitivity_{c}", c, lesion_sensitivity, f"true_{c}", f"found_{c}") for c in classes
    ]


# ---------------------------------------------------------------------------------------------
# Aligned outputs of two experiments
# ---------------------------------------------------------------------------------------------
@dataclass
class PairedData:
    """Aligned test-image arrays of an experiment and its baseline: rows = images, columns = seeds.

    ``truth`` holds what both runs are scored against (classification: the true class; segmentation:
    annotated lesions per type per image), ``a`` / ``b`` what each run produced."""

    image_ids: np.ndarray
    truth: dict[str, np.ndarray]
    a: dict[str, np.ndarray]
    b: dict[str, np.ndarray]


def read_classification_outcomes(run_dir: Path, classes: Sequence[str]) -> pd.DataFrame:
    """Per test image: the true and the predicted class (predictions.csv)."""
    return rundir.read_predictions(run_dir, ["image_id", "label", "pred"])


def read_segmentation_outcomes(run_dir: Path, classes: Sequence[str]) -> pd.DataFrame:
    """Per test image: Dice (per_image.csv) and, per type, annotated lesions and those found with
    the right type (counted from lesions.csv, the evaluation's own matching)."""
    per_image = rundir.read_table(run_dir / rundir.PER_IMAGE, ["image_id", "dice"], produced_by="pipeline evaluate")
    lesions = rundir.read_table(run_dir / rundir.LESIONS, ["image_id", "true_type", "pred_type", "matched"],
                                produced_by="pipeline evaluate")
    table = per_image[["image_id", "dice"]].set_index("image_id")
    matched = lesions["matched"].astype(str).str.lower().isin(["true", "1"])
    for code in classes:
        true_of_type = lesions["true_type"] == code
        table[f"true_{code}"] = lesions[true_of_type].groupby("image_id").size()
        table[f"found_{code}"] = lesions[true_of_type & matched & (lesions["pred_type"] == code)].groupby("image_id").size()
    table = table.fillna({c: 0 for c in table.columns if c != "dice"}).reset_index()
    return table.assign(label="")  # align_paired_predictions checks labels; per-image rows have none


def paired_data(task: str, classes: Sequence[str], a_runs: Mapping[int, Path], b_runs: Mapping[int, Path],
                seeds: Sequence[int]) -> PairedData:
    """The outputs of runs ``a_runs[seed]`` and ``b_runs[seed]`` on the same images, seed by seed."""
    read = read_classification_outcomes if task == "classification" else read_segmentation_outcomes
    truth_columns = ["label"] if task == "classification" else [f"true_{c}" for c in classes]
    output_columns = ["pred"] if task == "classification" else ["dice"] + [f"found_{c}" for c in classes]
    a_columns: dict[str, list[np.ndarray]] = {c: [] for c in output_columns}
    b_columns: dict[str, list[np.ndarray]] = {c: [] for c in output_columns}
    ids, truth = None, {}
    for seed in seeds:
        a_dir, b_dir = Path(a_runs[seed]), Path(b_runs[seed])
        a, b = align_paired_predictions(read(a_dir, classes), read(b_dir, classes), names=(str(a_dir), str(b_dir)))
        if ids is None:
            ids = a["image_id"].to_numpy()
            truth = {c: a[c].to_numpy() for c in truth_columns}
        elif not np.array_equal(ids, a["image_id"].to_numpy()):
            raise DataError(f"{a_dir}: seed {seed} was evaluated on other test images than seed {seeds[0]}")
        for column in truth_columns:
            if not (np.array_equal(a[column].to_numpy(), truth[column]) and np.array_equal(b[column].to_numpy(), truth[column])):
                raise DataError(f"{a_dir} and {b_dir}: the annotations ({column}) differ between "
                                f"runs, so they were not scored against the same reference")
        for column in output_columns:
            a_columns[column].append(a[column].to_numpy())
            b_columns[column].append(b[column].to_numpy())
    stack = lambda cols: {k: np.column_stack(v) for k, v in cols.items()}  # noqa: E731
    return PairedData(ids, truth, stack(a_columns), stack(b_columns))


# ---------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------
def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (statsmodels) over the defined ones; None where p is undefined.

    With one test per class some interval excludes 0 by chance alone; the adjusted p says how much
    a single 'win' is worth. Fewer than two defined p-values: nothing to adjust (all None)."""
    defined = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    adjusted: list[float | None] = [None] * len(p_values)
    if len(defined) < 2:
        return adjusted
    _, holm, _, _ = multipletests([p_values[i] for i in defined], alpha=0.05, method="holm")
    for i, p in zip(defined, holm):
        adjusted[i] = float(p)
    return adjusted


def paired_differences(task: str, classes: Sequence[str], a_runs: Mapping[int, Path], b_runs: Mapping[int, Path],
                       *, n_bootstrap: int, bootstrap_seed: int) -> dict[str, Any]:
    """Differences a - b over the seeds both have.

    Returns ``seeds``, ``n_images``, ``results`` (one entry per ``paired_statistics`` item: its
    ``key``, ``code``, the bootstrap result and ``p_holm``) and ``per_seed`` (the headline result of
    each seed pair, when there are several seeds)."""
    seeds = sorted(set(a_runs) & set(b_runs))
    if not seeds:
        return {"seeds": [], "n_images": 0, "results": [], "per_seed": []}
    data = paired_data(task, classes, a_runs, b_runs, seeds)
    statistics = paired_statistics(task, classes)
    results = []
    for item in statistics:
        result = paired_bootstrap_difference(seed_mean(item.statistic), data.truth[item.truth], data.a[item.output],
                                             data.b[item.output], n_resamples=n_bootstrap, seed=bootstrap_seed)
        results.append({"key": item.key, "code": item.code, **result, "p_holm": None})
    # The headline figure is one planned test; the per-class rows are a family.
    for entry, p in zip(results[1:], holm_adjust([r.get("p_value") for r in results[1:]])):
        entry["p_holm"] = p
    per_seed = []
    if len(seeds) > 1:
        headline = statistics[0]
        for i, seed in enumerate(seeds):
            result = paired_bootstrap_difference(headline.statistic, data.truth[headline.truth],
                                                 data.a[headline.output][:, i], data.b[headline.output][:, i],
                                                 n_resamples=n_bootstrap, seed=bootstrap_seed)
            per_seed.append({"seed": seed, "key": headline.key, "code": None, **result})
    return {"seeds": seeds, "n_images": len(data.image_ids), "results": results, "per_seed": per_seed}
