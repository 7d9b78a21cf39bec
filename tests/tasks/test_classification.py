"""The classification task: the head a loss declares (LDAM's cosine head), and a run trained with it
that the predict stage rebuilds from the run config."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline import predict, training
from pipeline.errors import ConfigError
from pipeline.losses import build_loss
from pipeline.models import CosineClassifier, CosineHeadModel, build_classifier
from pipeline.tasks.classification import ClassificationTask, classifier_head
from tests.helpers import tiny_classification_run

# ISIC 2018 training counts (HAM10000) in ISIC order: MEL, NV, BCC, AKIEC, BKL, DF, VASC
ISIC_COUNTS = [1113, 6705, 514, 327, 1099, 115, 142]


def _cfg(loss: dict, model: dict | None = None) -> dict:
    return {"loss": loss, "model": {"name": "test_resnet", **(model or {})}}


def test_head_follows_the_loss_unless_the_config_sets_it(caplog):
    assert classifier_head(_cfg({"name": "ce"})) == "linear"
    assert classifier_head(_cfg({"name": "ldam"})) == "cosine"
    assert classifier_head(_cfg({"name": "ldam"}, {"head": "linear"})) == "linear"
    assert "assumes a cosine head" in caplog.text
    with pytest.raises(ConfigError, match="model.head is 'cosine' but loss 'focal' expects logits"):
        classifier_head(_cfg({"name": "focal"}, {"head": "cosine"}))
    with pytest.raises(ConfigError, match="model.head must be one of"):
        classifier_head(_cfg({"name": "ce"}, {"head": "mlp"}))


def test_cosine_head_outputs_cosines_whatever_the_feature_scale():
    torch.manual_seed(0)
    head = CosineClassifier(in_features=16, num_classes=5)
    features = torch.randn(32, 16)
    for scale in (1e-3, 1.0, 1e3):
        cosines = head(scale * features)
        assert cosines.shape == (32, 5)
        assert cosines.abs().max() <= 1.0 + 1e-6
        assert torch.allclose(cosines, head(features), atol=1e-5)  # invariant to the feature norm
    aligned = CosineClassifier(in_features=16, num_classes=1)
    assert aligned(aligned.weight.detach() * 7.0).item() == pytest.approx(1.0, abs=1e-6)  # cos(w, 7w) = 1


def test_ldam_at_initialisation_is_on_the_log_c_scale_with_the_cosine_head():
    """At the start of training (batch-norm in training mode), s = 30 times a linear head's raw
    logits gives a loss many times log C; times cosines it stays near log C (margins off, so only
    the head's outputs move the loss away from log C)."""
    torch.set_num_threads(1)
    target = torch.repeat_interleave(torch.arange(7), torch.tensor([4, 20, 2, 2, 4, 1, 1]))
    ldam = build_loss("ldam", num_classes=7, class_counts=ISIC_COUNTS, max_margin=0.0)
    losses = {}
    for head in ("cosine", "linear"):
        values = []
        for seed in range(4):
            torch.manual_seed(seed)
            model = build_classifier({"name": "resnet10t"}, 7, head=head).train()
            images = torch.rand(len(target), 3, 64, 64)
            with torch.no_grad():
                outputs = model(images)
            if head == "cosine":
                assert outputs.abs().max() <= 1.0 + 1e-6
            values.append(ldam(outputs, target).item())
        losses[head] = sum(values) / len(values)
    assert math.log(7) <= losses["cosine"] < math.log(7) + 2.0, losses
    assert losses["linear"] > 2 * losses["cosine"], losses


def test_ldam_run_trains_with_the_cosine_head_and_predicts_from_its_checkpoint(tmp_path):
    run = tiny_classification_run(tmp_path)
    run["loss"] = {"name": "ldam"}
    summary = training.train(run, threads=1)
    assert summary["steps"] > 0
    history = summary["history"]
    assert all(math.isfinite(row["train_loss"]) for row in history)

    task, model = predict.load_best_model(run, torch.device("cpu"))
    assert isinstance(model, CosineHeadModel)
    best = torch.load(tmp_path / "results/tiny_ce/seed0/checkpoints/best.pt", map_location="cpu", weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, best["model"][key]), key

    frame = training.load_split(run)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    table = task.predict(model, test, torch.device("cpu"), tmp_path)
    probs = torch.tensor(table[["prob_A", "prob_B", "prob_C"]].to_numpy(), dtype=torch.float32)
    # the probabilities are the softmax of s * cosines, s the loss's scale (30): the temperature LDAM trained at
    images = torch.stack([task.eval_dataset(test, model)[i][0] for i in range(len(test))])
    with torch.no_grad():
        cosines = model(images)
    assert cosines.abs().max() <= 1.0 + 1e-6
    assert torch.allclose(probs, torch.softmax(30.0 * cosines, dim=1), atol=1e-5)
    assert (table["pred"] == table[["prob_A", "prob_B", "prob_C"]].idxmax(axis=1).str[5:]).all()


def test_model_and_output_scale_follow_the_run_config():
    run = {"dataset": {"classes": ["A", "B", "C"], "root": "."}, "model": {"name": "test_resnet"}}
    ce = ClassificationTask({**run, "loss": {"name": "ce"}})
    ldam = ClassificationTask({**run, "loss": {"name": "ldam", "scale": 16.0}})
    ldam_linear = ClassificationTask({**run, "loss": {"name": "ldam"}, "model": {"name": "test_resnet", "head": "linear"}})
    assert not isinstance(ce.build_model(), CosineHeadModel) and ce.output_scale == 1.0
    assert isinstance(ldam.build_model(), CosineHeadModel) and ldam.output_scale == 16.0
    # LDAM multiplies whatever the head outputs by s, so the predicted probabilities do too
    assert not isinstance(ldam_linear.build_model(), CosineHeadModel) and ldam_linear.output_scale == 30.0
    with pytest.raises(RuntimeError, match="state_dict"):
        ldam.build_model().load_state_dict(ldam_linear.build_model().state_dict())
