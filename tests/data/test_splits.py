import numpy as np
import pandas as pd
import pytest

from pipeline.data.splits import split_manifest
from pipeline.errors import DataError

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
CLASSES = ["NV", "MEL", "DF"]


def frame_with_groups(counts: dict[str, int], images_per_group: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for label, n_groups in counts.items():
        for g in range(n_groups):
            for k in range(int(rng.integers(1, images_per_group + 1))):
                rows.append({"image_id": f"{label}{g}_{k}", "image_path": "x", "label": label,
                             "group_id": f"{label}{g}", "split": ""})
    return pd.DataFrame(rows)


def test_no_group_in_two_splits_and_every_class_everywhere():
    frame = frame_with_groups({"NV": 200, "MEL": 40, "DF": 8}, images_per_group=4)
    out = split_manifest(frame, task="classification", classes=CLASSES, fractions=FRACTIONS, seed=0)
    assert (out.groupby("group_id")["split"].nunique() == 1).all()
    assert set(out["split"]) == {"train", "val", "test"}
    for label in CLASSES:
        assert set(out.loc[out["label"] == label, "split"]) == {"train", "val", "test"}


def test_stratified_within_one_image_per_class_when_groups_are_single_images():
    counts = {"NV": 671, "MEL": 111, "DF": 12}
    frame = frame_with_groups(counts, images_per_group=1)
    out = split_manifest(frame, task="classification", classes=CLASSES, fractions=FRACTIONS, seed=1)
    table = pd.crosstab(out["label"], out["split"])
    for label, n in counts.items():
        for split, fraction in FRACTIONS.items():
            assert abs(table.loc[label, split] - fraction * n) <= 1, (label, split, table.loc[label, split])


def test_seeded_and_stable():
    frame = frame_with_groups({"NV": 60, "MEL": 20, "DF": 6}, images_per_group=3)
    a = split_manifest(frame, task="classification", classes=CLASSES, fractions=FRACTIONS, seed=7)
    b = split_manifest(frame, task="classification", classes=CLASSES, fractions=FRACTIONS, seed=7)
    c = split_manifest(frame, task="classification", classes=CLASSES, fractions=FRACTIONS, seed=8)
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != c["split"].tolist()


def test_a_class_too_rare_for_three_splits_fails_naming_it():
    frame = frame_with_groups({"NV": 50, "MEL": 20, "DF": 2}, images_per_group=1)
    with pytest.raises(DataError, match=r"no example of class\(es\) DF \(2 in the data set\)"):
        split_manifest(frame, task="classification", classes=CLASSES, fractions=FRACTIONS, seed=0)


def test_fixed_test_rows_stay_and_the_rest_fill_train_and_val():
    frame = frame_with_groups({"NV": 40, "MEL": 10, "DF": 6}, images_per_group=1)
    fixed = frame.index % 5 == 0
    frame.loc[fixed, "split"] = "test"
    out = split_manifest(frame, task="classification", classes=CLASSES, fractions=FRACTIONS, seed=0)
    assert (out.loc[fixed, "split"] == "test").all()
    assert set(out.loc[~fixed, "split"]) == {"train", "val"}


def test_segmentation_split_stratifies_on_lesion_counts():
    rng = np.random.default_rng(0)
    n = 60
    counts = pd.DataFrame({"papule": rng.integers(0, 5, n), "nodule": (np.arange(n) % 10 == 0).astype(int)})
    frame = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "image_path": "x", "mask_path": "m",
                          "group_id": [f"p{i // 2}" for i in range(n)], "split": ""})
    out = split_manifest(frame, task="segmentation", classes=["papule", "nodule"], fractions=FRACTIONS, seed=0,
                         lesion_counts=counts)
    assert set(out.loc[counts["nodule"] > 0, "split"]) == {"train", "val", "test"}
    assert (out.groupby("group_id")["split"].nunique() == 1).all()


def _graded_frame(n: int = 80):
    rng = np.random.default_rng(1)
    grade = np.repeat([0, 1, 2, 3], n // 4)
    frame = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "image_path": "x", "mask_path": "m",
                          "group_id": [f"p{i}" for i in range(n)], "split": "", "grade": grade.astype(str),
                          "n_lesion": [int(rng.integers(0, 6) if g == 0 else rng.integers(6 + 15 * (g - 1), 21 + 30 * (g - 1)))
                                       for g in grade]})
    return frame


def test_lesion_grades_strata_count_lesions_in_the_column_of_the_photo_grade():
    from pipeline.tasks.segmentation import SegmentationTask

    frame = _graded_frame()
    dataset = {"classes": {"lesion": "Lesion"}, "mask_root": "unused", "split": {"stratify": "lesion_grades"}}
    strata = SegmentationTask.split_strata(frame, dataset)
    assert list(strata.columns) == ["grade 0", "grade 1", "grade 2", "grade 3"]
    for g in range(4):
        rows = frame["grade"] == str(g)
        assert (strata.loc[rows, f"grade {g}"] == frame.loc[rows, "n_lesion"]).all()
        assert (strata.loc[~rows, f"grade {g}"] == 0).all()
    out = split_manifest(frame, task="segmentation", classes=["lesion"], fractions=FRACTIONS, seed=0,
                         lesion_counts=strata)
    # every grade lands in every split (one lesion count alone would not guarantee it)
    assert (pd.crosstab(out["grade"], out["split"]) > 0).all().all()
    # the default stays lesions per type
    per_type = SegmentationTask.split_strata(frame, dict(dataset, split={}))
    assert list(per_type.columns) == ["lesion"]


def test_lesion_grades_strata_need_a_grade_on_every_row():
    from pipeline.errors import ConfigError
    from pipeline.tasks.segmentation import SegmentationTask

    frame = _graded_frame()
    frame.loc[5, "grade"] = ""
    dataset = {"classes": {"lesion": "Lesion"}, "mask_root": "unused", "split": {"stratify": "lesion_grades"}}
    with pytest.raises(ConfigError, match=r"row 7 \(i5\)"):
        SegmentationTask.split_strata(frame, dataset)
