"""The evaluate stage of one run: predictions -> metrics.json + confusion tables and heatmaps.

The figures are computed once here (pipeline.evaluation.classification / .segmentation); every
report reads them back from metrics.json.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.evaluation.classification import compute_classification_metrics, write_classification_tables
from pipeline.evaluation.instances import segmentation_inputs
from pipeline.evaluation.segmentation import compute_segmentation_metrics, write_segmentation_tables
from pipeline.evaluation.stats import write_metrics_json
from pipeline.errors import DataError


def _clinical_labels(codes: list[str], names: dict[str, str]) -> list[str]:
    return [f"{names.get(c, c)} ({c})" if names.get(c, c) != c else c for c in codes]


def evaluate_run(cfg: dict) -> dict:
    run_dir = Path(cfg["run_dir"])
    predictions_path = run_dir / "predictions.csv"
    if not predictions_path.is_file():
        raise DataError(f"{predictions_path} does not exist: run `pipeline predict` first")
    predictions = pd.read_csv(predictions_path, dtype={"image_id": str, "label": str, "pred": str}, keep_default_na=False)
    dataset, evaluation = cfg["dataset"], cfg["evaluation"]
    common = dict(experiment=cfg["experiment"], seed=cfg["seed"], n_bootstrap=evaluation["n_bootstrap"],
                  bootstrap_seed=evaluation["bootstrap_seed"])
    if cfg["task"] == "classification":
        metrics = compute_classification_metrics(predictions, dataset["classes"], dataset["class_names"],
                                                 source=str(predictions_path), **common)
        write_classification_tables(metrics, run_dir)
        row_labels = col_labels = _clinical_labels(metrics["classes"], metrics["class_names"])
    else:
        samples, settings = segmentation_inputs(predictions, run_dir, dataset, evaluation)  # + instances, grades
        metrics, lesions, per_image = compute_segmentation_metrics(
            samples, dataset["classes"], dataset["class_names"], iou_threshold=evaluation["iou_threshold"],
            **settings, **common)
        metrics["label_origin"] = _label_origin(dataset)
        write_segmentation_tables(metrics, run_dir, lesions, per_image)
        block = metrics["confusion_matrix"]
        names = metrics["class_names"]
        row_labels = _clinical_labels(block["row_labels"], names)
        col_labels = _clinical_labels(block["col_labels"], names)
    _confusion_figures(metrics, row_labels, col_labels, run_dir)
    write_metrics_json(metrics, run_dir / "metrics.json")  # last: its presence means the stage finished
    return metrics


def _label_origin(dataset: dict) -> str:
    manifest = pd.read_csv(dataset["manifest"], dtype=str, keep_default_na=False)
    if "label_origin" not in manifest:
        return "unknown"
    return ", ".join(sorted(set(manifest.loc[manifest["split"] == "test", "label_origin"]) - {""})) or "unknown"


def _confusion_figures(metrics: dict, row_labels: list[str], col_labels: list[str], run_dir: Path) -> None:
    from pipeline.reporting.figures import plot_confusion_matrix

    counts = metrics["confusion_matrix"]["counts"]
    extra = {} if row_labels == col_labels else {"col_labels": col_labels, "xlabel": "Predicted lesion",
                                                 "ylabel": "True lesion"}
    plot_confusion_matrix(counts, row_labels, run_dir / "confusion_matrix.png", normalize=False, **extra)
    plot_confusion_matrix(counts, row_labels, run_dir / "confusion_matrix_normalized.png", normalize=True, **extra)
