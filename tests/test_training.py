import json

import pandas as pd
import pytest
import torch

from pipeline import training
from pipeline.errors import TrainingError
from pipeline.tasks.classification import ClassificationTask
from tests.helpers import tiny_classification_run


def state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_train_writes_checkpoints_history_and_resolved_config(tmp_path):
    run = tiny_classification_run(tmp_path)
    summary = training.train(run, threads=1)
    run_dir = tmp_path / "results" / "tiny_ce" / "seed0"
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/config.yaml", "history.csv",
                 "training_summary.json"):
        assert (run_dir / name).is_file(), name
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert summary["best_epoch"] in (1, 2)
    assert summary["best_val_balanced_accuracy"] == history["val_balanced_accuracy"].max()
    assert json.loads((run_dir / "training_summary.json").read_text())["steps"] == summary["steps"] > 0
    best = state(run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == summary["best_epoch"]


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    reference = training.train(tiny_classification_run(tmp_path / "a"), threads=1)
    run = tiny_classification_run(tmp_path / "b")

    calls = {"n": 0}
    original = ClassificationTask.validation_score

    def crash_in_second_epoch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ClassificationTask, "validation_score", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        training.train(run, threads=1)
    assert state(tmp_path / "b/results/tiny_ce/seed0/checkpoints/last.pt")["epoch"] == 1
    monkeypatch.setattr(ClassificationTask, "validation_score", original)
    resumed = training.train(run, threads=1)

    assert resumed["steps"] == reference["steps"]
    a = state(tmp_path / "a/results/tiny_ce/seed0/checkpoints/last.pt")["model"]
    b = state(tmp_path / "b/results/tiny_ce/seed0/checkpoints/last.pt")["model"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    run = tiny_classification_run(tmp_path)
    real_build = training.build_loss

    class Exploding(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, logits, target):
            return self.inner(logits, target) * float("nan")

    def exploding_loss(*args, **kwargs):
        return Exploding(real_build(*args, **kwargs))

    monkeypatch.setattr(training, "build_loss", exploding_loss)
    with pytest.raises(TrainingError, match=r"non-finite loss .* epoch 1, batch 1, optimizer step 0"):
        training.train(run, threads=1)
    assert not (tmp_path / "results/tiny_ce/seed0/training_summary.json").exists()


def test_the_trainer_gives_the_loss_its_steps_per_epoch(tmp_path):
    # period_epochs: 1 tilts towards the next class each epoch, so the logged weights show the epoch length
    run = tiny_classification_run(tmp_path, epochs=3)
    run["loss"] = {"name": "dynamical", "amplitude": 3.0, "period_epochs": 1}
    summary = training.train(run, threads=1)
    weights = pd.read_csv(tmp_path / "results/tiny_ce/seed0/loss_weights.csv")
    per_epoch = summary["steps"] // 3
    assert len(weights) == summary["steps"] and per_epoch >= 2
    mid_epoch = weights.iloc[[per_epoch * epoch + per_epoch // 2 for epoch in range(3)]]
    assert mid_epoch.filter(like="w").to_numpy().argmax(axis=1).tolist() == [0, 1, 2]
