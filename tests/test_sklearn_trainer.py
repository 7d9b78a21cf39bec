"""The logistic-regression baseline (pipeline.sklearn_trainer): its run files, its predictions and
the CLI dispatch."""

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from pipeline import cli, rundir, sklearn_trainer
from pipeline.errors import ConfigError, TrainingError
from tests.helpers import tiny_classification_run

LOGREG = {"name": "logreg", "kind": "sklearn", "params": {"pixels": 4, "C": [0.01, 1.0]}}
WEIGHTED = {"name": "weighted_ce", "weights": "inverse"}


def _run(tmp_path, **overrides):
    return {**tiny_classification_run(tmp_path), "model": LOGREG, "loss": WEIGHTED, **overrides}


def test_training_writes_the_run_files_and_chooses_c_on_validation(tmp_path):
    run = _run(tmp_path)
    summary = sklearn_trainer.train(run, threads=1)
    run_dir = tmp_path / "results/tiny_ce/seed0"
    assert json.loads((run_dir / rundir.TRAINING_SUMMARY).read_text()) == json.loads(json.dumps(summary))
    assert [row["C"] for row in summary["history"]] == [0.01, 1.0]
    best = max(summary["history"], key=lambda row: row["val_balanced_accuracy"])
    assert summary["best_val_balanced_accuracy"] == best["val_balanced_accuracy"]
    assert summary["best_val_balanced_accuracy"] > 0.9  # one colour per class: easy
    assert summary["train_class_counts"] == [6, 6, 6]
    checkpoint = json.loads((run_dir / rundir.SKLEARN_CHECKPOINT).read_text())  # plain JSON, no pickle
    assert checkpoint["C"] == summary["best_C"] and checkpoint["class_weight"] == "balanced"
    assert np.asarray(checkpoint["coef"]).shape == (3, 4 * 4 * 3)
    assert rundir.read_run_config(run_dir / rundir.CHECKPOINT_CONFIG)["model"] == LOGREG
    assert list(rundir.read_table(run_dir / rundir.HISTORY, required=["C"]).columns) == ["C", "val_balanced_accuracy", "seconds"]


def test_ties_keep_the_stronger_regularisation(tmp_path):
    run = _run(tmp_path)
    run["model"] = dict(LOGREG, params={"pixels": 4, "C": [10.0, 1.0, 5.0]})
    summary = sklearn_trainer.train(run, threads=1)
    assert [row["C"] for row in summary["history"]] == [1.0, 5.0, 10.0]  # tried from the smallest
    top = max(row["val_balanced_accuracy"] for row in summary["history"])
    assert summary["best_C"] == min(row["C"] for row in summary["history"] if row["val_balanced_accuracy"] == top)


def test_saved_probabilities_equal_sklearns(tmp_path):
    run = _run(tmp_path)
    sklearn_trainer.train(run, threads=1)
    checkpoint = sklearn_trainer.load_checkpoint(run)
    frame = sklearn_trainer._load_split(run)
    features = sklearn_trainer.pixel_features(frame, tmp_path / "data", 4)
    train = (frame["split"] == "train").to_numpy()
    mean, scale = features[train].mean(axis=0), features[train].std(axis=0)
    scale[scale == 0] = 1.0
    refit = LogisticRegression(C=checkpoint["C"], class_weight="balanced", max_iter=2000)
    refit.fit((features[train] - mean) / scale, frame.loc[train, "label"].map({"A": 0, "B": 1, "C": 2}))
    np.testing.assert_allclose(sklearn_trainer.probabilities(checkpoint, features),
                               refit.predict_proba((features - mean) / scale), atol=1e-6)


def test_cli_dispatches_train_and_predict_and_evaluate_reads_it(tmp_path, monkeypatch):
    run = _run(tmp_path)
    run_yaml = rundir.write_run_config(run, tmp_path / "run.yaml")
    called = []
    monkeypatch.setattr("pipeline.training.train", lambda *a, **k: called.append("torch"))
    assert cli.main(["train", "--run-config", str(run_yaml), "--threads", "1"]) == 0
    assert called == []  # the torch trainer was not used
    assert cli.main(["predict", "--run-config", str(run_yaml)]) == 0
    run_dir = tmp_path / "results/tiny_ce/seed0"
    table = rundir.read_predictions(run_dir, rundir.prediction_columns("classification", ["A", "B", "C"]))
    assert np.allclose(table[["prob_A", "prob_B", "prob_C"]].sum(axis=1), 1)
    assert (table["pred"] == table["label"]).mean() > 0.9
    assert cli.main(["evaluate", "--run-config", str(run_yaml)]) == 0
    assert rundir.read_metrics(run_dir)["balanced_accuracy"]["value"] > 0.9


def test_unweighted_with_plain_ce(tmp_path):
    run = _run(tmp_path, loss={"name": "ce"})
    assert sklearn_trainer.settings(run)["class_weight"] is None


def test_a_changed_config_does_not_reuse_the_model(tmp_path):
    run = _run(tmp_path)
    sklearn_trainer.train(run, threads=1)
    changed = dict(run, model=dict(LOGREG, params={"pixels": 8}))
    with pytest.raises(TrainingError, match="another configuration"):
        sklearn_trainer.predict_run(changed)
    with pytest.raises(TrainingError, match="run `pipeline train`"):
        sklearn_trainer.predict_run(dict(run, run_dir=str(tmp_path / "elsewhere")))


@pytest.mark.parametrize("change, message", [
    ({"model": dict(LOGREG, name="svm")}, "unknown sklearn model 'svm'"),
    ({"model": dict(LOGREG, params={"pixel": 8})}, r"unknown key\(s\) \['pixel'\]"),
    ({"model": dict(LOGREG, params={"pixels": 1})}, "pixels must be an integer in 2..256"),
    ({"model": dict(LOGREG, params={"C": []})}, "C must be a positive number"),
    ({"model": dict(LOGREG, params={"C": [1, -1]})}, "C must be a positive number"),
    ({"model": dict(LOGREG, params={"max_iter": 0})}, "max_iter must be a positive integer"),
    ({"loss": {"name": "focal", "gamma": 2.0}}, "cannot be used with logreg"),
    ({"loss": {"name": "weighted_ce", "weights": "sqrt"}}, "cannot be used with logreg"),
    ({"sampler": {"name": "oversample", "coefficients": {"A": 1, "B": 1, "C": 2}}}, "sampler must be none"),
    ({"task": "segmentation"}, "is for classification"),
])
def test_config_errors_name_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        sklearn_trainer.settings(_run(tmp_path, **change))


def test_is_sklearn():
    assert sklearn_trainer.is_sklearn({"model": LOGREG})
    assert not sklearn_trainer.is_sklearn({"model": {"name": "resnet18"}})
