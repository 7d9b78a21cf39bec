"""The run-directory contract: what one run (results/<experiment>/seed<k>/) holds, and the one
reader and one writer for each file that more than one stage reads.

Every stage imports its file names from here, so a name or a column changes in one place. This
module sits below every layer (evaluation, reporting, training and the CLI all import it), so it
depends on nothing of the package but ``atomic`` and ``errors``. docs/ARCHITECTURE.md describes
each file's columns and the run config's fields.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pandas as pd
import yaml

from pipeline.atomic import write_csv, write_text
from pipeline.errors import ConfigError, DataError

# Files of one run, relative to its folder.
RUN_CONFIG = "run.yaml"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_CONFIG = f"{CHECKPOINT_DIR}/config.yaml"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/last.pt"
BEST_CHECKPOINT = f"{CHECKPOINT_DIR}/best.pt"
SKLEARN_CHECKPOINT = f"{CHECKPOINT_DIR}/best.json"  # a `kind: sklearn` model as plain numbers (no pickle)
TRAINING_SUMMARY = "training_summary.json"
HISTORY = "history.csv"
LOSS_WEIGHTS = "loss_weights.csv"
TENSORBOARD = "tensorboard"  # train.tensorboard: event files
SALIENCY_DIR = "saliency"  # classification: Grad-CAM++ overlays of the report's boundary cases
PREDICTIONS = "predictions.csv"
# classification: the same model's predictions on the validation split, where operating thresholds
# are chosen before they are applied to the test split
VAL_PREDICTIONS = "val_predictions.csv"
LOGIT_OFFSETS = "logit_offsets.json"
MASK_DIR = "masks"
POSTPROCESSING = "postprocessing.json"  # segmentation post-processing chosen on validation
METRICS = "metrics.json"
CONFUSION_MATRIX = "confusion_matrix.csv"
CONFUSION_MATRIX_NORMALIZED = "confusion_matrix_normalized.csv"
PER_CLASS = "per_class.csv"
LESIONS = "lesions.csv"
PER_IMAGE = "per_image.csv"
REPORT = "report.html"
FIGURE_DIR = "figures"

# Columns read as text whatever they hold ("0", "NA" and "" are class codes or ids, not numbers).
_TEXT_COLUMNS = {"image_id": str, "label": str, "pred": str, "true_type": str, "pred_type": str}


class DatasetSettings(TypedDict):
    """The ``dataset`` block of a run config (the workflow config's dataset, resolved)."""

    name: str
    task: str
    adapter: str
    root: str
    mask_root: str
    params: dict[str, Any]
    classes: list[str]
    class_names: dict[str, str]
    grouping: str
    split: dict[str, Any]
    manifest: str


class RunConfig(TypedDict):
    """The resolved settings of one run (``run.yaml``): self-contained, all a stage reads.

    The fields are described in docs/ARCHITECTURE.md ("Run config")."""

    experiment: str
    seed: int
    task: str
    dataset: DatasetSettings
    model: dict[str, Any]
    loss: dict[str, Any]
    sampler: dict[str, Any]
    train: dict[str, Any]
    predict: dict[str, Any]
    evaluation: dict[str, Any]
    run_dir: str
    code_version: str


RUN_CONFIG_FIELDS = tuple(RunConfig.__annotations__)


# ------------------------------------------------------------------------------------ run config
def read_run_config(path: str | os.PathLike[str]) -> RunConfig:
    """A run config written by `pipeline resolve` (or the Snakemake resolve rule)."""
    return read_yaml_mapping(path)  # type: ignore[return-value]


def read_yaml_mapping(path: str | os.PathLike[str]) -> dict:
    """A YAML file whose top level is a mapping (``yaml.safe_load``); errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


# train settings that do not change what is trained: where it is logged, and the decode cache
# (bit-identical to decoding per item, tests/data/test_cache.py)
NOT_TRAINING_KEYS = ("tensorboard", "decode_cache")


def fingerprint(cfg: Mapping[str, Any], *, with_code: bool = True) -> str:
    """What makes two runs the same training: everything but where it is written. Resuming also
    requires the same code version; using a finished checkpoint does not."""
    keys = ("experiment", "seed", "task", "dataset", "model", "loss", "sampler", "train")
    keys += ("code_version",) if with_code else ()
    same = {k: cfg[k] for k in keys}
    same["train"] = {k: v for k, v in cfg["train"].items() if k not in NOT_TRAINING_KEYS}
    blob = json.dumps(same, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_run_config(cfg: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    return write_text(path, yaml.safe_dump(dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------------- predictions
def read_table(path: str | os.PathLike[str], required: Sequence[str] = ("image_id",), *,
               produced_by: str = "pipeline predict") -> pd.DataFrame:
    """A run's CSV table with its text columns kept as text; a missing file or column -> DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; run `{produced_by}` first")
    header = pd.read_csv(path, nrows=0).columns
    # Text columns keep "" and "NA" as text; in the others an empty cell is a missing number.
    frame = pd.read_csv(path, dtype={c: str for c in header if c in _TEXT_COLUMNS}, keep_default_na=False,
                        na_values={c: [""] for c in header if c not in _TEXT_COLUMNS})
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected {list(required)}")
    return frame


def prediction_columns(task: str, classes: Sequence[str]) -> list[str]:
    """The columns predictions.csv must have for a task (see docs/ARCHITECTURE.md)."""
    if task == "classification":
        return ["image_id", "label", "pred"] + [f"prob_{c}" for c in classes]
    return ["image_id", "pred_mask_path", "true_mask_path"]


def classification_predictions(image_ids: Sequence[str], labels: Sequence[str], probs: np.ndarray,
                               classes: Sequence[str]) -> pd.DataFrame:
    """predictions.csv rows of a classifier: image_id, label, pred (the most probable class), and
    prob_<CLASS> in class-list order from ``probs`` (n_images, n_classes)."""
    probs = np.asarray(probs)
    table = pd.DataFrame({"image_id": np.asarray(image_ids), "label": np.asarray(labels),
                          "pred": np.asarray(classes)[probs.argmax(axis=1)]})
    for i, code in enumerate(classes):
        table[f"prob_{code}"] = probs[:, i]
    return table


def read_predictions(run_dir: str | os.PathLike[str], required: Sequence[str] = ("image_id",),
                     name: str = PREDICTIONS) -> pd.DataFrame:
    """predictions.csv of a run (or ``name``: VAL_PREDICTIONS), checked for the ``required`` columns."""
    return read_table(Path(run_dir) / name, required)


def write_predictions(table: pd.DataFrame, run_dir: str | os.PathLike[str], name: str = PREDICTIONS) -> Path:
    return write_csv(table, Path(run_dir) / name)


def _read_json_object(path: Path, hint: str = "") -> dict[str, Any] | None:
    """A run file holding one JSON object, or None when it is absent; unreadable JSON or another JSON
    type is a DataError naming the file (``hint`` says how to remake it)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}){hint}") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(record).__name__}{hint}")
    return record


# ---------------------------------------------------------------------------------- logit offsets
def write_logit_offsets(record: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> Path:
    """logit_offsets.json: post-hoc offsets the predict stage fitted on the validation split and
    added to the test logits (``method``, ``split``, ``n_images``, ``classes``, ``offsets`` in
    class-list order, ``val_balanced_accuracy`` before/after)."""
    return write_metrics(record, Path(run_dir) / LOGIT_OFFSETS)


def read_logit_offsets(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's logit_offsets.json, or None when its predictions use no offsets."""
    path = Path(run_dir) / LOGIT_OFFSETS
    record = _read_json_object(path)
    if record is None:
        return None
    missing = [key for key in ("classes", "offsets") if key not in record]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing}")
    return record


def read_postprocessing(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's postprocessing.json (segmentation settings the predict stage chose on the validation
    split: threshold, area, count calibration), or None when it did not tune."""
    return _read_json_object(Path(run_dir) / POSTPROCESSING, "; rerun `pipeline predict`")


# --------------------------------------------------------------------------------------- metrics
def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays unwrapped, tuples to lists, NaN/inf to ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write a {type(obj).__name__} to metrics.json: {obj!r}")


def write_metrics(metrics: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``metrics`` as JSON atomically; NaN becomes ``null`` (the file is strict JSON)."""
    text = json.dumps(to_jsonable(metrics), indent=2, allow_nan=False, ensure_ascii=False)
    return write_text(path, text + "\n")


# ------------------------------------------------------------------------------ training summary
def write_training_summary(summary: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> Path:
    """training_summary.json of a run (the train stage's output): epochs, ``steps`` (optimizer
    steps taken), best epoch and validation score, history, training class counts."""
    return write_text(Path(run_dir) / TRAINING_SUMMARY, json.dumps(dict(summary), indent=2, default=str))


def read_training_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """training_summary.json of a run, or None when the run has none (e.g. predictions made elsewhere)."""
    return _read_json_object(Path(run_dir) / TRAINING_SUMMARY)


# Keys a report of each task needs in metrics.json.
METRICS_KEYS = {
    "classification": ("task", "classes", "balanced_accuracy", "per_class", "confusion_matrix"),
    "segmentation": ("task", "classes", "mean_dice", "per_class"),
}


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    """metrics.json (a run folder or the file itself), checked for the keys its task's report needs."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    if not path.is_file():
        raise DataError(f"{path}: metrics file not found; run `pipeline evaluate` first")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    task = metrics.get("task") if isinstance(metrics, dict) else None
    required = METRICS_KEYS.get(task)
    if required is None:
        raise DataError(f"{path}: 'task' must be 'classification' or 'segmentation', got {task!r}")
    missing = [key for key in required if key not in metrics]
    if missing:
        raise DataError(f"{path}: missing key(s) {missing} needed by the {task} report")
    return metrics
