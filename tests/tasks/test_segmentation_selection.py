"""The validation score that selects a segmentation checkpoint is the reported test metric."""

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.evaluation.segmentation import compute_segmentation_metrics
from pipeline.tasks.segmentation import SegmentationTask

TYPES = ["whitehead", "papule"]


def _task_yielding(maps):
    cfg = {"task": "segmentation", "dataset": {"classes": TYPES, "root": ".", "mask_root": "."}}
    task = SegmentationTask(cfg)
    # label_maps yields (image_id, truth, label map, lesion mass); the mass plays no part in selection
    task.label_maps = lambda model, frame, device, amp_dtype=None: iter((*m, 0.0) for m in maps)
    return task


def _false_type_case():
    truth = np.zeros((16, 16), np.uint8)
    truth[2:6, 2:6] = 1  # one whitehead
    pred = truth.copy()
    pred[10:14, 10:14] = 2  # found, plus a false papule blob
    return truth, pred


def test_a_falsely_predicted_lesion_type_lowers_the_selection_score_as_it_lowers_the_test_metric():
    truth, pred = _false_type_case()
    score = _task_yielding([("img", truth, pred)]).validation_score(model=None, frame=None, device=None)
    metrics, _, _ = compute_segmentation_metrics([("img", truth, pred)], TYPES, n_bootstrap=10)
    # whitehead Dice 1, papule Dice 0 (predicted where none is annotated): macro 0.5 in both places.
    # MONAI's DiceMetric(ignore_empty=True), used before, scored this 1.0 at validation.
    assert score == pytest.approx(0.5)
    assert metrics["macro_dice"]["value"] == pytest.approx(score)
    assert metrics["per_class"]["papule"]["dice"]["value"] == 0.0


def test_every_type_weighs_the_same_in_the_selection_score():
    papule = np.zeros((16, 16), np.uint8)
    papule[0:8, 0:8] = 2  # a large papule, found in two images
    whitehead = np.zeros((16, 16), np.uint8)
    whitehead[12:14, 12:14] = 1  # a small whitehead, missed in a third
    samples = [("a", papule, papule), ("b", papule, papule), ("c", whitehead, np.zeros_like(whitehead))]
    score = _task_yielding(samples).validation_score(model=None, frame=None, device=None)
    metrics, _, _ = compute_segmentation_metrics(samples, TYPES, n_bootstrap=10)
    assert score == pytest.approx(0.5) == metrics["macro_dice"]["value"]  # (papule 1 + whitehead 0) / 2
    assert metrics["mean_dice"]["value"] == pytest.approx(2 / 3)  # per image: favours the common type


def test_no_lesion_anywhere_scores_zero_not_nan():
    empty = np.zeros((8, 8), np.uint8)
    assert _task_yielding([("a", empty, empty)]).validation_score(model=None, frame=None, device=None) == 0.0


@pytest.mark.parametrize("loss, model, message", [
    ({"name": "ldam"}, {}, "assumes a cosine classifier head, which only the classification task builds"),
    ({"name": "dice_ce"}, {"head": "cosine"}, "model.head is a classification setting"),
])
def test_a_loss_or_head_that_needs_cosines_is_refused_for_segmentation(loss, model, message):
    cfg = {"task": "segmentation", "dataset": {"classes": TYPES, "root": ".", "mask_root": "."},
           "loss": loss, "model": {"name": "Unet", **model}}
    with pytest.raises(ConfigError, match=message):
        SegmentationTask(cfg)
