"""The csv adapter: a user's own CSV of image paths and labels, columns mapped in params."""

from pathlib import Path

import pytest
from PIL import Image

from pipeline.data.adapters import get_adapter
from pipeline.data.manifest import validate_manifest
from pipeline.errors import ConfigError, DataError

CLASSES = ["MEL", "NV", "DF"]
build = get_adapter("csv")


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), "white").save(path)


def _write(root: Path, text: str, images=("a.jpg", "b.jpg", "c.png", "d.jpg"), name="labels.csv") -> None:
    for image in images:
        _image(root / "imgs" / image)
    (root / name).write_text(text, encoding="utf-8")


PARAMS = {"csv": "labels.csv", "image_column": "file", "label_column": "diagnosis", "group_column": "patient",
          "image_dir": "imgs"}


def test_columns_are_mapped_and_the_manifest_validates(tmp_path: Path) -> None:
    _write(tmp_path, "file,diagnosis,patient,Sex,Age\n"
                     "a.jpg,melanoma,p1,female,45\nb.jpg,NV,p1,female,45\nc.png,nv,p2,male,\nd.jpg,df,p3,male,60\n")
    manifest = build(tmp_path, CLASSES, tmp_path / "masks", **PARAMS, label_map={"melanoma": "MEL"},
                     metadata={"sex": "Sex", "age": "Age"})
    validate_manifest(manifest, task="classification", classes=CLASSES, root=tmp_path, check_files=True)
    rows = manifest.set_index("image_id")
    assert rows["label"].to_dict() == {"a": "MEL", "b": "NV", "c": "NV", "d": "DF"}
    assert rows["group_id"].to_dict() == {"a": "p1", "b": "p1", "c": "p2", "d": "p3"}
    assert rows.loc["c", "image_path"] == "imgs/c.png"
    assert rows.loc["a", "sex"] == "female" and rows.loc["d", "age"] == 60.0
    assert rows.loc["c", "age"] != rows.loc["c", "age"]  # empty age: NaN, not 0
    assert (rows["split"] == "").all()


def test_a_byte_order_mark_does_not_hide_the_first_column(tmp_path: Path) -> None:
    _write(tmp_path, "\ufefffile,diagnosis,patient\na.jpg,MEL,p1\n", images=("a.jpg",))
    assert build(tmp_path, CLASSES, tmp_path / "masks", **PARAMS)["label"].tolist() == ["MEL"]


def test_split_column_fixes_splits_and_rejects_other_values(tmp_path: Path) -> None:
    _write(tmp_path, "file,diagnosis,patient,set\na.jpg,MEL,p1,train\nb.jpg,NV,p2,\nc.png,NV,p3,Test\n",
           images=("a.jpg", "b.jpg", "c.png"))
    manifest = build(tmp_path, CLASSES, tmp_path / "masks", **PARAMS, split_column="set")
    assert manifest.set_index("image_id")["split"].to_dict() == {"a": "train", "b": "", "c": "test"}
    _write(tmp_path, "file,diagnosis,patient,set\na.jpg,MEL,p1,holdout\n", images=("a.jpg",))
    with pytest.raises(DataError, match=r"line 2 \('holdout'\)"):
        build(tmp_path, CLASSES, tmp_path / "masks", **PARAMS, split_column="set")


def test_a_patient_in_two_fixed_splits_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "file,diagnosis,patient,set\na.jpg,MEL,p1,train\nb.jpg,NV,p1,test\n", images=("a.jpg", "b.jpg"))
    with pytest.raises(DataError, match="p1.*two fixed splits"):
        build(tmp_path, CLASSES, tmp_path / "masks", **PARAMS, split_column="set")


@pytest.mark.parametrize("body, message", [
    ("a.jpg,SCC,p1\n", r"match no class.*line 2 \('SCC'\)"),
    ("a.jpg,,p1\n", r"match no class.*line 2 \(''\)"),
    ("missing.jpg,MEL,p1\n", r"image file\(s\) not found: line 2"),
    ("a.jpg,MEL,p1\nsub/a.jpg,NV,p2\n", r"duplicated image id\(s\).*line 2 \('a'\), line 3 \('a'\)"),
    ("a.jpg,MEL,\n", r"empty 'patient'"),
    (",MEL,p1\n", r"empty 'file'"),
])
def test_bad_rows_name_the_line(tmp_path: Path, body: str, message: str) -> None:
    _image(tmp_path / "imgs" / "sub" / "a.jpg")
    _write(tmp_path, "file,diagnosis,patient\n" + body, images=("a.jpg",))
    with pytest.raises(DataError, match=message):
        build(tmp_path, CLASSES, tmp_path / "masks", **PARAMS)


def test_missing_column_and_unknown_params_are_clear(tmp_path: Path) -> None:
    _write(tmp_path, "file,dx\na.jpg,MEL\n", images=("a.jpg",))
    with pytest.raises(DataError, match=r"lacks column\(s\) \['diagnosis', 'patient'\]"):
        build(tmp_path, CLASSES, tmp_path / "masks", **PARAMS)
    with pytest.raises(ConfigError, match="unknown parameter"):
        build(tmp_path, CLASSES, tmp_path / "masks", csv="labels.csv", image_col="file")
    with pytest.raises(ConfigError, match="metadata names"):
        build(tmp_path, CLASSES, tmp_path / "masks", **PARAMS, metadata={"ethnicity": "x"})
    with pytest.raises(ConfigError, match="label_map"):
        build(tmp_path, CLASSES, tmp_path / "masks", **PARAMS, label_map={"melanoma": "SCC"})


def test_without_group_column_every_image_is_its_own_group(tmp_path: Path, caplog) -> None:
    _write(tmp_path, "image,label\nimgs/a.jpg,MEL\nimgs/b.jpg,NV\n", images=("a.jpg", "b.jpg"))
    manifest = build(tmp_path, CLASSES, tmp_path / "masks", csv="labels.csv")
    assert (manifest["group_id"] == manifest["image_id"]).all()
    assert "group_id = image_id" in caplog.text
