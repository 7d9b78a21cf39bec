"""Tiny runs for the reporting tests: random images, a split manifest, random predictions, and
metrics.json computed by the evaluation stage itself (never typed by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.evaluation.classification import compute_classification_metrics
from pipeline.rundir import write_metrics as write_metrics_json

ISIC_CLASSES = {
    "MEL": "Melanoma",
    "NV": "Melanocytic nevus",
    "BCC": "Basal cell carcinoma",
    "AKIEC": "Actinic keratosis / intraepithelial carcinoma",
    "BKL": "Benign keratosis",
    "DF": "Dermatofibroma",
    "VASC": "Vascular lesion",
}
# Test-set class frequencies: imbalanced like ISIC, every class present.
TEST_COUNTS = {"MEL": 20, "NV": 60, "BCC": 10, "AKIEC": 8, "BKL": 16, "DF": 6, "VASC": 5}
N_BOOTSTRAP = 100


def write_image(path: Path, rng: np.random.Generator, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def make_manifest(root: Path, classes: list[str], rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifest rows for train/val (no image files needed) and test (with image files)."""
    rows = []
    counts = {code: TEST_COUNTS.get(code, 10) for code in classes}
    for split, scale in (("train", 5), ("val", 1)):
        for code, n in counts.items():
            for i in range(n * scale):
                rows.append({"image_id": f"{split}_{code}_{i}", "image_path": f"img/{split}_{code}_{i}.png",
                             "label": code, "group_id": f"L_{split}_{code}_{i // 2}", "split": split,
                             "source": "synthetic", "label_origin": "expert"})
    test = []
    for code, n in counts.items():
        for i in range(n):
            image_id = f"test_{code}_{i}"
            write_image(root / "img" / f"{image_id}.png", rng)
            test.append({"image_id": image_id, "image_path": f"img/{image_id}.png", "label": code,
                         "group_id": f"L_test_{code}_{i}", "split": "test", "source": "synthetic",
                         "label_origin": "expert"})
    manifest = pd.DataFrame(rows + test)
    return manifest, pd.DataFrame(test)


def random_predictions(test: pd.DataFrame, classes: list[str], rng: np.random.Generator, skill: float = 2.0) -> pd.DataFrame:
    """Softmax of noisy logits with a bump on the true class: an imperfect but informative model."""
    index = {c: i for i, c in enumerate(classes)}
    truth = test["label"].map(index).to_numpy()
    logits = rng.normal(0, 1, (len(test), len(classes)))
    logits[np.arange(len(test)), truth] += skill
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame({"image_id": test["image_id"], "label": test["label"],
                          "pred": [classes[k] for k in probs.argmax(axis=1)]})
    for i, code in enumerate(classes):
        frame[f"prob_{code}"] = probs[:, i]
    return frame


def write_run(run_dir: Path, predictions: pd.DataFrame, classes: list[str], names: dict[str, str],
              experiment: str, seed: int) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(run_dir / "predictions.csv", index=False)
    metrics = compute_classification_metrics(
        predictions, classes, names, experiment=experiment, seed=seed, n_bootstrap=N_BOOTSTRAP, bootstrap_seed=0
    )
    write_metrics_json(metrics, run_dir / "metrics.json")
    return json.loads((run_dir / "metrics.json").read_text())


def classification_config(root: Path, manifest_path: Path, names: dict[str, str], experiment: str, seed: int) -> dict:
    return {
        "experiment": experiment,
        "seed": seed,
        "task": "classification",
        "dataset": {
            "name": "tiny_isic", "adapter": "synthetic_isic", "root": str(root), "mask_root": str(root),
            "manifest": str(manifest_path), "classes": list(names), "class_names": dict(names),
            "grouping": "lesion",
        },
        "model": {"name": "resnet10t", "pretrained_path": None, "params": {}},
        "loss": {"name": "focal", "gamma": 2.0},
        "sampler": {"name": "none"},
        "code_version": "0.1.0+test",
    }


def make_classification_run(base: Path, names: dict[str, str] | None = None, experiment: str = "ce",
                            seed: int = 0, skill: float = 2.0) -> tuple[Path, dict]:
    """A complete run directory plus its resolved config, under ``base``."""
    names = dict(names or ISIC_CLASSES)
    classes = list(names)
    rng = np.random.default_rng(seed)
    root = base / "data"
    manifest, test = make_manifest(root, classes, rng)
    manifest_path = base / "manifests" / "tiny_isic.split.csv"
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(manifest_path, index=False)
    run_dir = base / "results" / experiment / f"seed{seed}"
    write_run(run_dir, random_predictions(test, classes, rng, skill), classes, names, experiment, seed)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / "best.pt").write_bytes(b"not a real checkpoint")
    return run_dir, classification_config(root, manifest_path, names, experiment, seed)


@pytest.fixture(scope="module")
def classification_report(tmp_path_factory: pytest.TempPathFactory):
    """(run_dir, config, report path) of one rendered classification report, shared by a module."""
    from pipeline.reporting.html import write_experiment_report

    base = tmp_path_factory.mktemp("clsrun")
    run_dir, config = make_classification_run(base)
    out = write_experiment_report(run_dir=run_dir, config=config, out_path=run_dir / "report.html",
                                  figures_dir=run_dir / "figures")
    return run_dir, config, out


# ------------------------------------------------------------------------------- segmentation
ACNE_TYPES = {"papule": "Papule", "pustule": "Pustule", "nodule": "Nodule"}


def _lesion_maps(truth_rng: np.random.Generator, model_rng: np.random.Generator, size: int = 48,
                 p_found: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """A true label map with a few square lesions and a prediction that shifts, retypes, drops
    and invents some of them (truth and model draw from separate generators, so two experiments
    can share the truth)."""
    true_map = np.zeros((size, size), dtype=np.uint8)
    pred_map = np.zeros_like(true_map)
    for k in range(3):
        y, x = 4 + 14 * k, int(truth_rng.integers(2, size - 12))
        value = int(truth_rng.integers(1, len(ACNE_TYPES) + 1))
        true_map[y:y + 8, x:x + 8] = value
        if model_rng.random() < p_found:  # found, maybe shifted and (rarely) with the wrong type
            shift = int(model_rng.integers(0, 3))
            retyped = value if model_rng.random() < 0.8 else value % len(ACNE_TYPES) + 1
            pred_map[y + shift:y + shift + 8, x:x + 8] = retyped
    if model_rng.random() < 0.3:  # a false lesion in the free right-hand margin
        pred_map[size - 6:size - 2, size - 6:size - 2] = int(model_rng.integers(1, len(ACNE_TYPES) + 1))
    return true_map, pred_map


def make_segmentation_run(base: Path, n_test: int = 8, seed: int = 0, experiment: str = "dice_ce",
                          label_origin: str = "box-derived", model_seed: int = 0,
                          p_found: float = 0.7) -> tuple[Path, dict]:
    """Images, masks, a split manifest, predicted masks, and metrics.json/lesions.csv/per_image.csv
    written by the evaluate stage itself (pipeline.evaluation.run.evaluate_run)."""
    from pipeline.evaluation.run import evaluate_run

    rng = np.random.default_rng(seed)
    model_rng = np.random.default_rng([model_seed, seed])
    root = base / "data"
    run_dir = base / "results" / experiment / f"seed{seed}"
    (run_dir / "masks").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows, predictions = [], []
    for split, n in (("train", 6), ("val", 2), ("test", n_test)):
        for i in range(n):
            image_id = f"{split}_{i}"
            write_image(root / "img" / f"{image_id}.png", rng, size=48)
            true_map, pred_map = _lesion_maps(rng, model_rng, p_found=p_found)
            Image.fromarray(true_map).save(root / "masks" / f"{image_id}.png")
            rows.append({"image_id": image_id, "image_path": f"img/{image_id}.png", "mask_path": f"masks/{image_id}.png",
                         "group_id": f"P{split}{i // 2}", "split": split, "source": "synthetic acne",
                         "label_origin": label_origin})
            if split == "test":
                Image.fromarray(pred_map).save(run_dir / "masks" / f"{image_id}.png")
                predictions.append({"image_id": image_id, "pred_mask_path": f"masks/{image_id}.png",
                                    "true_mask_path": str(root / "masks" / f"{image_id}.png")})
    manifest_path = base / "manifests" / "tiny_acne.split.csv"
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(manifest_path, index=False)
    pd.DataFrame(predictions).to_csv(run_dir / "predictions.csv", index=False)
    config = {
        "experiment": experiment, "seed": seed, "task": "segmentation", "run_dir": str(run_dir),
        "dataset": {"name": "tiny_acne", "adapter": "synthetic_acne", "root": str(root), "mask_root": str(root),
                    "manifest": str(manifest_path), "classes": list(ACNE_TYPES), "class_names": dict(ACNE_TYPES),
                    "grouping": "patient"},
        "model": {"name": "Unet", "encoder": "resnet18"}, "loss": {"name": "dice_ce"}, "sampler": {"name": "none"},
        "evaluation": {"n_bootstrap": N_BOOTSTRAP, "bootstrap_seed": 0, "iou_threshold": 0.1},
        "code_version": "0.1.0+test",
    }
    evaluate_run(config)
    return run_dir, config


# ------------------------------------------------------------------------------- comparison
def make_classification_runs(base: Path, skills: dict[str, float], seeds: list[int],
                             names: dict[str, str] | None = None) -> list[Path]:
    """Several experiments x seeds predicting the same test images (one shared manifest)."""
    names = dict(names or ISIC_CLASSES)
    classes = list(names)
    _, test = make_manifest(base / "data", classes, np.random.default_rng(123))
    run_dirs = []
    for e, (experiment, skill) in enumerate(skills.items()):
        for seed in seeds:
            rng = np.random.default_rng(1000 * e + seed)
            run_dir = base / "results" / experiment / f"seed{seed}"
            write_run(run_dir, random_predictions(test, classes, rng, skill), classes, names, experiment, seed)
            run_dirs.append(run_dir)
    return run_dirs


XSS_CLASSES = {"MEL": "<script>alert(1)</script>", "NV": "Nevus & co", "DF": "DF"}


@pytest.fixture(scope="session")
def xss_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report whose class name and a config string are HTML/script injections."""
    from pipeline.reporting.html import write_experiment_report

    base = tmp_path_factory.mktemp("xssrun")
    run_dir, config = make_classification_run(base, names=XSS_CLASSES, experiment="xss")
    config["loss"] = {"name": "focal", "note": "<img src=x onerror=alert(2)>"}
    return write_experiment_report(run_dir=run_dir, config=config, out_path=run_dir / "report.html")
