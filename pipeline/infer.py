"""Use a trained run on new images, no labels needed: ``pipeline infer``.

    pipeline infer --run results/<experiment>/seed<k> --images DIR_OR_CSV --out DIR [--skip-bad]

The run's selected checkpoint (``checkpoints/best.pt``) and everything the predict stage fitted on
the validation split are applied as they are: classification logit offsets (``logit_offsets.json``),
the operating thresholds chosen on validation (``metrics.json``), segmentation post-processing
(``postprocessing.json``). Nothing is refitted on the new images.

Images: a folder (its image files, sorted; not recursive) or a CSV with an ``image_path`` (or
``image``) column, relative to the CSV's folder or absolute, and optionally ``image_id``.

Outputs (each file written atomically; a run that stops leaves no half-written file):
- classification: ``predictions.csv``: image_id, image_path, prob_<CLASS>..., pred, and per class
  with a validation operating point ``call_<CLASS>`` (prob >= the threshold chosen on validation
  for 95% specificity);
- segmentation: ``masks/<id>.png`` (label maps), ``overlays/<id>.png`` (lesions drawn over the photo)
  and ``lesion_counts.csv``: image_id, n_<type>..., n_lesions, lesion_mass (summed lesion probability
  at or above the lesion threshold, pixels), n_lesions_calibrated (with a count calibration fitted on
  validation, from n_lesions or lesion_mass), grade, grade_label (the dataset's grading thresholds);
- ``explain/<id>.png`` with ``--explain`` (classification): the evaluation crop tinted by Grad-CAM++
  for the predicted class (pipeline.saliency);
- ``skipped.csv`` with ``--skip-bad``: each unreadable image and the reason. Without it the first
  unreadable image stops the command with its name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax

from pipeline import rundir
from pipeline.atomic import write_csv
from pipeline.data.adapters._common import IMAGE_EXTENSIONS
from pipeline.data.instances import HAYASHI_THRESHOLDS, grade_from_count
from pipeline.data.io import read_rgb, write_png_atomic
from pipeline.errors import DataError, PipelineError
from pipeline.progress import progress
from pipeline.training import amp_dtype_for, select_device
from pipeline.tta import views

log = logging.getLogger("pipeline.infer")
PROGRESS_EVERY = 50
# one colour per lesion type (RGB), cycled when a data set has more types
TYPE_COLOURS = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                         (145, 30, 180), (70, 240, 240), (240, 50, 230)], dtype=np.float32)


def list_images(source: str | Path) -> pd.DataFrame:
    """``image_id`` and absolute ``image_path`` of the images to infer (folder or CSV)."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not p.name.startswith("."))
        frame = pd.DataFrame({"image_id": [p.stem for p in paths], "image_path": [str(p.resolve()) for p in paths]})
    elif source.is_file():
        try:
            table = pd.read_csv(source, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise DataError(f"{source}: not a readable CSV: {err}") from None
        column = next((c for c in ("image_path", "image") if c in table.columns), None)
        if column is None:
            raise DataError(f"{source}: needs an 'image_path' (or 'image') column; it has {list(table.columns)}")
        paths = [p if Path(p).is_absolute() else (source.parent / p) for p in table[column].str.strip()]
        ids = table["image_id"] if "image_id" in table.columns else [Path(p).stem for p in paths]
        frame = pd.DataFrame({"image_id": list(ids), "image_path": [str(Path(p).resolve()) for p in paths]})
    else:
        raise DataError(f"--images {source}: no such folder or CSV file")
    if frame.empty:
        raise DataError(f"--images {source}: no images found")
    duplicated = frame["image_id"][frame["image_id"].duplicated()].tolist()
    if duplicated:
        raise DataError(f"--images {source}: image ids must be unique; repeated: {duplicated[:5]}")
    return frame


def _readable(frame: pd.DataFrame, skip_bad: bool) -> tuple[pd.DataFrame, list[dict]]:
    """Rows whose image decodes; with ``skip_bad`` the others are listed, else the first one stops."""
    keep, skipped = [], []
    for row in frame.itertuples(index=False):
        try:
            read_rgb(row.image_path)
            keep.append(True)
        except DataError as err:
            if not skip_bad:
                raise DataError(f"{err} (rerun with --skip-bad to list unreadable images and go on)") from None
            skipped.append({"image_id": row.image_id, "image_path": row.image_path, "reason": str(err)})
            keep.append(False)
    return frame[keep].reset_index(drop=True), skipped


def trained_run_config(run_dir: str | Path) -> dict:
    """The resolved config of a trained run folder: run.yaml (the workflow's) or the config saved
    beside the checkpoint by training; ``run_dir`` set to the folder given, wherever it was moved."""
    run_dir = Path(run_dir)
    config_path = next((run_dir / name for name in (rundir.RUN_CONFIG, rundir.CHECKPOINT_CONFIG)
                        if (run_dir / name).is_file()), None)
    if config_path is None:
        raise PipelineError(f"{run_dir} is not a trained run folder (no {rundir.RUN_CONFIG} or "
                            f"{rundir.CHECKPOINT_CONFIG}); give results/<experiment>/seed<k>")
    return dict(rundir.read_run_config(config_path), run_dir=str(run_dir))


def infer(run: str | Path, images: str | Path, out: str | Path, *, skip_bad: bool = False,
          device: str = "auto", tta: str | None = None, explain: bool = False) -> Path:
    """Apply a trained run to new images (see module docstring); returns the output folder."""
    from pipeline.predict import load_best_model
    from pipeline.sklearn_trainer import is_sklearn

    run_dir, out = Path(run), Path(out)
    cfg = trained_run_config(run_dir)
    # new images are read once: no decode cache of them next to wherever the command runs
    cfg["train"] = dict(cfg["train"], decode_cache=None)
    if tta is not None:  # test-time augmentation for these images only (the run's own predict.tta otherwise)
        views(tta)
        cfg["predict"] = dict(cfg["predict"], tta=tta)
    if is_sklearn(cfg):
        raise PipelineError(f"{run_dir} is the scikit-learn baseline; infer uses a trained network run")
    if explain and cfg["task"] != "classification":
        raise PipelineError("--explain draws Grad-CAM++ maps of a classifier; a segmentation run's overlays/ "
                            "already show each predicted lesion")
    frame, skipped = _readable(list_images(images), skip_bad)
    out.mkdir(parents=True, exist_ok=True)
    if skipped:
        write_csv(pd.DataFrame(skipped), out / "skipped.csv")
        log.warning("skipped %d unreadable image(s): %s", len(skipped), out / "skipped.csv")
    if frame.empty:
        raise DataError(f"--images {images}: no readable image")
    torch_device = select_device(device)
    task, model = load_best_model(cfg, torch_device)
    amp_dtype = amp_dtype_for(torch_device, cfg["train"]["amp"])
    log.info("%s seed %s: inferring %d image(s) on %s", cfg["experiment"], cfg["seed"], len(frame), torch_device)
    if task.name == "classification":
        path = _classify(task, model, frame, run_dir, out, torch_device, amp_dtype, explain)
    else:
        path = _segment(task, model, frame, cfg, run_dir, out, torch_device, amp_dtype)
    log.info("wrote %s", path)
    return out


def _classify(task, model, frame, run_dir: Path, out: Path, device, amp_dtype, explain: bool = False) -> Path:
    classes = task.classes
    # the eval transform and batching of the predict stage; the label column is a placeholder
    logits = task.logits(model, frame.assign(label=classes[0]), device, amp_dtype=amp_dtype)
    offsets = rundir.read_logit_offsets(run_dir)
    if offsets is not None:
        logits = logits + np.asarray(offsets["offsets"], dtype=np.float64)
    probs = softmax(logits, axis=1)
    table = frame[["image_id", "image_path"]].copy()
    for i, code in enumerate(classes):
        table[f"prob_{code}"] = probs[:, i]
    table["pred"] = np.asarray(classes)[probs.argmax(axis=1)]
    if explain:  # Grad-CAM++ of the predicted class over the crop the model saw (pipeline.saliency)
        from pipeline.saliency import explain as explain_images

        written = explain_images(task, model, frame.assign(label=classes[0]), probs.argmax(axis=1).tolist(),
                                 out / "explain", device)
        log.info("wrote %d Grad-CAM++ overlays to %s", len(written), out / "explain")
    thresholds = validation_thresholds(run_dir, classes)
    if thresholds is None:
        log.warning("%s has no %s: no operating-point calls (run the evaluate stage first)", run_dir, rundir.METRICS)
    for i, code in enumerate(classes):
        if code in (thresholds or {}):
            table[f"call_{code}"] = probs[:, i] >= thresholds[code]
    return write_csv(table, out / "predictions.csv")


def validation_thresholds(run_dir: Path, classes: list[str]) -> dict[str, float] | None:
    """Per class, the probability threshold chosen on the validation split for 95% specificity
    (metrics.json ``operating_points_val``); None when the run has not been evaluated."""
    metrics_path = Path(run_dir) / rundir.METRICS
    if not metrics_path.is_file():
        return None
    per_class = json.loads(metrics_path.read_text())["per_class"]
    chosen = {}
    for code in classes:
        point = ((per_class.get(code) or {}).get("operating_points_val") or {}).get("sens_at_95_spec", {})
        threshold = point.get("threshold")
        if threshold is not None and np.isfinite(threshold):
            chosen[code] = float(threshold)
    return chosen


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The photo with each lesion type's pixels tinted in its colour (uint8 RGB)."""
    picture = image.astype(np.float32)
    lesion = labels > 0
    colours = TYPE_COLOURS[(labels[lesion].astype(np.int64) - 1) % len(TYPE_COLOURS)]
    picture[lesion] = (1 - alpha) * picture[lesion] + alpha * colours
    return np.clip(picture, 0, 255).astype(np.uint8)


def _segment(task, model, frame, cfg: dict, run_dir: Path, out: Path, device, amp_dtype) -> Path:
    from pipeline.evaluation.instances import calibrated_counts, calibration_inputs, grade_labels, predicted_instances
    from pipeline.tasks.segmentation import lesion_label_map, lesion_mass

    if cfg["predict"].get("tune_postprocessing"):
        task.tuned = rundir.read_postprocessing(run_dir)  # chosen on validation by the predict stage
    settings = task.postprocessing()
    calibration = (task.tuned or {}).get("count_calibration")  # fitted on validation with the threshold
    types = task.types
    thresholds = list(cfg["dataset"].get("grading", {}).get("thresholds", HAYASHI_THRESHOLDS))
    names = grade_labels(thresholds)
    model.eval()
    rows = []
    for number, row in enumerate(progress(frame.itertuples(index=False), "segmenting", total=len(frame), unit="image"), start=1):
        image = read_rgb(row.image_path)
        probs = task.probabilities(model, image, device, amp_dtype)
        labels = lesion_label_map(probs, **settings)
        mass = lesion_mass(probs, settings["lesion_threshold"])
        instances = predicted_instances(labels, **settings["split"])
        ids = np.unique(instances[instances > 0])
        lesion_types = [int(labels[instances == i][0]) for i in ids]
        counts = {f"n_{t}": lesion_types.count(k + 1) for k, t in enumerate(types)}
        total = len(ids)
        # the lesions found, or the count calibrated from them or from the lesion mass
        graded = float(calibrated_counts(calibration_inputs([total], [mass], calibration), calibration)[0])
        grade = int(grade_from_count([graded], thresholds)[0])
        write_png_atomic(labels, out / "masks" / f"{row.image_id}.png")
        write_png_atomic(overlay(image, labels), out / "overlays" / f"{row.image_id}.png")
        rows.append({"image_id": row.image_id, "image_path": row.image_path, **counts, "n_lesions": total,
                     "lesion_mass": round(mass, 1), **({"n_lesions_calibrated": round(graded, 2)} if calibration else {}),
                     "grade": grade, "grade_label": names[grade]})
        if number % PROGRESS_EVERY == 0 or number == len(frame):
            log.info("%d/%d images", number, len(frame))
    return write_csv(pd.DataFrame(rows), out / "lesion_counts.csv")
