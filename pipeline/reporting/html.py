"""One self-contained HTML report per experiment run (results/<experiment>/seed<k>/report.html).

The report reads ``metrics.json`` for every figure it states (it never recomputes a metric),
``predictions.csv`` only to *select* the boundary cases shown in the gallery, and the split
manifest for the data section. Figures are matplotlib PNGs embedded as ``data:`` URIs and the
page carries no script, so the file opens offline and a Content-Security-Policy forbids
anything else. Jinja2 autoescaping is on: labels, file names and config strings are text.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import yaml
from PIL import Image, UnidentifiedImageError

from pipeline import __version__, rundir
from pipeline.atomic import write_bytes, write_text
from pipeline.data import io
from pipeline.data.manifest import SPLITS, read_manifest, resolve
from pipeline.errors import DataError
from pipeline.evaluation.collapse import collapse_text
from pipeline.reporting import captions, figures
from pipeline.evaluation.cases import boundary_cases

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
THUMBNAIL_PX = 256
# Per-class table columns: metrics.json key -> column heading.
CLASS_TABLE_COLUMNS = {
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "f1": "F1",
    "auc": "AUC",
}
PROPORTION_KEYS = {"sensitivity", "specificity", "ppv", "npv", "f1"}


# ---------------------------------------------------------------------------------------------
# Rendering helpers
# ---------------------------------------------------------------------------------------------
def environment() -> jinja2.Environment:
    """Jinja2 environment with autoescaping on for every template (labels are untrusted text)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


@dataclass
class FigureSink:
    """Turns matplotlib figures into template entries; also writes each PNG to ``figures_dir``
    when one is given (for Snakemake's ``report()``)."""

    figures_dir: Path | None = None
    written: list[Path] = field(default_factory=list)

    def add(self, fig: Any, name: str, title: str, caption: str) -> dict[str, str]:
        png = figures.png_bytes(fig)
        if self.figures_dir is not None:
            self.written.append(write_bytes(Path(self.figures_dir) / f"{name}.png", png))
        return {"id": name, "title": title, "uri": figures.data_uri(png), "caption": caption}


def cell(estimate: Any, *, percent: bool = True, digits: int = 1) -> dict[str, Any]:
    """A table cell: the value, its 95% CI, both together (``text``) and the raw value (kept in a
    data attribute so that tests and scripts can read the exact stored number)."""
    value = estimate.get("value") if isinstance(estimate, Mapping) else estimate
    ci = estimate.get("ci95") if isinstance(estimate, Mapping) else None
    if not captions.is_number(value):
        return {"text": "n/a", "main": "n/a", "ci": "", "value": ""}
    main = captions.pct(value, digits) if percent else f"{value:.3f}"
    has_ci = bool(ci) and all(captions.is_number(v) for v in ci)
    interval = captions.ci_text(ci, percent=percent, digits=digits if percent else 3) if has_ci else ""
    return {
        "text": f"{main} ({interval})" if has_ci else main,
        "main": main,
        "ci": interval.replace("95% CI ", "") if has_ci else "",
        "value": repr(float(value)),
    }


def scalar(entry: Any) -> float | None:
    """A stored figure as a float: plain numbers and {'value': x} both occur; None when missing."""
    if isinstance(entry, Mapping):
        entry = entry.get("value")
    return float(entry) if captions.is_number(entry) else None


def sha256_of(path: Path) -> str | None:
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def read_classification_predictions(run_dir: Path, classes: Sequence[str]) -> pd.DataFrame:
    """predictions.csv of a classification run, checked against the class list."""
    frame = rundir.read_predictions(run_dir, rundir.prediction_columns("classification", classes))
    path = Path(run_dir) / rundir.PREDICTIONS
    for column in ("label", "pred"):
        unknown = sorted(set(frame[column]) - set(classes))
        if unknown:
            raise DataError(f"{path}: column {column!r} holds unknown class(es) {unknown[:5]}; classes are {list(classes)}")
    return frame


def class_names_from_config(dataset: Mapping[str, Any]) -> dict[str, str]:
    """code -> clinician name from the resolved dataset config (classes as a mapping, or a list
    plus a class_names mapping)."""
    classes = dataset.get("classes") or {}
    if isinstance(classes, Mapping):
        return {str(k): str(v) for k, v in classes.items()}
    names = dataset.get("class_names") or {}
    return {str(c): str(names.get(c, c)) for c in classes}


def display_labels(metrics: Mapping[str, Any], dataset: Mapping[str, Any], source: Path) -> dict[str, str]:
    """Ordered code -> 'Melanoma (MEL)', in metrics.json's class order, checked against the config."""
    codes = [str(c) for c in metrics["classes"]]
    configured = class_names_from_config(dataset)
    if configured and list(configured) != codes:
        raise DataError(
            f"{source}: classes {codes} differ from the config's class list {list(configured)} "
            f"(same codes in the same order are required)"
        )
    stored = metrics.get("class_names")
    stored = dict(zip(codes, stored)) if isinstance(stored, list) else dict(stored or {})
    return {c: captions.display_name(c, configured.get(c) or stored.get(c)) for c in codes}


def read_thumbnail(path: Path, max_px: int = 256) -> np.ndarray | None:
    """An image shrunk to a thumbnail (RGB uint8); None when unreadable, so that one moved file
    greys out a gallery tile (and is listed in a visible warning) instead of losing the report."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((max_px, max_px))
            return np.asarray(image)
    except (FileNotFoundError, UnidentifiedImageError, OSError):
        return None


# ---------------------------------------------------------------------------------------------
# Data section
# ---------------------------------------------------------------------------------------------
def data_section(
    config: Mapping[str, Any],
    task: str,
    labels: Mapping[str, str],
    sink: FigureSink,
    lesion_counts: Mapping[str, int] | None = None,
    label_origin: str | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Class counts per split, imbalance, grouping, source and label origin, from the manifest.

    Segmentation manifests carry no per-type counts, so the lesion counts shown are the annotated
    test lesions per type, as counted by the evaluation (``per_class.support``)."""
    dataset = config["dataset"]
    manifest_file = Path(dataset["manifest"])
    manifest = read_manifest(manifest_file)
    grouping = dataset.get("grouping")
    splits = [s for s in SPLITS if (manifest["split"] == s).any()]
    origins = _value_counts(manifest, "label_origin")
    if not origins:
        recorded = label_origin
        origins = {o.strip(): None for o in str(recorded).split(",")} if recorded else {}
    section: dict[str, Any] = {
        "dataset": str(dataset.get("name", "")),
        "adapter": str(dataset.get("adapter", "")),
        "root": str(dataset.get("root", "")),
        "manifest": str(manifest_file),
        "grouping": grouping or "not recorded",
        "splits": splits,
        "images_per_split": {s: int((manifest["split"] == s).sum()) for s in splits},
        "groups_per_split": {s: int(manifest.loc[manifest["split"] == s, "group_id"].nunique()) for s in splits},
        "sources": _value_counts(manifest, "source"),
        "label_origins": origins,
        "label_warning": next((w for w in map(captions.box_label_warning, origins) if w), None),
        "count_header": splits,
        "count_rows": [],
        "imbalance_ratio": "n/a",
        "figure": None,
    }
    if task == "classification":
        table = {s: manifest.loc[manifest["split"] == s, "label"].value_counts() for s in splits}
        table = {s: {c: int(table[s].get(c, 0)) for c in labels} for s in splits}
        section["count_rows"] = [
            {"label": labels[c], "counts": [table[s][c] for s in splits], "total": sum(table[s][c] for s in splits)}
            for c in labels
        ]
        train = table.get("train", {})
        section["imbalance_ratio"] = _ratio(train, "training images")
        caption = section["caption"] = captions.data_caption(train, labels, grouping)
        section["figure"] = sink.add(figures.plot_class_counts(table, labels), "class_counts",
                                     "Images per class and split", caption)
    else:
        counts = dict(lesion_counts or {})
        section["count_header"] = ["annotated test lesions"]
        section["count_rows"] = [{"label": labels[c], "counts": [counts.get(c, 0)], "total": counts.get(c, 0)} for c in labels]
        section["imbalance_ratio"] = _ratio(counts, "annotated test lesions")
        section["caption"] = captions.segmentation_data_caption(section["images_per_split"], counts, labels, grouping)
    return section, manifest


def _ratio(counts: Mapping[str, int], unit: str) -> str:
    """Largest over smallest non-empty class, e.g. '58.3 : 1 (training images)'."""
    positive = [n for n in counts.values() if n > 0]
    if not positive:
        return "n/a"
    return f"{max(positive) / min(positive):.1f} : 1 ({unit})"


def _value_counts(frame: pd.DataFrame, column: str) -> dict[str, int]:
    if column not in frame.columns:
        return {}
    values = frame[column].astype(str).replace("", "unrecorded")
    return {str(k): int(v) for k, v in values.value_counts().items()}


# ---------------------------------------------------------------------------------------------
# Classification sections
# ---------------------------------------------------------------------------------------------
def _confused_with(entry: Any, labels: Mapping[str, str], top: int = 2) -> str:
    """most_confused_with is a list of {'class', 'count'} (most frequent first); a bare code is
    accepted too."""
    if isinstance(entry, Mapping):
        entry = [entry]
    if isinstance(entry, list):
        parts = [
            f"{labels.get(str(e.get('class')), str(e.get('class')))} ({e.get('count')})"
            for e in entry[:top] if isinstance(e, Mapping) and e.get("class") is not None
        ]
        return "; ".join(parts) or "\u2013"
    if entry in (None, ""):
        return "\u2013"
    return labels.get(str(entry), str(entry))


def class_table(metrics: Mapping[str, Any], labels: Mapping[str, str], highlight: str | None) -> list[dict[str, Any]]:
    """One row per class with each stored figure and its CI, plus the class's caption."""
    matrix = metrics["confusion_matrix"]
    order = [str(c) for c in matrix["labels"]]
    counts = matrix["counts"]
    row_labels = [labels.get(c, c) for c in order]
    rows = []
    for code, label in labels.items():
        stats = metrics["per_class"].get(code)
        if stats is None:
            raise DataError(f"metrics.json: per_class has no entry for class {code!r}")
        index = order.index(code)
        support = int(scalar(stats.get("support")) or 0)
        rows.append({
            "code": code,
            "label": label,
            "highlight": code == highlight,
            "support": support,
            "cells": {key: cell(stats.get(key), percent=key in PROPORTION_KEYS) for key in CLASS_TABLE_COLUMNS},
            **_operating_cells(stats),
            "most_confused_with": _confused_with(stats.get("most_confused_with"), labels),
            "caption": captions.class_detection_caption(
                label, support, stats.get("sensitivity") or {}, counts[index], row_labels, index
            ),
        })
    return rows


SUBGROUP_TITLES = {"sex": "Sex", "age": "Age (years)", "site": "Body site"}


def subgroup_tables(subgroups: Mapping[str, Any], labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """One table per attribute (sex, age band, site): sensitivity per class in each subgroup, with
    its CI; a class with too few images in a subgroup is marked, not hidden."""
    tables = []
    for attribute, groups in subgroups.items():
        rows = []
        for name, entry in groups.items():
            cells = {}
            for code in labels:
                stats = entry["per_class"].get(code) or {}
                cells[code] = {**cell(stats), "small": bool(stats.get("too_small")), "n": stats.get("n", 0)}
            rows.append({"name": name, "n_images": entry["n_images"], "cells": cells})
        tables.append({"attribute": attribute, "title": SUBGROUP_TITLES.get(attribute, attribute), "rows": rows,
                       "columns": list(labels.items())})
    return tables


def _operating_cells(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The per-class table's two operating-point cells: test rates at the thresholds chosen on the
    validation split when the run has them, else the readout of the test ROC curve."""
    chosen = stats.get("operating_points_val")
    if chosen:
        return {"op_sens": cell(chosen["sens_at_95_spec"]["sensitivity"]), "op_sens_key": "test_sens_at_val_threshold",
                "op_spec": cell(chosen["spec_at_95_sens"]["specificity"]), "op_spec_key": "test_spec_at_val_threshold"}
    return {"op_sens": cell(stats.get("sens_at_95_spec")), "op_sens_key": "sens_at_95_spec",
            "op_spec": cell(stats.get("spec_at_95_sens")), "op_spec_key": "spec_at_95_sens"}


def headline(metrics: Mapping[str, Any], n_images: int) -> list[dict[str, Any]]:
    calibration = metrics.get("calibration") or {}
    cards = [
        {"name": "Balanced accuracy", "key": "balanced_accuracy", **cell(metrics["balanced_accuracy"])},
        {"name": "Accuracy", "key": "accuracy", **cell(metrics.get("accuracy"))},
        {"name": "Macro AUC", "key": "macro_auc", **cell(metrics.get("macro_auc"), percent=False)},
        {"name": "ECE", "key": "ece", **cell(calibration.get("ece"), percent=False)},
        {"name": "Test images", "key": "n_images", "text": captions.count(n_images), "value": str(n_images)},
    ]
    return cards


def gallery(
    selected: pd.DataFrame,
    predictions: pd.DataFrame,
    manifest: pd.DataFrame,
    root: Path,
    labels: Mapping[str, str],
    missing: list[str],
    saliency_dir: Path | None = None,
) -> tuple[list[figures.Case], list[dict[str, Any]]]:
    """Cases for the gallery figure and rows for the table under it (thumbnails from root/image_path,
    or the predict stage's Grad-CAM++ overlay of the image where ``saliency_dir`` holds one)."""
    paths = dict(zip(manifest["image_id"], manifest["image_path"]))
    by_id = predictions.set_index("image_id")
    cases, rows = [], []
    for record in selected.itertuples(index=False):
        overlay = saliency_dir / f"{record.image_id}.png" if saliency_dir is not None else None
        image = read_thumbnail(overlay, THUMBNAIL_PX) if overlay is not None and overlay.is_file() else None
        if image is not None:
            pass  # the Grad-CAM++ overlay of the crop stands in for the photo
        elif record.image_id in paths:
            path = resolve(paths[record.image_id], root)
            image = read_thumbnail(path, THUMBNAIL_PX)
            if image is None:
                missing.append(str(path))
        else:
            missing.append(f"{record.image_id} (not in the manifest)")
        probabilities = {c: float(by_id.at[record.image_id, f"prob_{c}"]) for c in labels}
        cases.append(figures.Case(record.image_id, image, labels[record.label], labels[record.pred], probabilities,
                                  true_key=record.label, pred_key=record.pred))
        rows.append({
            "image_id": record.image_id,
            "true": labels[record.label],
            "pred": labels[record.pred],
            "confidence": f"{record.confidence:.2f}",
            "p_true": f"{record.p_true:.2f}",
            "margin": f"{record.margin:.2f}",
        })
    return cases, rows


def classification_sections(
    metrics: Mapping[str, Any],
    predictions: pd.DataFrame,
    manifest: pd.DataFrame,
    config: Mapping[str, Any],
    labels: Mapping[str, str],
    sink: FigureSink,
) -> dict[str, Any]:
    codes = list(labels)
    highlight = "MEL" if "MEL" in labels else None  # melanoma, the class a missed call costs most
    matrix = metrics["confusion_matrix"]
    matrix_labels = [labels.get(str(c), str(c)) for c in matrix["labels"]]
    counts = matrix["counts"]
    n_images = int(sum(sum(row) for row in counts))
    section: dict[str, Any] = {
        "headline": headline(metrics, n_images),
        "headline_caption": captions.headline_caption("Balanced accuracy", metrics["balanced_accuracy"], n_images, len(codes)),
        "columns": CLASS_TABLE_COLUMNS,
        "rows": class_table(metrics, labels, highlight),
        "val_operating_points": any(stats.get("operating_points_val") for stats in metrics["per_class"].values()),
        "bootstrap_unit": ("whole lesions or patients (group_id), their images resampled together"
                           if str((metrics.get("bootstrap") or {}).get("unit", "image")).startswith("lesion")
                           else "images"),
        "highlight": labels.get(highlight) if highlight else None,
        "subgroups": subgroup_tables(metrics.get("subgroups") or {}, labels),
        "confusion": [
            sink.add(figures.plot_confusion_matrix(counts, matrix_labels, None, normalize=False),
                     "confusion_matrix_counts", "Confusion matrix (counts)",
                     captions.confusion_caption(counts, matrix_labels, normalized=False)),
            sink.add(figures.plot_confusion_matrix(counts, matrix_labels, None, normalize=True),
                     "confusion_matrix_normalized", "Confusion matrix (row-normalised)",
                     captions.confusion_caption(counts, matrix_labels, normalized=True)),
        ],
    }
    section["roc"], section["operating_points"] = _roc(metrics, labels, highlight, sink)
    calibration = metrics.get("calibration") or {}
    ece = scalar(calibration.get("ece"))
    section["calibration"] = None
    if ece is not None and calibration.get("bins"):
        section["calibration"] = sink.add(
            figures.plot_reliability_diagram(calibration["bins"], ece), "reliability_diagram",
            "Reliability diagram", captions.calibration_caption(ece, calibration["bins"]),
        )
    section["galleries"], section["missing_images"] = _galleries(predictions, manifest, config, labels, sink)
    return section


def logit_offsets_section(record: Mapping[str, Any] | None, labels: Mapping[str, str]) -> dict[str, Any] | None:
    """The post-hoc logit offsets the predict stage fitted on the validation split (logit_offsets.json),
    as table rows and a caption; None when the predictions use none."""
    if record is None:
        return None
    rows = [{"label": labels.get(code, code), "offset": f"{offset:+.3f}"}
            for code, offset in zip(record["classes"], record["offsets"])]
    accuracy = record.get("val_balanced_accuracy") or {}
    before, after = scalar(accuracy.get("before")), scalar(accuracy.get("after"))
    caption = (f"The test predictions add these offsets to the model's logits before the softmax; they were "
               f"fitted on the {record.get('n_images', '?')} validation images only "
               f"({record.get('objective', record.get('method', ''))}).")
    if before is not None and after is not None:
        caption += f" Validation balanced accuracy {100 * before:.1f}% without them, {100 * after:.1f}% with them."
    return {"rows": rows, "caption": caption}


def _roc(
    metrics: Mapping[str, Any], labels: Mapping[str, str], highlight: str | None, sink: FigureSink
) -> tuple[dict[str, str] | None, list[dict[str, Any]]]:
    """The ROC grid (None when no class has a curve) and one operating-point caption per class."""
    per_class = metrics["per_class"]
    points = [
        {
            "label": labels[c],
            "highlight": c == highlight,
            "text": captions.operating_point_caption(
                labels[c], per_class[c].get("auc") or {}, _as_estimate(per_class[c].get("sens_at_95_spec")),
                _as_estimate(per_class[c].get("spec_at_95_sens")), per_class[c].get("operating_points_val"),
            ),
        }
        for c in labels
    ]
    points.sort(key=lambda p: not p["highlight"])
    roc = metrics.get("roc") or {}
    if not any(roc.get(c) for c in labels):
        return None, points
    aucs = {labels[c]: scalar(per_class[c].get("auc")) for c in labels if scalar(per_class[c].get("auc")) is not None}
    best = max(aucs.items(), key=lambda kv: kv[1]) if aucs else None
    worst = min(aucs.items(), key=lambda kv: kv[1]) if aucs else None
    figure = sink.add(
        figures.plot_roc_curves(roc, per_class, labels, None, highlight=highlight), "roc_curves",
        "ROC curves (one class vs the rest)", captions.roc_caption(sum(1 for c in labels if roc.get(c)), best, worst),
    )
    return figure, points


def _as_estimate(entry: Any) -> dict[str, Any] | None:
    if isinstance(entry, Mapping):
        return dict(entry)
    return {"value": entry} if captions.is_number(entry) else None


def _galleries(
    predictions: pd.DataFrame, manifest: pd.DataFrame, config: Mapping[str, Any], labels: Mapping[str, str],
    sink: FigureSink,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Both boundary-case galleries, and the test images that could not be read."""
    root = Path(config["dataset"].get("root", "."))
    wrong, ties, n_wrong = boundary_cases(predictions, list(labels))
    missing: list[str] = []
    result = []
    for kind, selected, n_candidates, title in (
        ("wrong", wrong, n_wrong, "Most confidently wrong"),
        ("tie", ties, len(predictions), "Nearest to a tie"),
    ):
        saliency = Path(config["run_dir"]) / rundir.SALIENCY_DIR if config.get("run_dir") else None
        cases, rows = gallery(selected, predictions, manifest, root, labels, missing, saliency)
        n_maps = sum(saliency is not None and (saliency / f"{c.image_id}.png").is_file() for c in cases)
        caption = captions.gallery_caption(kind, len(cases), n_candidates, n_saliency=n_maps)
        entry = {"id": f"gallery_{kind}", "title": title, "caption": caption, "rows": rows, "figure": None}
        if cases:
            entry["figure"] = sink.add(figures.plot_case_gallery(cases), f"gallery_{kind}", title, caption)
        result.append(entry)
    return result, sorted(set(missing))


# ---------------------------------------------------------------------------------------------
# Segmentation sections
# ---------------------------------------------------------------------------------------------
# Per-type table columns: metrics.json key -> (heading, shown as a percentage).
SEGMENTATION_TABLE_COLUMNS = {
    "dice": ("Dice", False),
    "iou": ("IoU", False),
    "sensitivity": ("Lesion sensitivity (right type)", True),
    "ppv": ("Lesion PPV (right type)", True),
    "f1": ("Lesion F1", True),
    "detected_any_type": ("Found as any type", True),
}


def segmentation_sections(
    metrics: Mapping[str, Any],
    predictions: pd.DataFrame,
    run_dir: Path,
    manifest: pd.DataFrame,
    config: Mapping[str, Any],
    labels: Mapping[str, str],
    sink: FigureSink,
) -> dict[str, Any]:
    """Per-type Dice/IoU and lesion detection, the lesion-type confusion matrix and overlays."""
    matrix = metrics.get("confusion_matrix") or {}
    rows = []
    for code, label in labels.items():
        stats = metrics["per_class"].get(code)
        if stats is None:
            raise DataError(f"metrics.json: per_class has no entry for lesion type {code!r}")
        rows.append({
            "code": code,
            "label": label,
            "support": int(scalar(stats.get("support")) or 0),
            "predicted": int(scalar(stats.get("predicted")) or 0),
            "cells": {key: cell(stats.get(key), percent=percent) for key, (_, percent) in SEGMENTATION_TABLE_COLUMNS.items()},
            "caption": _lesion_caption(code, labels, stats, matrix),
        })
    detection = metrics.get("lesion_detection") or {}
    count_error = metrics.get("lesion_count_error") or {}
    n_images = int(scalar(metrics.get("n_images")) or len(predictions))
    section: dict[str, Any] = {
        "headline": [
            {"name": "Mean Dice", "key": "mean_dice", **cell(metrics["mean_dice"], percent=False)},
            {"name": "Macro Dice (every lesion type weighs the same; the model-selection score)", "key": "macro_dice",
             **cell(metrics.get("macro_dice"), percent=False)},
            {"name": "Mean IoU", "key": "mean_iou", **cell(metrics.get("mean_iou"), percent=False)},
            {"name": "Lesions found (any type)", "key": "lesion_sensitivity", **cell(detection.get("sensitivity"))},
            {"name": "Predicted lesions that are real", "key": "lesion_ppv", **cell(detection.get("ppv"))},
            {"name": "Lesion count error per image (MAE)", "key": "count_mae", **cell(count_error.get("mae"), percent=False)},
            {"name": "Test images", "key": "n_images", "text": captions.count(n_images), "value": str(n_images)},
        ],
        "headline_caption": captions.segmentation_headline_caption(
            metrics["mean_dice"], detection.get("sensitivity"), detection.get("ppv"), n_images
        ),
        "columns": {key: heading for key, (heading, _) in SEGMENTATION_TABLE_COLUMNS.items()},
        "rows": rows,
        "iou_threshold": metrics.get("iou_threshold", "n/a"),
        "matching_rule": metrics.get("matching_rule", ""),
        "dice_rule": metrics.get("dice_rule", ""),
        "confusion": None,
    }
    if matrix.get("counts"):
        row_labels = [labels.get(str(c), str(c)) for c in matrix.get("row_labels", matrix.get("labels", []))]
        col_labels = [labels.get(str(c), str(c)) for c in matrix.get("col_labels", matrix.get("labels", []))]
        section["confusion"] = sink.add(
            figures.plot_confusion_matrix(matrix["counts"], row_labels, None, normalize=False, col_labels=col_labels,
                                          xlabel="Model's lesion type", ylabel="Annotated lesion type"),
            "lesion_confusion_matrix", "Lesion-type confusion matrix",
            captions.lesion_confusion_caption(matrix["counts"], row_labels, col_labels),
        )
    section["overlays"] = _overlays(predictions, run_dir, manifest, config, labels, sink)
    section["grading"] = grading_section(metrics.get("grading"))
    return section


def grading_section(grading: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Severity grading from lesion counts, as stored in metrics.json (None when absent)."""
    if not grading:
        return None
    matrix = grading.get("confusion_matrix") or {}
    labels = [str(label) for label in matrix.get("labels") or []]
    counts = matrix.get("counts") or []
    spearman = grading.get("spearman") or {}
    cards = [
        {"name": "Grade accuracy", "key": "grade_accuracy", **cell(grading.get("accuracy"))},
        {"name": "Quadratic-weighted kappa", "key": "grade_kappa", **cell(grading.get("kappa"), percent=False)},
        {"name": "Lesion count MAE", "key": "grade_count_mae", **cell(grading.get("count_mae"), percent=False)},
        {"name": "Spearman (counts)", "key": "grade_spearman", **cell(spearman.get("value"), percent=False)},
    ]
    found = grading.get("found")
    if found:  # graded from a count calibrated on validation: the uncalibrated figures beside it
        cards += [{"name": "Grade accuracy, lesions found (uncalibrated)", "key": "grade_accuracy_found",
                   **cell(found.get("accuracy"))},
                  {"name": "Count MAE, lesions found", "key": "grade_count_mae_found",
                   **cell(found.get("count_mae"), percent=False)}]
    return {
        "cards": cards,
        "caption": captions.grading_caption(grading),
        "reference": grading.get("reference", ""),
        "rule": " ".join(text for text in (grading.get("rule", ""), grading.get("count_rule", "")) if text),
        "thresholds": ", ".join(str(t) for t in grading.get("thresholds") or []),
        "labels": labels,
        "rows": [{"label": label, "counts": [int(c) for c in row]} for label, row in zip(labels, counts)],
    }


def _lesion_caption(code: str, labels: Mapping[str, str], stats: Mapping[str, Any], matrix: Mapping[str, Any]) -> str:
    """Caption of one lesion type's row of the lesion confusion matrix."""
    row_codes = [str(c) for c in matrix.get("row_labels", [])]
    col_codes = [str(c) for c in matrix.get("col_labels", [])]
    n_found, n_missed, called_as = 0, 0, []
    if matrix.get("counts") and code in row_codes:
        row = matrix["counts"][row_codes.index(code)]
        for column, n in zip(col_codes, row):
            if column == code:
                n_found = int(n)
            elif column in labels:
                called_as.append((labels[column], int(n)))
            else:  # the 'missed' column
                n_missed += int(n)
    return captions.lesion_type_caption(
        labels[code], int(scalar(stats.get("support")) or 0), n_found, stats.get("sensitivity"), called_as, n_missed,
        int(scalar(stats.get("predicted")) or 0), stats.get("ppv"), stats.get("missed_by_cause"),
    )


def _overlays(predictions: pd.DataFrame, run_dir: Path, manifest: pd.DataFrame, config: Mapping[str, Any],
              labels: Mapping[str, str], sink: FigureSink) -> dict[str, str] | None:
    """Best, median and worst test images by the evaluation's per-image Dice (per_image.csv)."""
    per_image_path = run_dir / rundir.PER_IMAGE
    table = rundir.read_table(per_image_path, ["image_id", "dice"], produced_by="pipeline evaluate")
    table = table.dropna(subset=["dice"]).sort_values(["dice", "image_id"], ascending=[False, True])
    if table.empty:
        return None
    dataset = config["dataset"]
    root = Path(dataset.get("root", "."))
    mask_root = Path(dataset.get("mask_root") or root)
    images = dict(zip(manifest["image_id"], manifest["image_path"]))
    true_masks = dict(zip(manifest["image_id"], manifest.get("mask_path", pd.Series(dtype=str))))
    pred_masks = dict(zip(predictions["image_id"], predictions["pred_mask_path"])) if "pred_mask_path" in predictions else {}
    picks = [("best", table.iloc[0]), ("median", table.iloc[len(table) // 2]), ("worst", table.iloc[-1])]
    cases, texts = [], []
    for which, pick in picks:
        image_id = str(pick["image_id"])
        if image_id not in images:
            raise DataError(f"{per_image_path}: image {image_id!r} is not in the manifest {dataset['manifest']}")
        image = io.read_rgb(resolve(images[image_id], root))
        true_mask = io.read_label_map(resolve(true_masks[image_id], mask_root))
        pred_mask = io.read_label_map(run_dir / pred_masks.get(image_id, f"{rundir.MASK_DIR}/{image_id}.png"))
        dice = float(pick["dice"])
        cases.append(figures.OverlayCase(f"{which.capitalize()}: {image_id} (Dice {dice:.2f})", image, true_mask, pred_mask))
        texts.append(captions.overlay_caption(which, image_id, dice))
    caption = " ".join(texts) + " Left: image; middle: annotation (solid outlines); right: model (dashed outlines)."
    return sink.add(figures.plot_segmentation_overlays(cases, list(labels.values())), "overlays",
                    "Best, median and worst test images by Dice", caption)


# ---------------------------------------------------------------------------------------------
# Provenance and entry point
# ---------------------------------------------------------------------------------------------
def provenance(run_dir: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    checkpoint = run_dir / rundir.BEST_CHECKPOINT
    if not checkpoint.is_file() and (run_dir / rundir.SKLEARN_CHECKPOINT).is_file():
        checkpoint = run_dir / rundir.SKLEARN_CHECKPOINT  # a `model.kind: sklearn` run
    manifest = Path(config["dataset"]["manifest"])
    plain = json.loads(json.dumps(config, default=str))  # Paths and the like as strings
    return {
        "experiment": str(config.get("experiment", "")),
        "seed": str(config.get("seed", "")),
        "code_version": str(config.get("code_version") or "not recorded"),
        "pipeline_version": __version__,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_of(checkpoint) or "not found",
        "manifest": str(manifest),
        "manifest_sha256": sha256_of(manifest) or "not found",
        "metrics_sha256": sha256_of(run_dir / rundir.METRICS) or "not found",
        "predictions_sha256": sha256_of(run_dir / rundir.PREDICTIONS) or "not found",
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "config_yaml": yaml.safe_dump(plain, sort_keys=False, allow_unicode=True),
    }


def write_experiment_report(
    *,
    run_dir: Path,
    config: dict,
    out_path: Path,
    figures_dir: Path | None = None,
) -> Path:
    """Write the self-contained HTML report of one run; returns ``out_path``.

    ``run_dir`` holds metrics.json and predictions.csv (segmentation also masks/, lesions.csv,
    per_image.csv). ``config`` is the resolved experiment config. When ``figures_dir`` is given,
    every figure is also written there as a PNG (for Snakemake's ``report()``).
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / rundir.METRICS
    metrics = rundir.read_metrics(metrics_path)
    task = metrics["task"]
    if config.get("task") and config["task"] != task:
        raise DataError(f"{metrics_path}: task {task!r} but the config's task is {config['task']!r}")
    labels = display_labels(metrics, config["dataset"], metrics_path)
    sink = FigureSink(figures_dir)
    context: dict[str, Any] = {
        "title": f"{config.get('experiment', metrics.get('experiment', ''))} (seed {config.get('seed', metrics.get('seed', ''))})",
        "experiment": str(config.get("experiment", metrics.get("experiment", ""))),
        "seed": str(config.get("seed", metrics.get("seed", ""))),
        "task": task,
        "model": _component(config.get("model")),
        "loss": _component(config.get("loss")),
        "sampler": _component(config.get("sampler")),
    }
    if task == "classification":
        predictions = read_classification_predictions(run_dir, list(labels))
        context["data"], manifest = data_section(config, task, labels, sink)
        context["classification"] = classification_sections(metrics, predictions, manifest,
                                                            dict(config, run_dir=str(run_dir)), labels, sink)
        context["classification"]["logit_offsets"] = logit_offsets_section(rundir.read_logit_offsets(run_dir), labels)
        context["segmentation"] = None
    else:
        predictions = rundir.read_predictions(run_dir)
        lesion_counts = {c: int(scalar(metrics["per_class"].get(c, {}).get("support")) or 0) for c in labels}
        context["data"], manifest = data_section(config, task, labels, sink, lesion_counts, metrics.get("label_origin"))
        context["segmentation"] = segmentation_sections(metrics, predictions, run_dir, manifest, config, labels, sink)
        context["classification"] = None
    context["collapse_warning"] = collapse_text(metrics.get("collapse"), dict(labels))
    context["training"] = training_section(run_dir, labels, sink)
    context["provenance"] = provenance(run_dir, config)
    html = render("experiment.html", **context)
    write_text(out_path, html)
    return Path(out_path)


def training_section(run_dir: Path, labels: Mapping[str, str], sink: FigureSink) -> dict[str, Any] | None:
    """Learning curves from history.csv (and loss_weights.csv for losses whose class weights change
    over training); None when the run has no history (e.g. the scikit-learn baseline)."""
    history_path = run_dir / rundir.HISTORY
    if not history_path.is_file():
        return None
    history = pd.read_csv(history_path)
    score_column = next((c for c in history.columns if c.startswith("val_")), None)
    if history.empty or score_column is None or not {"epoch", "train_loss"} <= set(history.columns):
        return None
    summary = rundir.read_training_summary(run_dir) or {}
    best_epoch = summary.get("best_epoch")
    weights = None
    weights_path = run_dir / rundir.LOSS_WEIGHTS
    if weights_path.is_file():
        table = pd.read_csv(weights_path)
        codes = list(labels)
        columns = [c for c in table.columns if c != "step"]
        # w0..w{C-1} in class-list order (segmentation: background first, then the lesion types)
        names = codes if len(columns) == len(codes) else ["background", *codes] if len(columns) == len(codes) + 1 else columns
        weights = {"step": table["step"].tolist(), **{n: table[c].tolist() for n, c in zip(names, columns)}}
    score_name = score_column.removeprefix("val_").replace("_", " ")
    figure = sink.add(
        figures.plot_learning_curves({"epoch": history["epoch"].tolist(), "train_loss": history["train_loss"].tolist(),
                                      "val_score": history[score_column].tolist()}, score_name, best_epoch, weights,
                                     dict(labels)),
        "learning_curves", "Training", captions.learning_curve_caption(len(history), score_name, best_epoch,
                                                                        weights is not None, summary.get("select", "best")))
    return {"figure": figure}


def _component(entry: Any) -> str:
    """'focal (gamma=2.0, alpha=inverse)' from a {name, ...params} block."""
    if not isinstance(entry, Mapping):
        return str(entry or "")
    params = ", ".join(f"{k}={v}" for k, v in entry.items() if k != "name" and v not in (None, {}, []))
    return f"{entry.get('name', '')}" + (f" ({params})" if params else "")

