"""Tiny on-disk data sets and run configs for fast training / workflow tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline import config as cfgmod
from pipeline.data.manifest import write_manifest

TINY_CLASSES = {"A": "Class A", "B": "Class B", "C": "Class C"}
COLOURS = {"A": (200, 60, 60), "B": (60, 200, 60), "C": (60, 60, 200)}


def make_colour_dataset(root: Path, per_class: int = 8, size: int = 16, seed: int = 0) -> pd.DataFrame:
    """Noisy solid-colour images, one colour per class; two images per group; split fixed by group."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, colour in COLOURS.items():
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            name = f"{label}_{i}.png"
            Image.fromarray(pixels).save(root / name)
            group = i // 2
            split = "train" if group < per_class // 4 else ("val" if group == per_class // 4 else "test")
            rows.append({"image_id": f"{label}_{i}", "image_path": name, "label": label,
                         "group_id": f"{label}_g{group}", "split": split})
    return pd.DataFrame(rows)


def tiny_classification_run(tmp_path: Path, **train_overrides) -> dict:
    data = tmp_path / "data"
    frame = make_colour_dataset(data, per_class=12)
    manifest = write_manifest(frame, tmp_path / "manifests" / "tiny.split.csv")
    config = cfgmod.validate_config({
        "results_dir": str(tmp_path / "results"),
        "manifests_dir": str(tmp_path / "manifests"),
        "datasets": {"tiny": {"task": "classification", "adapter": "folder", "root": str(data), "classes": TINY_CLASSES}},
        "experiments": {"tiny_ce": {"dataset": "tiny", "model": {"name": "test_resnet"},
                                    # on the CPU even where a GPU is visible, in float32: these tests check
                                    # exact (bitwise) behaviour; tests/test_cuda.py covers the GPU and
                                    # tests/test_training.py bf16 on the CPU (at 16 px this net's last
                                    # convolutions see 1x1 maps, where oneDNN's bf16 backward writes NaN)
                                    "train": {"epochs": 2, "batch_size": 8, "image_size": 16, "device": "cpu", "amp": False,
                                              "optimizer": {"name": "adamw", "lr": 0.01},
                                              "decode_cache": str(tmp_path / "cache"), **train_overrides}}},
    })
    run = cfgmod.resolve_experiment(config, "tiny_ce", 0)
    assert run["dataset"]["manifest"] == str(manifest)
    return run


def evaluated_classification_run(tmp_path: Path, **train_overrides) -> dict:
    """A tiny classification run taken through train, predict and evaluate (for tests of what
    reads a finished run: infer, export, saliency)."""
    from pipeline import predict, training
    from pipeline.evaluation.run import evaluate_run

    run = tiny_classification_run(tmp_path, **train_overrides)
    training.train(run, threads=1)
    predict.predict_run(run)
    evaluate_run(run)
    return run
