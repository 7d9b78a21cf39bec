"""Captions say exactly the numbers they are given (worked out by hand below)."""

import math

from pipeline.reporting import captions


def test_formatting_helpers():
    assert captions.pct(0.7045) == "70%"
    assert captions.pct(0.7045, 1) == "70.5%"
    assert captions.pct(None) == "n/a" and captions.pct(math.nan) == "n/a"
    assert captions.ci_text([0.56, 0.82]) == "95% CI 56\u201382%"
    assert captions.ci_text([0.881, 0.94], percent=False) == "95% CI 0.88\u20130.94"
    assert captions.ci_text([None, 0.5]) == "95% CI n/a"
    assert captions.value_with_ci({"value": 0.7, "ci95": [0.56, 0.82]}) == "70% (95% CI 56\u201382%)"
    assert captions.signed_points(0.031) == "+3.1 points"
    assert captions.signed_points(-0.02) == "\u22122.0 points"
    assert captions.count(1512) == "1,512"
    assert captions.display_name("MEL", "Melanoma") == "Melanoma (MEL)"
    assert captions.display_name("MEL", "MEL") == "MEL"
    assert captions.display_name("papule", "Papule") == "Papule"


def test_class_detection_caption_reads_the_confusion_row():
    # Of 44 dermatofibromas, 31 recognised, 9 called nevus, 3 melanoma, 1 BKL.
    row = [3, 9, 0, 0, 1, 31, 0]
    labels = ["MEL", "NV", "BCC", "AKIEC", "BKL", "Dermatofibroma (DF)", "VASC"]
    text = captions.class_detection_caption(
        "Dermatofibroma (DF)", 44, {"value": 31 / 44, "ci95": [0.56, 0.82]}, row, labels, own_index=5
    )
    assert text == (
        "Of 44 Dermatofibroma (DF) images, 31 were recognised (70%, 95% CI 56\u201382%); "
        "9 were called NV, 3 MEL, 1 BKL."
    )


def test_class_detection_caption_groups_the_tail_and_handles_empty_classes():
    row = [5, 1, 1, 1, 1]
    text = captions.class_detection_caption("A", 9, {"value": 5 / 9, "ci95": None}, row, list("ABCDE"), 0, max_confusions=2)
    assert text.endswith("1 was called B, 1 C, and 2 were called other classes.")
    assert "no A images" in captions.class_detection_caption("A", 0, {}, [0, 0], ["A", "B"], 0)
    assert text.startswith("Of 9 A images, 5 were recognised (56%, 95% CI n/a)")


def test_confusion_caption_counts_diagonal_and_worst_error():
    counts = [[10, 3, 1], [7, 30, 0], [0, 2, 5]]
    text = captions.confusion_caption(counts, ["A", "B", "C"], normalized=False)
    assert "45 of 58 test images (78%) are on the diagonal" in text  # 10+30+5 = 45; 45/58 = 0.776
    assert "The most frequent error: 7 B called A." in text


def test_calibration_caption_direction_and_top_bin():
    bins = [
        {"lo": 0.0, "hi": 0.5, "count": 0, "confidence": None, "accuracy": None},
        {"lo": 0.5, "hi": 0.9, "count": 30, "confidence": 0.7, "accuracy": 0.6},
        {"lo": 0.9, "hi": 1.0, "count": 10, "confidence": 0.95, "accuracy": 0.8},
    ]
    text = captions.calibration_caption(0.1125, bins)
    assert "ECE) is 0.113" in text and "11.2 percentage points" in text
    assert "over-confident" in text  # stated confidence above accuracy in every bin
    assert "When it was 90%\u2013100% sure (10 images), it was right 80% of the time." in text


def test_operating_point_caption_uses_both_points():
    text = captions.operating_point_caption(
        "Melanoma (MEL)", {"value": 0.912, "ci95": [0.88, 0.94]}, {"value": 0.62}, {"value": 0.4}
    )
    assert text.startswith("Melanoma (MEL): AUC 0.91 (95% CI 0.88\u20130.94).")
    assert "62% of Melanoma (MEL) cases are caught" in text
    assert "rules out 40% of other lesions" in text


def test_data_caption_imbalance():
    text = captions.data_caption({"MEL": 100, "NV": 3000, "DF": 20, "VASC": 0}, {"MEL": "Melanoma (MEL)", "NV": "Nevus (NV)", "DF": "DF"}, "lesion")
    assert "Training set: 3,120 images" in text
    assert "Nevus (NV) (3,000), outnumbers the smallest, DF (20), 150.0 to 1" in text
    assert "No training images for: VASC" in text
    assert "grouped by lesion" in text


def test_lesion_type_caption():
    text = captions.lesion_type_caption(
        "Papule", 120, 80, {"value": 80 / 120, "ci95": [0.58, 0.75]}, [("Pustule", 15), ("Nodule", 0)], 25,
        n_pred=100, precision={"value": 0.8},
    )
    assert text == (
        "Of 120 annotated Papule lesions, 80 were found with the right type (67%, 95% CI 58\u201375%); "
        "25 were missed; 15 were called Pustule. Of 100 predicted Papule lesions, 80% matched an annotated Papule lesion."
    )
    why = captions.lesion_type_caption("Papule", 120, 80, None, [], 25,
                                       missed_by_cause={"not_found": 18, "merged": 6, "poor_overlap": 1})
    assert why == ("Of 120 annotated Papule lesions, 80 were found with the right type; 25 were missed (18 with nothing "
                   "drawn on them, 6 drawn into a neighbouring lesion, 1 overlapped too little).")


def test_lesion_confusion_caption_sums_the_blocks():
    # rows: A, B, false lesion; columns: A, B, missed
    counts = [[5, 1, 2], [0, 4, 3], [2, 1, 0]]
    text = captions.lesion_confusion_caption(counts, ["A", "B", "false lesion"], ["A", "B", "missed"])
    assert "10 lesions were matched, 9 of them with the right type; 5 were missed and 3 drawn lesions" in text


def test_difference_caption_states_noise_plainly():
    inside = captions.difference_caption("Balanced accuracy", "focal", "ce",
                                         {"difference": 0.031, "ci95": [-0.01, 0.072], "n": 1512})
    assert inside == (
        "Balanced accuracy: focal \u2212 ce = +3.1 points (95% CI \u22121.0 points to +7.2 points) on 1,512 paired "
        "test images. Within noise: the interval contains 0, so this test set cannot tell them apart."
    )
    outside = captions.difference_caption("Balanced accuracy", "focal", "ce", {"difference": -0.05, "ci95": [-0.08, -0.02]})
    assert outside.endswith("focal is worse than ce: the interval excludes 0.")
    assert captions.within_noise({"ci95": [-0.01, 0.07]}) is True
    assert captions.within_noise({"ci95": [0.01, 0.07]}) is False
    assert captions.within_noise({"ci95": [None, None]}) is None
    # a per-class interval that excludes 0 by chance among several classes: the Holm-adjusted p decides
    assert captions.within_noise({"ci95": [0.01, 0.07], "p_value": 0.02, "p_holm": 0.14}) is True
    assert captions.within_noise({"ci95": [0.01, 0.07], "p_value": 0.002, "p_holm": 0.014}) is False


def test_box_label_warning_only_for_weak_labels():
    assert "boxes" in captions.box_label_warning("box-derived")
    assert "circles" in captions.box_label_warning("circle-derived")
    assert captions.box_label_warning("expert") is None


def test_per_class_verdict_caption():
    text = captions.per_class_verdict_caption([("MEL", "better"), ("NV", "within noise"), ("DF", "within noise")])
    assert text.startswith("Per-class sensitivity: better for MEL; worse for none; within noise for 2 classes.")
    assert "Holm" in text
    assert "Holm" not in captions.per_class_verdict_caption([("MEL", "within noise")])


def test_a_ci_bound_that_is_zero_up_to_round_off_is_within_noise():
    assert captions.within_noise({"ci95": [1.08e-16, 0.13]}) is True
    assert captions.within_noise({"ci95": [0.01, 0.13]}) is False
    assert captions.within_noise({"ci95": [-0.2, -1e-17]}) is True


def test_learning_curve_caption_says_how_the_reported_epoch_was_chosen():
    chosen = captions.learning_curve_caption(12, "balanced accuracy", 7, False)
    assert "epoch 7" in chosen and "chosen by the validation score" in chosen
    last = captions.learning_curve_caption(12, "balanced accuracy", 12, False, select="last")
    assert "final one, of epoch 12" in last and "train.select: last" in last and "chosen by" not in last
