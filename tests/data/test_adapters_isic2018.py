import csv
import logging
from pathlib import Path

import pandas as pd
import pytest

from pipeline.data.adapters import get_adapter
from pipeline.data.manifest import validate_manifest
from pipeline.errors import ConfigError, DataError

CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
OFFICIAL_HEADER = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"
build = get_adapter("isic2018")


def _write(path: Path, text: str) -> str:
    path.write_text(text.strip() + "\n")
    return path.name


def _touch_images(folder: Path, ids: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    for image_id in ids:
        (folder / f"{image_id}.jpg").touch()


def _one_hot_by_csv_module(path: Path) -> dict[str, str]:
    """Independent reading: the name of the one column holding 1 in each row."""
    with path.open(newline="") as stream:
        return {row["image"]: next(k for k, v in row.items() if k != "image" and float(v) == 1.0) for row in csv.DictReader(stream)}


@pytest.mark.realdata
def test_real_ground_truth_all_three_files(real_data: Path, tmp_path: Path) -> None:
    labels_dir = real_data / "isic2018_task3_labels"
    files = {
        "ISIC2018_Task3_Training_GroundTruth.csv": None,
        "ISIC2018_Task3_Validation_GroundTruth.csv": "val",
        "ISIC2018_Task3_Test_GroundTruth.csv": "test",
    }
    expected = {name: _one_hot_by_csv_module(labels_dir / name) for name in files}
    all_ids = [i for labels in expected.values() for i in labels]
    _touch_images(tmp_path / "images", all_ids)

    manifest = build(
        labels_dir, CLASSES, tmp_path / "masks",
        ground_truth=[{"csv": name, "split": split} for name, split in files.items()],
        image_dir=str(tmp_path / "images"),
        metadata_csv="HAM10000_metadata_kaggle.csv",
    )
    validate_manifest(manifest, task="classification", classes=CLASSES, root=labels_dir, check_files=True)
    assert len(manifest) == len(all_ids)
    by_id = manifest.set_index("image_id")

    # The training file has reordered integer columns: its labels must still match the metadata dx.
    metadata = pd.read_csv(labels_dir / "HAM10000_metadata_kaggle.csv").set_index("image_id")
    train_ids = list(expected["ISIC2018_Task3_Training_GroundTruth.csv"])
    assert (by_id.loc[train_ids, "label"] == metadata.loc[train_ids, "dx"].str.upper()).all()
    assert (by_id.loc[train_ids, "group_id"] == metadata.loc[train_ids, "lesion_id"]).all()
    assert (by_id.loc[train_ids, "label_origin"] == metadata.loc[train_ids, "dx_type"]).all()
    assert (by_id.loc[train_ids, "site"] == metadata.loc[train_ids, "localization"]).all()

    for name, split in files.items():
        ids = list(expected[name])
        assert by_id.loc[ids, "label"].tolist() == [expected[name][i].upper() for i in ids]
        assert set(by_id.loc[ids, "split"]) == {split or ""}
    # Validation/test images are not in the HAM10000 metadata: they are their own group.
    held_out = [i for n in list(files)[1:] for i in expected[n]]
    assert (by_id.loc[held_out, "group_id"] == pd.Index(held_out)).all()


@pytest.mark.realdata
def test_real_reordered_training_file_matches_official_order(real_data: Path, tmp_path: Path) -> None:
    """Rewrite a slice of the reordered file in the official column order: same labels."""
    source = pd.read_csv(real_data / "isic2018_task3_labels" / "ISIC2018_Task3_Training_GroundTruth.csv").head(200)
    assert list(source.columns) != ["image", *CLASSES]  # the file really is reordered
    source[["image", *CLASSES]].astype({c: float for c in CLASSES}).to_csv(tmp_path / "official.csv", index=False)
    source.to_csv(tmp_path / "reordered.csv", index=False)
    _touch_images(tmp_path / "img", source["image"].tolist())
    kwargs = dict(image_dir="img", require_images=True)
    official = build(tmp_path, CLASSES, tmp_path / "m", ground_truth=[{"csv": "official.csv"}], **kwargs)
    reordered = build(tmp_path, CLASSES, tmp_path / "m", ground_truth=[{"csv": "reordered.csv"}], **kwargs)
    pd.testing.assert_frame_equal(official, reordered)
    assert official["label"].nunique() > 1


def _small_setup(tmp_path: Path, rows: str) -> None:
    _write(tmp_path / "gt.csv", f"{OFFICIAL_HEADER}\n{rows}")
    _touch_images(tmp_path / "img", ["ISIC_1", "ISIC_2"])


def test_labels_columns_read_by_name(tmp_path: Path) -> None:
    _write(tmp_path / "gt.csv", "image,VASC,DF,BKL,AKIEC,BCC,NV,MEL\nISIC_1,0,0,0,0,0,0,1\nISIC_2,1,0,0,0,0,0,0")
    _touch_images(tmp_path / "img", ["ISIC_1", "ISIC_2"])
    manifest = build(tmp_path, CLASSES, tmp_path / "m", ground_truth=[{"csv": "gt.csv", "split": "test"}], image_dir="img")
    assert manifest["label"].tolist() == ["MEL", "VASC"]
    assert manifest["image_path"].tolist() == ["img/ISIC_1.jpg", "img/ISIC_2.jpg"]
    assert manifest["split"].tolist() == ["test", "test"]


def test_without_metadata_group_is_image_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _small_setup(tmp_path, "ISIC_1,1.0,0.0,0.0,0.0,0.0,0.0,0.0\nISIC_2,0.0,1.0,0.0,0.0,0.0,0.0,0.0")
    with caplog.at_level(logging.WARNING):
        manifest = build(tmp_path, CLASSES, tmp_path / "m", ground_truth=[{"csv": "gt.csv", "split": None}], image_dir="img")
    assert manifest["group_id"].tolist() == ["ISIC_1", "ISIC_2"]
    assert manifest["label_origin"].tolist() == ["expert", "expert"]
    assert "2 of 2 image(s) have no lesion id" in caplog.text


def test_metadata_sets_lesion_groups(tmp_path: Path) -> None:
    _small_setup(tmp_path, "ISIC_1,1,0,0,0,0,0,0\nISIC_2,1,0,0,0,0,0,0")
    _write(tmp_path / "meta.csv", "lesion_id,image_id,dx,dx_type,age,sex,localization\nHAM_9,ISIC_1,mel,histo,,female,back\nHAM_9,ISIC_2,mel,consensus,55,male,face")
    manifest = build(tmp_path, CLASSES, tmp_path / "m", ground_truth=[{"csv": "gt.csv"}], image_dir="img", metadata_csv="meta.csv")
    assert manifest["group_id"].tolist() == ["HAM_9", "HAM_9"]
    assert manifest["label_origin"].tolist() == ["histo", "consensus"]
    assert pd.isna(manifest["age"][0]) and manifest["age"][1] == 55.0


def test_metadata_dx_disagreeing_is_a_data_error(tmp_path: Path) -> None:
    _small_setup(tmp_path, "ISIC_1,1,0,0,0,0,0,0")
    _write(tmp_path / "meta.csv", "lesion_id,image_id,dx\nHAM_9,ISIC_1,nv")
    with pytest.raises(DataError, match="ISIC_1.*says MEL.*dx='nv'"):
        build(tmp_path, CLASSES, tmp_path / "m", ground_truth=[{"csv": "gt.csv"}], image_dir="img", metadata_csv="meta.csv")


@pytest.mark.parametrize("row", ["ISIC_1,1,1,0,0,0,0,0", "ISIC_1,0,0,0,0,0,0,0", "ISIC_1,0.5,0.5,0,0,0,0,0", "ISIC_1,1,x,0,0,0,0,0"])
def test_not_one_hot_row_is_named(tmp_path: Path, row: str) -> None:
    _small_setup(tmp_path, f"ISIC_2,0,1,0,0,0,0,0\n{row}")
    with pytest.raises(DataError, match=r"gt.csv: line 3 \(image 'ISIC_1'\) is not one-hot"):
        build(tmp_path, CLASSES, tmp_path / "m", ground_truth=[{"csv": "gt.csv"}], image_dir="img")


def test_missing_class_column_is_a_data_error(tmp_path: Path) -> None:
    _write(tmp_path / "gt.csv", "image,MEL,NV,BCC,AKIEC,BKL,DF\nISIC_1,1,0,0,0,0,0")
    with pytest.raises(DataError, match=r"gt.csv: class column\(s\) missing \['VASC'\]"):
        build(tmp_path, CLASSES, tmp_path / "m", ground_truth=[{"csv": "gt.csv"}])


def test_extra_class_column_is_a_data_error(tmp_path: Path) -> None:
    _write(tmp_path / "gt.csv", f"{OFFICIAL_HEADER},UNK\nISIC_1,1,0,0,0,0,0,0,0")
    with pytest.raises(DataError, match=r"unknown \['UNK'\]"):
        build(tmp_path, CLASSES, tmp_path / "m", ground_truth=[{"csv": "gt.csv"}])


def test_duplicate_image_across_files_names_both(tmp_path: Path) -> None:
    _small_setup(tmp_path, "ISIC_1,1,0,0,0,0,0,0")
    _write(tmp_path / "gt2.csv", f"{OFFICIAL_HEADER}\nISIC_1,1,0,0,0,0,0,0")
    with pytest.raises(DataError, match=r"'ISIC_1' is in more than one ground-truth file.*gt.csv.*gt2.csv"):
        build(tmp_path, CLASSES, tmp_path / "m", ground_truth=[{"csv": "gt.csv"}, {"csv": "gt2.csv", "split": "test"}], image_dir="img")


def test_duplicate_image_within_file(tmp_path: Path) -> None:
    _small_setup(tmp_path, "ISIC_1,1,0,0,0,0,0,0\nISIC_1,1,0,0,0,0,0,0")
    with pytest.raises(DataError, match="'ISIC_1' appears more than once"):
        build(tmp_path, CLASSES, tmp_path / "m", ground_truth=[{"csv": "gt.csv"}], image_dir="img")


def test_missing_image_error_or_drop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _small_setup(tmp_path, "ISIC_1,1,0,0,0,0,0,0\nISIC_3,0,1,0,0,0,0,0")
    kwargs = dict(ground_truth=[{"csv": "gt.csv"}], image_dir="img")
    with pytest.raises(DataError, match=r"1 ground-truth image\(s\) have no file: .*ISIC_3.jpg"):
        build(tmp_path, CLASSES, tmp_path / "m", **kwargs)
    with caplog.at_level(logging.WARNING):
        manifest = build(tmp_path, CLASSES, tmp_path / "m", require_images=False, **kwargs)
    assert manifest["image_id"].tolist() == ["ISIC_1"]
    assert "dropped 1 ground-truth row(s) with no image file" in caplog.text


def test_missing_ground_truth_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.csv not found"):
        build(tmp_path, CLASSES, tmp_path / "m", ground_truth=[{"csv": "nope.csv"}])


@pytest.mark.parametrize("entry", [{"csv": "gt.csv", "split": "holdout"}, {"file": "gt.csv"}, "gt.csv"])
def test_bad_ground_truth_entries_are_config_errors(tmp_path: Path, entry) -> None:
    with pytest.raises(ConfigError, match="ground_truth entry 1"):
        build(tmp_path, CLASSES, tmp_path / "m", ground_truth=[entry])
