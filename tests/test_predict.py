"""The predict stage (pipeline.predict): the best checkpoint, the task's prediction, predictions.csv."""

import pytest
import torch

from pipeline import predict, rundir, training
from pipeline.errors import TrainingError
from pipeline.evaluation.run import evaluate_run
from tests.helpers import tiny_classification_run


def test_predictions_follow_the_contract(tmp_path):
    run = tiny_classification_run(tmp_path)
    training.train(run, threads=1)
    task, model = predict.load_best_model(run, torch.device("cpu"))
    frame = training.load_split(run)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    table = task.predict(model, test, torch.device("cpu"), tmp_path)
    assert list(table.columns) == ["image_id", "label", "pred", "prob_A", "prob_B", "prob_C"]
    assert table[["prob_A", "prob_B", "prob_C"]].sum(axis=1).round(5).eq(1).all()
    assert (table["pred"] == table[["prob_A", "prob_B", "prob_C"]].idxmax(axis=1).str[5:]).all()


def test_a_changed_config_does_not_reuse_the_checkpoint(tmp_path):
    run = tiny_classification_run(tmp_path)
    training.train(run, threads=1)
    changed = dict(run, loss={"name": "focal", "gamma": 2.0})
    with pytest.raises(TrainingError, match="another configuration"):
        predict.load_best_model(changed, torch.device("cpu"))


def test_predict_run_writes_the_predictions_file(tmp_path):
    run = tiny_classification_run(tmp_path)
    training.train(run, threads=1)
    stale = tmp_path / "results/tiny_ce/seed0" / rundir.POSTPROCESSING  # from an earlier run that tuned
    stale.write_text('{"count_calibration": {"method": "linear", "intercept": 9, "slope": 9}}')
    path = predict.predict_run(run, "test")
    assert path == tmp_path / "results/tiny_ce/seed0" / rundir.PREDICTIONS
    assert not stale.exists()  # nothing later reads settings this prediction did not use
    table = rundir.read_predictions(path.parent, rundir.prediction_columns("classification", ["A", "B", "C"]))
    split = training.load_split(run)
    assert sorted(table["image_id"]) == sorted(split.loc[split["split"] == "test", "image_id"])
    # the validation split's predictions too, where the evaluate stage chooses operating thresholds
    val = rundir.read_predictions(path.parent, rundir.prediction_columns("classification", ["A", "B", "C"]),
                                  name=rundir.VAL_PREDICTIONS)
    assert sorted(val["image_id"]) == sorted(split.loc[split["split"] == "val", "image_id"])
    metrics = evaluate_run(run)
    chosen = metrics["per_class"]["A"]["operating_points_val"]
    assert chosen["chosen_on"] == "val" and chosen["sens_at_95_spec"]["sensitivity"]["n"] == (split.query("split == 'test'")["label"] == "A").sum()
    assert metrics["bootstrap"]["unit"].startswith("lesion or patient (group_id")  # the manifest's groups, not images
