"""Lesion instances in evaluation: splitting predicted lesions, matching against annotated
instances, counts per type and severity grading."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.draw import disk, ellipse
from sklearn.metrics import cohen_kappa_score

from pipeline.data.io import write_instance_map
from pipeline.errors import DataError
from pipeline.evaluation.instances import (
    calibrated_counts,
    fit_count_calibration,
    grade_labels,
    grading_metrics,
    predicted_instances,
    reference_table,
    segmentation_inputs,
)
from pipeline.evaluation.segmentation import compute_segmentation_metrics, match_lesions

TYPES = ["papule", "pustule"]


def two_touching_discs(shape=(30, 44), value=1) -> np.ndarray:
    m = np.zeros(shape, dtype=np.uint8)
    m[disk((15, 12), 8, shape=shape)] = value
    m[disk((15, 27), 8, shape=shape)] = value  # centres 15 apart, radii 8: they overlap a little
    return m


# ---------------------------------------------------------------- splitting
def test_two_touching_predicted_lesions_of_one_type_are_split():
    pred = two_touching_discs()
    instances = predicted_instances(pred)
    assert instances.max() == 2
    assert instances[15, 12] != instances[15, 27]
    assert predicted_instances(pred, split_touching=False).max() == 1  # the switch in the config


def test_elongated_lesion_and_even_strip_are_not_split():
    m = np.zeros((30, 60), dtype=np.uint8)
    m[ellipse(15, 30, 5, 25)] = 1
    m[25:27, 2:58] = 2  # a 2-pixel strip: a plateau of the distance transform
    assert predicted_instances(m).max() == 2


def test_large_min_peak_distance_keeps_touching_lesions_together():
    assert predicted_instances(two_touching_discs(), min_peak_distance=40).max() == 1


def test_lesions_of_two_types_that_touch_are_two_lesions():
    m = np.zeros((6, 6), dtype=np.uint8)
    m[1:4, 1:3], m[1:4, 3:5] = 1, 2
    instances = predicted_instances(m)
    assert sorted(np.unique(instances).tolist()) == [0, 1, 2]


# ---------------------------------------------------------------- matching and counts
def test_touching_annotated_instances_are_matched_one_to_one():
    true = two_touching_discs()
    true_instances = np.where(true > 0, 1, 0)
    true_instances[:, 20:] = np.where(true[:, 20:] > 0, 2, 0)  # split at column 20 (between the centres)
    pred = two_touching_discs()
    rows = match_lesions(true, pred, classes=TYPES, true_instances=true_instances,
                         pred_instances=predicted_instances(pred))
    assert len(rows) == 2 and all(r["matched"] for r in rows)
    assert sorted(r["instance_id"] for r in rows) == [1, 2]
    # the old rule (union components, no split) saw one lesion on each side
    assert len(match_lesions(true, pred, true_instances=(true > 0).astype(int), pred_instances=(pred > 0).astype(int))) == 1


def test_counts_per_type_equal_the_annotation():
    true = np.zeros((20, 30), dtype=np.uint8)
    true_instances = np.zeros((20, 30), dtype=np.int64)
    true[2:6, 2:6], true_instances[2:6, 2:6] = 1, 1
    true[2:6, 6:10], true_instances[2:6, 6:10] = 1, 2  # touches papule 1
    true[2:6, 10:14], true_instances[2:6, 10:14] = 2, 3  # a pustule touching papule 2
    true[12:16, 20:24], true_instances[12:16, 20:24] = 2, 4
    pred = true.copy()
    metrics, lesions, per_image = compute_segmentation_metrics(
        [("a", true, pred, true_instances)], TYPES, n_bootstrap=100, split_touching=False)
    row = per_image.iloc[0]
    assert (row["n_true_papule"], row["n_true_pustule"], row["n_true"]) == (2, 2, 4)
    # predicted: the two touching papules are one papule blob (no split asked), pustules separate
    assert (row["n_pred_papule"], row["n_pred_pustule"]) == (1, 2)
    assert metrics["per_class"]["papule"]["count_error"]["mae"] == 1
    assert metrics["per_class"]["pustule"]["count_error"]["mae"] == 0
    assert sorted(lesions["instance_id"].dropna().astype(int)) == [1, 2, 3, 4]


def test_without_instance_map_true_lesions_are_components_per_type():
    true = np.zeros((8, 8), dtype=np.uint8)
    true[1:4, 1:3], true[1:4, 3:5] = 1, 2  # touching, two types
    _, _, per_image = compute_segmentation_metrics([("a", true, true)], TYPES, n_bootstrap=100)
    assert per_image.loc[0, "n_true"] == 2 and per_image.loc[0, "n_pred"] == 2


def test_instance_map_disagreeing_with_label_map_names_the_image():
    true = np.zeros((4, 4), dtype=np.uint8)
    true[1, 1] = 1
    instances = np.zeros((4, 4), dtype=np.int64)
    instances[2, 2] = 1
    with pytest.raises(DataError, match=r"image 'a'.*label-map background"):
        compute_segmentation_metrics([("a", true, true, instances)], TYPES, n_bootstrap=100)


# ---------------------------------------------------------------- grading
def test_grading_block_by_hand():
    true_counts = [0, 3, 8, 30, 60, 7]
    pred_counts = [1, 9, 8, 25, 20, 7]
    annotated = [0, 0, 1, 2, 3, None]  # the last one is graded from its annotated count (7 -> 1)
    block, reference, predicted = grading_metrics(true_counts, pred_counts, annotated, n_bootstrap=200)
    assert reference.tolist() == [0, 0, 1, 2, 3, 1]
    assert predicted.tolist() == [0, 1, 1, 2, 1, 1]
    assert block["accuracy"]["k"] == 4 and block["accuracy"]["n"] == 6
    expected = cohen_kappa_score(reference, predicted, weights="quadratic", labels=[0, 1, 2, 3])
    assert block["kappa"]["value"] == pytest.approx(expected)
    lo, hi = block["kappa"]["ci95"]
    assert lo <= block["kappa"]["value"] <= hi
    assert block["confusion_matrix"]["counts"][3] == [0, 1, 0, 0]
    assert block["count_mae"] == pytest.approx(np.mean(np.abs(np.subtract(pred_counts, true_counts))))
    assert -1 <= block["spearman"]["value"] <= 1
    assert block["reference"] == "annotated grade where given, else graded from annotated counts"


def test_grading_falls_back_to_annotated_counts_without_grade_column():
    block, reference, _ = grading_metrics([2, 10, 40], [2, 10, 40], [None] * 3, [5, 20, 50], n_bootstrap=100)
    assert block["reference"] == "graded from annotated counts"
    assert reference.tolist() == [0, 1, 2] and block["accuracy"]["value"] == 1
    assert block["kappa"]["value"] == pytest.approx(1.0)
    block, _, _ = grading_metrics([2], [2], [0], n_bootstrap=100)
    assert block["reference"] == "annotated grade"


def test_grade_labels():
    assert grade_labels([5, 20, 50]) == ["0 mild (≤ 5)", "1 moderate (6–20)", "2 severe (21–50)", "3 very severe (> 50)"]
    assert grade_labels([3]) == ["grade 0 (≤ 3)", "grade 1 (> 3)"]


def test_grading_in_segmentation_metrics_uses_the_annotated_grades():
    empty = np.zeros((6, 6), dtype=np.uint8)
    one = empty.copy()
    one[1:3, 1:3] = 1
    samples = [("a", one, one), ("b", empty, empty)]
    metrics, _, per_image = compute_segmentation_metrics(
        samples, TYPES, n_bootstrap=100, grade_thresholds=[0], annotated_grades={"a": 1, "b": None})
    assert per_image["grade_pred"].tolist() == [1, 0] and per_image["grade_true"].tolist() == [1, 0]
    assert per_image["grade_annotated"].tolist() == [1, None]
    assert metrics["grading"]["accuracy"]["value"] == 1 and metrics["grading"]["thresholds"] == [0]


# ---------------------------------------------------------------- evaluate-stage inputs
def test_segmentation_inputs_read_and_check_instance_maps(tmp_path):
    label = np.zeros((5, 5), dtype=np.uint8)
    label[1:3, 1:3] = 1
    Image.fromarray(label).save(tmp_path / "a.png")
    Image.fromarray(label).save(tmp_path / "b.png")
    (tmp_path / "instances").mkdir()
    write_instance_map((label > 0).astype(np.int64), tmp_path / "instances" / "a.png")
    bad = (label > 0).astype(np.int64)
    bad[4, 4] = 2
    write_instance_map(bad, tmp_path / "instances" / "b.png")
    manifest = pd.DataFrame({"image_id": ["a", "b", "c"], "instance_path": ["instances/a.png", "instances/b.png", ""],
                             "grade": ["2", "", ""]})
    manifest.to_csv(tmp_path / "m.csv", index=False)
    table = reference_table(tmp_path / "m.csv", tmp_path)
    assert table.loc["a", "grade"] == 2 and table.loc["b", "grade"] is None
    predictions = pd.DataFrame({"image_id": ["a", "b"], "true_mask_path": [str(tmp_path / "a.png")] * 2,
                                "pred_mask_path": ["a.png", "a.png"]})
    samples, settings = segmentation_inputs(predictions, tmp_path, {"manifest": tmp_path / "m.csv", "mask_root": tmp_path,
                                                                    "grading": {"thresholds": [1]}}, {})
    assert settings["grade_thresholds"] == [1] and settings["split_touching"] is True
    first = next(samples)
    assert first[0] == "a" and first[3].max() == 1
    with pytest.raises(DataError, match=r"instances/b\.png"):
        next(samples)


def test_bad_grade_in_manifest_names_the_row(tmp_path):
    pd.DataFrame({"image_id": ["a"], "grade": ["mild"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match="row 1: grade 'mild'"):
        reference_table(tmp_path / "m.csv", tmp_path)


def test_annotated_grade_beyond_thresholds_is_an_error():
    with pytest.raises(DataError, match="beyond"):
        grading_metrics([1], [1], [5], [5, 20, 50], n_bootstrap=100)


def test_kappa_is_null_when_every_image_has_one_grade():
    block, _, _ = grading_metrics([1, 2], [1, 2], [None, None], n_bootstrap=100)
    assert math.isnan(block["kappa"]["value"]) and block["accuracy"]["value"] == 1


# ---------------------------------------------------------------- count calibration
def test_count_calibration_fits_by_hand():
    found, annotated = [2, 4, 6, 8], [1, 2, 3, 4]
    linear = fit_count_calibration(found, annotated, "linear")
    assert linear["slope"] == pytest.approx(0.5) and linear["intercept"] == pytest.approx(0.0, abs=1e-12)
    assert linear["val_count_mae_found"] == pytest.approx(2.5) and linear["val_count_mae"] == pytest.approx(0.0, abs=1e-12)
    assert calibrated_counts([10], linear) == pytest.approx([5.0])
    shifted = fit_count_calibration([5, 6, 7], [0, 1, 2], "linear")  # a = -5: small counts clip at 0
    assert calibrated_counts([0, 5, 9], shifted) == pytest.approx([0.0, 0.0, 4.0])
    isotonic = fit_count_calibration([1, 2, 3, 4], [2, 1, 5, 6], "isotonic")  # pools the first two
    assert calibrated_counts([1, 2, 3, 4, 10, 0], isotonic) == pytest.approx([1.5, 1.5, 5, 6, 6, 1.5])
    # the Huber line follows the many photos on a line, not the one photo whose lesions the model
    # mostly missed (18 found of 40)
    found_9, annotated_9 = [2, 4, 6, 8, 10, 12, 14, 16, 18], [1, 2, 3, 4, 5, 6, 7, 8, 40]
    huber = fit_count_calibration(found_9, annotated_9, "huber")
    least_squares = fit_count_calibration(found_9, annotated_9, "linear")
    assert huber["slope"] == pytest.approx(0.5, abs=0.01) and least_squares["slope"] > 1.5
    assert fit_count_calibration(found, annotated, "none") is None
    assert calibrated_counts([3, 4], None).tolist() == [3.0, 4.0]
    json.dumps(linear), json.dumps(isotonic)  # stored in postprocessing.json


def test_count_calibration_bad_input():
    with pytest.raises(ValueError, match="one of"):
        fit_count_calibration([1, 2, 3], [1, 2, 3], "cubic")
    with pytest.raises(DataError, match="two different numbers"):
        fit_count_calibration([4, 4, 4], [1, 2, 3], "linear")
    with pytest.raises(DataError, match="unknown method"):
        calibrated_counts([1], {"method": "cubic"})


def test_grading_reads_the_calibrated_count_and_keeps_the_found_figures():
    annotated = [1, 3, 8, 15, 30, 60]
    found = [2 * n for n in annotated]  # a detector that finds every lesion twice
    calibration = fit_count_calibration(found, annotated, "linear")
    raw, reference, raw_grades = grading_metrics(annotated, found, [None] * 6, n_bootstrap=50)
    block, _, grades = grading_metrics(annotated, found, [None] * 6, n_bootstrap=50, count_calibration=calibration)
    assert reference.tolist() == [0, 0, 1, 1, 2, 3]
    assert raw_grades.tolist() == [0, 1, 1, 2, 3, 3] and raw["accuracy"]["k"] == 3
    assert grades.tolist() == reference.tolist() and block["accuracy"]["k"] == 6
    assert block["count_mae"] == pytest.approx(0.0, abs=1e-9)
    assert block["found"]["accuracy"]["k"] == 3 and block["found"]["count_mae"] == pytest.approx(np.mean(annotated))
    assert block["count_calibration"]["method"] == "linear" and "validation" in block["count_rule"]
    assert raw["count_calibration"] is None and "found" not in raw and "lesions found" in raw["count_rule"]


def _one_photo_run(tmp_path, **prediction_columns) -> tuple[pd.DataFrame, dict]:
    """A run folder's predictions (one photo, its one lesion found exactly) and its dataset entry."""
    label = np.zeros((5, 5), dtype=np.uint8)
    label[1:3, 1:3] = 1
    Image.fromarray(label).save(tmp_path / "a.png")
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"image_id": ["a"], "image_path": ["a.png"], "mask_path": ["a.png"], "split": ["test"]}).to_csv(manifest, index=False)
    predictions = pd.DataFrame({"image_id": ["a"], "pred_mask_path": ["a.png"], "true_mask_path": [str(tmp_path / "a.png")],
                                **prediction_columns})
    return predictions, {"manifest": str(manifest), "mask_root": str(tmp_path), "classes": ["papule"]}


def test_evaluate_inputs_read_the_calibration_the_predict_stage_wrote(tmp_path):
    predictions, dataset = _one_photo_run(tmp_path)
    assert segmentation_inputs(predictions, tmp_path, dataset, {})[1]["count_calibration"] is None
    record = {"lesion_threshold": 0.5, "count_calibration": fit_count_calibration([1, 2, 3], [2, 4, 6], "linear")}
    (tmp_path / "postprocessing.json").write_text(json.dumps(record))
    assert segmentation_inputs(predictions, tmp_path, dataset, {})[1]["count_calibration"]["slope"] == pytest.approx(2.0)
    (tmp_path / "postprocessing.json").write_text("{half")
    with pytest.raises(DataError, match="postprocessing.json"):
        segmentation_inputs(predictions, tmp_path, dataset, {})


# ---------------------------------------------------------------- count from the lesion mass
def test_grading_from_the_lesion_mass_reads_the_masses_not_the_lesions_found():
    annotated = [1, 3, 8, 15, 30, 60]
    masses = [120.0 * n + 50 for n in annotated]  # 120 px of lesion probability a lesion, 50 px of noise
    found = [1, 1, 2, 2, 3, 3]  # touching lesions merged: the number found saturates
    calibration = fit_count_calibration(masses, annotated, "linear", count_from="lesion_mass")
    assert calibration["count_from"] == "lesion_mass" and "val_count_mae_found" not in calibration
    assert calibration["slope"] == pytest.approx(1 / 120) and calibration["intercept"] == pytest.approx(-50 / 120)
    block, reference, grades = grading_metrics(annotated, found, [None] * 6, n_bootstrap=50,
                                               count_calibration=calibration, lesion_masses=masses)
    assert grades.tolist() == reference.tolist() == [0, 0, 1, 1, 2, 3]
    assert block["count_mae"] == pytest.approx(0.0, abs=1e-9)
    assert block["found"]["accuracy"]["k"] == 2  # graded from the lesions found: mild twice only
    assert "lesion probability mass" in block["count_rule"] and "validation" in block["count_rule"]
    assert "8.333 × lesion mass in thousands of pixels" in block["count_rule"]  # 1/120 a pixel, per thousand
    with pytest.raises(DataError, match="lesion_mass"):  # a calibration on masses, predictions without them
        grading_metrics(annotated, found, [None] * 6, n_bootstrap=50, count_calibration=calibration)
    with pytest.raises(DataError, match="lesion masses"):
        grading_metrics(annotated, found, [None] * 6, n_bootstrap=50, count_calibration=calibration,
                        lesion_masses=[1.0, 2.0, math.nan, 4.0, 5.0, 6.0])
    with pytest.raises(ValueError, match="count_from"):
        fit_count_calibration(masses, annotated, "linear", count_from="area")


def test_a_mass_calibration_is_scale_free():
    # the same photos in pixels and in thousands of pixels give the same line (the Huber fit works in
    # units of the mean mass, so its L2 penalty does not depend on the photo size)
    rng = np.random.default_rng(0)
    annotated = rng.integers(0, 60, size=40).astype(float)
    masses = 150.0 * annotated + rng.normal(0, 200, size=40) + 300
    pixels = fit_count_calibration(masses, annotated, "huber", count_from="lesion_mass")
    thousands = fit_count_calibration(masses / 1000, annotated, "huber", count_from="lesion_mass")
    assert pixels["slope"] * 1000 == pytest.approx(thousands["slope"], rel=1e-6)
    assert pixels["intercept"] == pytest.approx(thousands["intercept"], abs=1e-6)
    assert pixels["slope"] == pytest.approx(1 / 150, rel=0.05)


def test_evaluate_reads_the_lesion_masses_the_predict_stage_wrote(tmp_path):
    predictions, dataset = _one_photo_run(tmp_path, lesion_mass=[400.0])
    record = {"lesion_threshold": 0.5,
              "count_calibration": fit_count_calibration([100, 200, 300], [1, 2, 3], "linear", count_from="lesion_mass")}
    (tmp_path / "postprocessing.json").write_text(json.dumps(record))
    samples, settings = segmentation_inputs(predictions, tmp_path, dataset, {})
    assert settings["lesion_masses"] == {"a": 400.0}
    _, _, per_image = compute_segmentation_metrics(samples, ["papule"], n_bootstrap=10, **settings)
    assert per_image["n_pred"].tolist() == [1]  # one lesion found ...
    assert per_image["lesion_mass"].tolist() == [400.0] and per_image["n_graded"].tolist() == pytest.approx([4.0])
    samples, settings = segmentation_inputs(predictions, tmp_path, dataset, {})
    with pytest.raises(DataError, match="no value for 1 image"):
        compute_segmentation_metrics(samples, ["papule"], n_bootstrap=10, **{**settings, "lesion_masses": {"b": 1.0}})
