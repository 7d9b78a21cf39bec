"""The predict stage of one run: the best checkpoint's predictions on a split -> predictions.csv.

A task may fit post-hoc settings before predicting (classification: ``predict.logit_offsets:
fit_val``, per-class logit offsets, written to logit_offsets.json): it gets the validation split
and nothing else, so the test split never informs what is applied to it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from pipeline import rundir
from pipeline.atomic import write_text
from pipeline.errors import ConfigError, DataError, TrainingError
from pipeline.tasks import get_task
from pipeline.tasks.base import Task
from pipeline.training import amp_dtype_for, fingerprint, load_split, memory_format_for, select_device

log = logging.getLogger("pipeline.predict")


def load_best_model(cfg: dict, device: torch.device) -> tuple[Task, torch.nn.Module]:
    """The model selected on the validation split, with its task object."""
    task = get_task(cfg)
    path = Path(cfg["run_dir"]) / rundir.BEST_CHECKPOINT
    if not path.is_file():
        raise TrainingError(f"{path} does not exist: run `pipeline train` for {cfg['experiment']} seed {cfg['seed']} first")
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    if checkpoint.get("fingerprint") != fingerprint(cfg, with_code=False):
        raise TrainingError(f"{path} was trained with another configuration; retrain this run")
    model = task.build_model()
    model.load_state_dict(checkpoint["model"])
    # the layout it was trained and validated in, so predictions repeat the validation's arithmetic
    return task, model.to(device, memory_format=memory_format_for(cfg["train"])).eval()


def predict_run(cfg: dict, split: str = "test") -> Path:
    """Predict ``split`` with the run's best model; writes predictions.csv (and the task's files)."""
    device = select_device(cfg["train"]["device"])
    task, model = load_best_model(cfg, device)
    frame = load_split(cfg)
    images = frame[frame["split"] == split].reset_index(drop=True)
    if images.empty:
        raise DataError(f"{cfg['dataset']['manifest']}: no images in split {split!r}")
    run_dir = Path(cfg["run_dir"])
    amp_dtype = amp_dtype_for(device, cfg["train"]["amp"])
    # a record from an earlier run that tuned would otherwise be read by evaluate, infer and export
    (run_dir / rundir.POSTPROCESSING).unlink(missing_ok=True)
    if cfg["predict"].get("tune_postprocessing"):
        # chosen on the validation split only; the split predicted here is never looked at
        val = frame[frame["split"] == "val"].reset_index(drop=True)
        if val.empty:
            raise DataError(f"{cfg['dataset']['manifest']}: predict.tune_postprocessing needs a 'val' split")
        tuned = task.tune_postprocessing(model, val, device, amp_dtype)
        write_text(run_dir / rundir.POSTPROCESSING, json.dumps(tuned, indent=2))
        log.info("post-processing tuned on %d validation images: lesion_threshold %s, min_lesion_area %d "
                 "(validation lesion F1 %.3f)", tuned["n_images"], tuned["lesion_threshold"],
                 tuned["min_lesion_area"], tuned["val_f1"])
        if tuned.get("count_calibration"):
            calibration = tuned["count_calibration"]
            if calibration["count_from"] == "lesions":
                log.info("count calibration (%s) fitted on validation: count MAE %.2f -> %.2f lesions a photo",
                         calibration["method"], calibration["val_count_mae_found"], calibration["val_count_mae"])
            else:
                log.info("count calibration (%s, from the lesion mass) fitted on validation: count MAE %.2f lesions "
                         "a photo", calibration["method"], calibration["val_count_mae"])
    if hasattr(task, "fit_post_hoc"):
        validation = frame[frame["split"] == "val"].reset_index(drop=True)
        if task.fit_post_hoc(model, validation, device, run_dir, amp_dtype=amp_dtype) is not None:
            log.info("fitted post-hoc logit offsets on %d validation images: %s", len(validation), rundir.LOGIT_OFFSETS)
    elif cfg["predict"].get("logit_offsets", "none") != "none":
        raise ConfigError(f"predict.logit_offsets: the {task.name} task has no post-hoc logit offsets")
    if task.name == "classification":
        # the validation split's predictions, where the evaluate stage chooses operating thresholds;
        # written first, so predictions.csv (the stage's declared output) never lands without them
        val = frame[frame["split"] == "val"].reset_index(drop=True)
        (run_dir / rundir.VAL_PREDICTIONS).unlink(missing_ok=True)
        if split == "test" and not val.empty:
            rundir.write_predictions(task.predict(model, val, device, run_dir, amp_dtype=amp_dtype), run_dir,
                                     name=rundir.VAL_PREDICTIONS)
    table = task.predict(model, images, device, run_dir, amp_dtype=amp_dtype)
    if task.name == "classification" and split == "test" and cfg["predict"].get("saliency", "none") != "none":
        # Grad-CAM++ of the report's boundary cases, before predictions.csv (the declared output) lands
        from pipeline.saliency import explain_boundary_cases

        maps = explain_boundary_cases(task, model, images, table, run_dir, device)
        log.info("wrote %d Grad-CAM++ overlays of the report's boundary cases to %s", len(maps), run_dir / "saliency")
    path = rundir.write_predictions(table, run_dir)
    log.info("wrote %s (%d %s images)", path, len(table), split)
    return path
