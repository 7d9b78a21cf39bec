import pandas as pd
import pytest

from pipeline.data.manifest import class_counts, read_manifest, validate_manifest, write_manifest
from pipeline.errors import DataError

CLASSES = ["MEL", "NV", "DF"]


def manifest(**overrides) -> pd.DataFrame:
    frame = pd.DataFrame({
        "image_id": ["a", "b", "c", "d"],
        "image_path": ["a.png", "b.png", "c.png", "d.png"],
        "label": ["MEL", "NV", "NV", "DF"],
        "group_id": ["L1", "L2", "L2", "L3"],
        "split": ["train", "val", "val", "test"],
    })
    for column, values in overrides.items():
        frame[column] = values
    frame.attrs["source"] = "m.csv"
    return frame


def test_valid_manifest_passes_and_counts_classes():
    frame = validate_manifest(manifest(), task="classification", classes=CLASSES, require_split=True)
    assert class_counts(frame, CLASSES) == [1, 2, 1]
    assert class_counts(frame, CLASSES, split="val") == [0, 2, 0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"label": ["MEL", "NV", "XX", "DF"]}, r"unknown label\(s\) \['XX'\] at rows 3"),
        ({"image_id": ["a", "b", "b", "d"]}, r"duplicate image_id \['b'\] at rows 2, 3"),
        ({"split": ["train", "val", "test", "test"]}, "group 'L2'.*appears in splits"),
        ({"split": ["train", "", "", "test"]}, "have no split"),
        ({"split": ["train", "val", "val", "holdout"]}, "row 4.*schema"),
        ({"image_path": ["a.png", "", "c.png", "d.png"]}, "row 2.*schema"),
    ],
)
def test_bad_manifests_name_the_row(overrides, message):
    with pytest.raises(DataError, match=message):
        validate_manifest(manifest(**overrides), task="classification", classes=CLASSES, require_split=True)


def test_missing_column_and_missing_file_are_reported(tmp_path):
    with pytest.raises(DataError, match="missing column"):
        validate_manifest(manifest().drop(columns="group_id"), task="classification", classes=CLASSES)
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match=r"row 2: image_path .*b.png does not exist"):
        validate_manifest(manifest(), task="classification", classes=CLASSES, root=tmp_path, check_files=True)


def test_round_trip_keeps_ids_as_text(tmp_path):
    frame = manifest(image_id=["001", "002", "003", "004"])
    path = write_manifest(frame, tmp_path / "m.csv")
    back = read_manifest(path)
    assert back["image_id"].tolist() == ["001", "002", "003", "004"]
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(DataError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
