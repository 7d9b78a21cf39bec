"""Classification task: post-hoc logit offsets fitted on the validation split (predict.logit_offsets)."""

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.metrics import recall_score

from pipeline import predict, rundir, training
from pipeline import config as cfgmod
from pipeline.errors import ConfigError, DataError
from pipeline.tasks.classification import ClassificationTask, fit_logit_offsets
from tests.helpers import tiny_classification_run

MEANS = np.array([-2.0, 0.0, 2.0])


def gaussian_logits(counts, seed):
    """1-D features x ~ N(mu_c, 1) per class; the class-balanced Bayes logits -(x - mu_c)^2 / 2."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), counts)
    x = rng.normal(MEANS[labels], 1.0)
    return -0.5 * (x[:, None] - MEANS[None, :]) ** 2, labels


def test_offsets_fitted_on_a_biased_models_validation_set_restore_recall():
    bias = np.array([2.0, 0.0, -2.0])  # a model that learnt the majority's prior: class 2 is rarely called
    val_logits, val_labels = gaussian_logits([3000, 1000, 300], seed=0)
    offsets = fit_logit_offsets(val_logits + bias, val_labels, 3)
    assert offsets.sum() == pytest.approx(0.0, abs=1e-9)
    assert offsets == pytest.approx(-bias, abs=0.25)  # the bias, undone up to sampling noise

    test_logits, test_labels = gaussian_logits([3000, 1000, 300], seed=1)  # fresh data, never seen by the fit

    def recall(logits):
        return recall_score(test_labels, logits.argmax(axis=1), average=None)

    unbiased, biased, adjusted = recall(test_logits), recall(test_logits + bias), recall(test_logits + bias + offsets)
    assert biased[2] < unbiased[2] - 0.2
    assert adjusted == pytest.approx(unbiased, abs=0.03)
    assert adjusted.mean() > biased.mean() + 0.05  # balanced accuracy


def test_offsets_ignore_a_constant_shift_and_need_every_class():
    logits, labels = gaussian_logits([50, 30, 20], seed=2)
    assert fit_logit_offsets(logits + 7.0, labels, 3) == pytest.approx(fit_logit_offsets(logits, labels, 3), abs=1e-5)
    with pytest.raises(DataError, match=r"class\(es\) \[1\] have no validation images"):
        fit_logit_offsets(logits[labels != 1], labels[labels != 1], 3)


def offsets_run(tmp_path, method="fit_val"):
    run = tiny_classification_run(tmp_path)
    run["predict"] = {**run["predict"], "logit_offsets": method}
    return run


def test_predict_stage_fits_on_validation_images_only_and_adjusts_the_test_softmax(tmp_path, monkeypatch):
    run = offsets_run(tmp_path)
    training.train(run, threads=1)
    seen = []
    original = ClassificationTask.logits

    def spy(self, model, frame, *args, **kwargs):
        seen.append(sorted(set(frame["split"])))
        return original(self, model, frame, *args, **kwargs)

    monkeypatch.setattr(ClassificationTask, "logits", spy)
    path = predict.predict_run(run, "test")
    # the fit looked at validation images, then the validation split was predicted (val_predictions.csv,
    # where operating thresholds are chosen); test images were only predicted, never fitted on
    assert seen == [["val"], ["val"], ["test"]]

    record = rundir.read_logit_offsets(path.parent)
    assert record["method"] == "fit_val" and record["split"] == "val" and record["classes"] == ["A", "B", "C"]
    split = training.load_split(run)
    assert record["n_images"] == int((split["split"] == "val").sum())
    offsets = np.array(record["offsets"])
    assert offsets.shape == (3,) and offsets.sum() == pytest.approx(0.0, abs=1e-6)

    task, model = predict.load_best_model(run, torch.device("cpu"))
    test = split[split["split"] == "test"].reset_index(drop=True)
    raw = original(task, model, test, torch.device("cpu"))
    table = rundir.read_predictions(path.parent)
    probs = table[["prob_A", "prob_B", "prob_C"]].to_numpy()
    assert probs == pytest.approx(softmax(raw + offsets, axis=1), abs=1e-6)
    assert (table["pred"] == np.array(["A", "B", "C"])[probs.argmax(axis=1)]).all()

    # back to none: the stale offsets file goes, the probabilities are the plain softmax
    plain = dict(run, predict={**run["predict"], "logit_offsets": "none"})
    predict.predict_run(plain, "test")
    assert rundir.read_logit_offsets(path.parent) is None
    probs = rundir.read_predictions(path.parent)[["prob_A", "prob_B", "prob_C"]].to_numpy()
    assert probs == pytest.approx(softmax(raw, axis=1), abs=1e-6)


def test_fit_refuses_anything_but_validation_images(tmp_path):
    run = offsets_run(tmp_path)
    training.train(run, threads=1)
    task, model = predict.load_best_model(run, torch.device("cpu"))
    split = training.load_split(run)
    with pytest.raises(DataError, match=r"validation split only; got split\(s\) \['test', 'val'\]"):
        task.fit_post_hoc(model, split[split["split"] != "train"], torch.device("cpu"), tmp_path)
    with pytest.raises(DataError, match="no validation images"):
        task.fit_post_hoc(model, split.iloc[:0], torch.device("cpu"), tmp_path)
    assert not (tmp_path / rundir.LOGIT_OFFSETS).exists()


def test_logit_offsets_config_is_validated():
    dataset = {"task": "segmentation", "adapter": "folder", "root": "data", "classes": {"papule": "Papule"}}
    config = cfgmod.validate_config({
        "datasets": {"acne": dataset},
        "experiments": {"seg": {"dataset": "acne", "predict": {"logit_offsets": "fit_val"}}},
    })
    with pytest.raises(ConfigError, match="predict.logit_offsets is for classification only"):
        cfgmod.resolve_experiment(config, "seg", 0)
    with pytest.raises(ConfigError, match="logit_offsets"):
        cfgmod.validate_config({
            "datasets": {"acne": dataset},
            "experiments": {"seg": {"dataset": "acne", "predict": {"logit_offsets": "prior"}}},
        })
