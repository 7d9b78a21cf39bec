"""The simple baseline of every classification comparison: logistic regression on downsampled pixels.

An experiment with ``model: {name: logreg, kind: sklearn}`` is trained and predicted here instead
of by the torch trainer (`pipeline train` / `pipeline predict` dispatch on ``model.kind``), and
writes the same run-directory files (pipeline.rundir), so evaluate, report and compare treat it
like any run:

    training_summary.json   the torch trainer's keys; ``history`` holds one row per C tried
    history.csv             C, val_balanced_accuracy, seconds
    checkpoints/best.json   the fitted model as plain numbers (no pickle): scaler mean and scale,
                            coefficients, intercepts, the chosen C, the feature settings
    predictions.csv         the classification contract

Features: every image resized to ``pixels x pixels`` (PIL bilinear, antialiased), RGB values in
[0, 1], flattened, then standardised with the training split's mean and SD (sklearn
StandardScaler). Pixels rather than frozen backbone features: nothing is downloaded here, so the
only backbone weights are random ones, and features of a random network are an arbitrary
baseline; a centred lesion crop's downsampled pixels are what a user would try first.

The model is sklearn's multinomial LogisticRegression (L2, lbfgs). ``loss`` chooses its class
weighting: ``weighted_ce`` with ``weights: inverse`` is ``class_weight='balanced'`` (weight
N / (C n_c), proportional to the inverse class frequency, like weighted_ce's inverse weights);
``ce`` is unweighted. C is chosen on the validation split's balanced accuracy (the torch runs'
selection rule; ties go to the smaller C, the stronger regularisation) among ``params.C``, and
the model fitted on the training split with that C is kept. Settings (``model.params``):
``pixels`` (default 16), ``C`` (default [0.0001, 0.001, 0.01, 0.1]: larger C overfit pixels and take minutes to converge), ``max_iter`` (default 2000).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy.special import softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from pipeline import rundir
from pipeline.atomic import write_text
from pipeline.data.io import read_rgb
from pipeline.data.manifest import class_counts, read_manifest, resolve, validate_manifest
from pipeline.errors import ConfigError, DataError, TrainingError

log = logging.getLogger("pipeline.sklearn")

KIND = "sklearn"
MODELS = ("logreg",)
DEFAULT_PARAMS = {"pixels": 16, "C": [0.0001, 0.001, 0.01, 0.1], "max_iter": 2000}
SKLEARN_CHECKPOINT = rundir.SKLEARN_CHECKPOINT
CLASS_WEIGHTING = {"ce": None, "weighted_ce": "balanced"}  # loss name -> LogisticRegression class_weight


def is_sklearn(cfg: dict) -> bool:
    """Whether a run config's model is trained here rather than by the torch trainer."""
    return (cfg.get("model") or {}).get("kind", "torch") == KIND


def settings(cfg: dict) -> dict[str, Any]:
    """The checked model settings of a run: ``pixels``, ``C`` (list), ``max_iter``, ``class_weight``."""
    where = f"experiment {cfg.get('experiment')!r}"
    model = cfg["model"]
    if cfg["task"] != "classification":
        raise ConfigError(f"{where}: model kind {KIND!r} is for classification, not {cfg['task']!r}")
    if model["name"] not in MODELS:
        raise ConfigError(f"{where}: unknown {KIND} model {model['name']!r}; available: {list(MODELS)}")
    params = dict(model.get("params") or {})
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise ConfigError(f"{where}: model.params has unknown key(s) {unknown}; {model['name']} accepts {sorted(DEFAULT_PARAMS)}")
    params = {**DEFAULT_PARAMS, **params}
    pixels, grid, max_iter = params["pixels"], params["C"], params["max_iter"]
    if isinstance(pixels, bool) or not isinstance(pixels, int) or not 2 <= pixels <= 256:
        raise ConfigError(f"{where}: model.params.pixels must be an integer in 2..256, got {pixels!r}")
    grid = grid if isinstance(grid, list) else [grid]
    if not grid or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c > 0 for c in grid):
        raise ConfigError(f"{where}: model.params.C must be a positive number or a non-empty list of them, got {params['C']!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"{where}: model.params.max_iter must be a positive integer, got {max_iter!r}")
    loss = dict(cfg["loss"])
    name = loss.pop("name")
    if name not in CLASS_WEIGHTING or (name == "weighted_ce" and loss.get("weights", "inverse") != "inverse") \
            or set(loss) - {"weights"}:
        raise ConfigError(
            f"{where}: loss {cfg['loss']!r} cannot be used with {model['name']}; use {{name: weighted_ce, "
            "weights: inverse}} (class_weight='balanced') or {name: ce} (unweighted)"
        )
    if cfg["sampler"].get("name", "none") != "none":
        raise ConfigError(f"{where}: {model['name']} fits on every training image once; sampler must be none, "
                          f"got {cfg['sampler']['name']!r}")
    return {"pixels": pixels, "C": sorted(float(c) for c in grid), "max_iter": max_iter,
            "class_weight": CLASS_WEIGHTING[name]}


def pixel_features(frame: pd.DataFrame, root: Path, pixels: int) -> np.ndarray:
    """``(n_images, pixels * pixels * 3)`` float64: each image resized and scaled to [0, 1]."""
    rows = []
    for path in frame["image_path"]:
        image = Image.fromarray(read_rgb(resolve(path, root)))
        rows.append(np.asarray(image.resize((pixels, pixels), Image.Resampling.BILINEAR), dtype=np.float64).ravel())
    return np.stack(rows) / 255.0 if rows else np.zeros((0, pixels * pixels * 3))


def _load_split(cfg: dict) -> pd.DataFrame:
    dataset = cfg["dataset"]
    frame = read_manifest(dataset["manifest"])
    return validate_manifest(frame, task="classification", classes=dataset["classes"], require_split=True,
                             root=Path(dataset["root"]), check_files=True)


def _targets(frame: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return frame["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()


def _fit(features: np.ndarray, targets: np.ndarray, c: float, opts: dict) -> LogisticRegression:
    model = LogisticRegression(C=c, class_weight=opts["class_weight"], max_iter=opts["max_iter"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(features, targets)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("logistic regression with C=%g did not converge in %d iterations (model.params.max_iter)",
                    c, opts["max_iter"])
    return model


def train(cfg: dict, *, threads: int | None = None) -> dict:
    """Fit on the training split for every C, keep the best on validation; write the run files."""
    started = time.perf_counter()
    opts = settings(cfg)
    classes = cfg["dataset"]["classes"]
    root, run_dir = Path(cfg["dataset"]["root"]), Path(cfg["run_dir"])
    frame = _load_split(cfg)
    train_frame, val_frame = (frame[frame["split"] == s].reset_index(drop=True) for s in ("train", "val"))
    if train_frame.empty or val_frame.empty:
        raise DataError(f"{cfg['dataset']['manifest']}: {cfg['model']['name']} needs train and val images")
    y_train = _targets(train_frame, classes)
    missing = [c for c, n in zip(classes, class_counts(train_frame, classes)) if n == 0]
    if missing:
        raise DataError(f"{cfg['dataset']['manifest']}: no training images of class(es) {missing}")
    (run_dir / rundir.CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    rundir.write_run_config(cfg, run_dir / rundir.CHECKPOINT_CONFIG)

    x_train = pixel_features(train_frame, root, opts["pixels"])
    scaler = StandardScaler().fit(x_train)
    x_train = scaler.transform(x_train)
    x_val = scaler.transform(pixel_features(val_frame, root, opts["pixels"]))
    y_val = _targets(val_frame, classes)
    history, best, best_score = [], None, -math.inf
    with threadpool_limits(limits=threads):
        for c in opts["C"]:
            tried = time.perf_counter()
            model = _fit(x_train, y_train, c, opts)
            score = float(balanced_accuracy_score(y_val, model.predict(x_val)))
            history.append({"C": c, "val_balanced_accuracy": score, "seconds": round(time.perf_counter() - tried, 2)})
            log.info("%s seed %d | C %g | val balanced_accuracy %.4f", cfg["experiment"], cfg["seed"], c, score)
            if score > best_score:  # strictly better: ties keep the smaller C
                best, best_score = model, score
    assert best is not None
    checkpoint = {
        "model": cfg["model"]["name"], "kind": KIND, "fingerprint": rundir.fingerprint(cfg, with_code=False), "classes": classes,
        "pixels": opts["pixels"], "C": float(best.C), "class_weight": opts["class_weight"],
        "score_name": "balanced_accuracy", "score": best_score,
        "scaler_mean": scaler.mean_.tolist(), "scaler_scale": scaler.scale_.tolist(),
        "coef": best.coef_.tolist(), "intercept": best.intercept_.tolist(),
    }
    write_text(run_dir / SKLEARN_CHECKPOINT, json.dumps(checkpoint) + "\n")
    pd.DataFrame(history).to_csv(run_dir / rundir.HISTORY, index=False)
    summary = {"experiment": cfg["experiment"], "seed": cfg["seed"], "fingerprint": checkpoint["fingerprint"],
               "epochs": 1, "best_epoch": 1, "best_val_balanced_accuracy": best_score, "best_C": float(best.C),
               "steps": int(best.n_iter_.max()), "device": "cpu", "world_size": 1, "history": history,
               "train_class_counts": class_counts(train_frame, classes),
               "seconds": round(time.perf_counter() - started, 2)}
    write_text(run_dir / rundir.TRAINING_SUMMARY, json.dumps(summary, indent=2))
    log.info("%s seed %d | chose C %g (val balanced_accuracy %.4f) | %.1fs", cfg["experiment"], cfg["seed"],
             best.C, best_score, summary["seconds"])
    return summary


def load_checkpoint(cfg: dict) -> dict[str, Any]:
    """checkpoints/best.json of a run, checked against the run's config."""
    path = Path(cfg["run_dir"]) / SKLEARN_CHECKPOINT
    if not path.is_file():
        raise TrainingError(f"{path} does not exist: run `pipeline train` for {cfg['experiment']} seed {cfg['seed']} first")
    try:
        checkpoint = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TrainingError(f"{path} is not valid JSON ({err}); retrain this run") from None
    if checkpoint.get("fingerprint") != rundir.fingerprint(cfg, with_code=False):
        raise TrainingError(f"{path} was trained with another configuration; retrain this run")
    return checkpoint


def probabilities(checkpoint: dict[str, Any], features: np.ndarray) -> np.ndarray:
    """Class probabilities of the saved model: softmax of the standardised features' linear scores
    (what sklearn's multinomial ``predict_proba`` computes)."""
    standard = (features - np.asarray(checkpoint["scaler_mean"])) / np.asarray(checkpoint["scaler_scale"])
    scores = standard @ np.asarray(checkpoint["coef"]).T + np.asarray(checkpoint["intercept"])
    return softmax(scores, axis=1)


def predict_run(cfg: dict, split: str = "test") -> Path:
    """Predict ``split`` with the run's fitted model; writes predictions.csv."""
    settings(cfg)
    checkpoint = load_checkpoint(cfg)
    frame = _load_split(cfg)
    images = frame[frame["split"] == split].reset_index(drop=True)
    if images.empty:
        raise DataError(f"{cfg['dataset']['manifest']}: no images in split {split!r}")
    root, classes = Path(cfg["dataset"]["root"]), cfg["dataset"]["classes"]
    val = frame[frame["split"] == "val"].reset_index(drop=True)
    (Path(cfg["run_dir"]) / rundir.VAL_PREDICTIONS).unlink(missing_ok=True)
    if split == "test" and not val.empty:  # where the evaluate stage chooses operating thresholds
        val_probs = probabilities(checkpoint, pixel_features(val, root, checkpoint["pixels"]))
        rundir.write_predictions(rundir.classification_predictions(val["image_id"], val["label"], val_probs, classes),
                                 cfg["run_dir"], name=rundir.VAL_PREDICTIONS)
    probs = probabilities(checkpoint, pixel_features(images, root, checkpoint["pixels"]))
    table = rundir.classification_predictions(images["image_id"], images["label"], probs, classes)
    path = rundir.write_predictions(table, cfg["run_dir"])
    log.info("wrote %s (%d %s images)", path, len(table), split)
    return path
