"""The evaluate stage of one run: predictions -> metrics.json and its tables (data only).

The figures are computed once here (pipeline.evaluation.classification / .segmentation) and
stored in metrics.json; the report stage draws them.
"""

from __future__ import annotations

from pathlib import Path


from pipeline import rundir
from pipeline.data.manifest import read_manifest
from pipeline.evaluation.classification import compute_classification_metrics, write_classification_tables
from pipeline.evaluation.instances import segmentation_inputs
from pipeline.evaluation.segmentation import compute_segmentation_metrics, write_segmentation_tables

# task -> (metrics.json key of the headline figure, its name in prose)
HEADLINE = {"classification": ("balanced_accuracy", "balanced accuracy"), "segmentation": ("mean_dice", "mean Dice")}


def evaluate_run(cfg: rundir.RunConfig) -> dict:
    run_dir = Path(cfg["run_dir"])
    dataset, evaluation = cfg["dataset"], cfg["evaluation"]
    predictions = rundir.read_predictions(run_dir)
    common = dict(experiment=cfg["experiment"], seed=cfg["seed"], n_bootstrap=evaluation["n_bootstrap"],
                  bootstrap_seed=evaluation["bootstrap_seed"])
    if cfg["task"] == "classification":
        val_path = run_dir / rundir.VAL_PREDICTIONS
        val_predictions = rundir.read_predictions(run_dir, name=rundir.VAL_PREDICTIONS) if val_path.is_file() else None
        metrics = compute_classification_metrics(predictions, dataset["classes"], dataset["class_names"],
                                                 source=str(run_dir / rundir.PREDICTIONS),
                                                 val_predictions=val_predictions,
                                                 groups=_test_groups(dataset, predictions),
                                                 metadata=_test_metadata(dataset, predictions), **common)
        write_classification_tables(metrics, run_dir)
    else:
        samples, settings = segmentation_inputs(predictions, run_dir, dataset, evaluation)  # + instances, grades
        metrics, lesions, per_image = compute_segmentation_metrics(
            samples, dataset["classes"], dataset["class_names"], iou_threshold=evaluation["iou_threshold"],
            **settings, **common)
        metrics["label_origin"] = _label_origin(dataset)
        write_segmentation_tables(metrics, run_dir, lesions, per_image)
    rundir.write_metrics(metrics, run_dir / rundir.METRICS)  # last: its presence means the stage finished
    return metrics


def _test_groups(dataset: dict, predictions) -> list[str] | None:
    """The lesion / patient (``group_id``) of each prediction row, from the manifest, so the bootstrap
    resamples lesions, not images; None when the manifest does not give every row one."""
    manifest = read_manifest(dataset["manifest"])
    if "group_id" not in manifest:
        return None
    group_of = dict(zip(manifest["image_id"].astype(str), manifest["group_id"].astype(str)))
    groups = [group_of.get(str(i), "") for i in predictions["image_id"]]
    return groups if all(groups) else None


def _test_metadata(dataset: dict, predictions):
    """Sex, age and site of each prediction row from the manifest (the columns it has), for the
    per-subgroup figures; None when it has none of them."""
    manifest = read_manifest(dataset["manifest"])
    columns = [c for c in ("sex", "age", "site") if c in manifest.columns]
    if not columns:
        return None
    rows = manifest.assign(image_id=manifest["image_id"].astype(str)).set_index("image_id")  # ids are unique
    return rows.reindex(predictions["image_id"].astype(str))[columns].reset_index(drop=True)


def _label_origin(dataset: dict) -> str:
    manifest = read_manifest(dataset["manifest"])
    if "label_origin" not in manifest:
        return "unknown"
    return ", ".join(sorted(set(manifest.loc[manifest["split"] == "test", "label_origin"]) - {""})) or "unknown"
