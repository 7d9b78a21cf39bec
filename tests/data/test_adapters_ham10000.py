import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data.adapters import get_adapter
from pipeline.data.io import read_rgb
from pipeline.data.manifest import validate_manifest
from pipeline.errors import ConfigError, DataError

CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"
build = get_adapter("ham10000")


@pytest.mark.realdata
def test_real_sample70(real_data: Path, tmp_path: Path) -> None:
    root = real_data / "ham10000_sample70"
    manifest = build(root, CLASSES, tmp_path, metadata_csv="HAM10000_metadata_sample.csv", image_dir=".")
    validate_manifest(manifest, task="classification", classes=CLASSES, root=root, check_files=True)
    assert len(manifest) == 70
    assert manifest["label"].value_counts().to_dict() == {code: 10 for code in CLASSES}
    # Independent route: the class folder each image sits in.
    folders = manifest["image_path"].map(lambda p: Path(p).parent.name.upper())
    assert (folders == manifest["label"]).all()
    metadata = pd.read_csv(root / "HAM10000_metadata_sample.csv").set_index("image_id")
    rows = manifest.set_index("image_id")
    assert (rows["group_id"] == metadata.loc[rows.index, "lesion_id"]).all()
    assert (rows["label_origin"] == metadata.loc[rows.index, "dx_type"]).all()
    assert (rows["sex"] == metadata.loc[rows.index, "sex"]).all()
    assert (rows["site"] == metadata.loc[rows.index, "localization"]).all()
    np.testing.assert_allclose(rows["age"], metadata.loc[rows.index, "age"].astype(float))
    for path in manifest["image_path"]:
        image = read_rgb(root / path)
        assert image.ndim == 3 and image.shape[2] == 3 and image.std() > 0


@pytest.mark.realdata
def test_real_kaggle_metadata_drops_rows_without_images(real_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = real_data / "ham10000_sample70"
    metadata = real_data / "isic2018_task3_labels" / "HAM10000_metadata_kaggle.csv"
    with pytest.raises(DataError, match=r"image\(s\) not found"):
        build(root, CLASSES, tmp_path, metadata_csv=str(metadata))
    with caplog.at_level(logging.WARNING):
        manifest = build(root, CLASSES, tmp_path, metadata_csv=str(metadata), require_images=False)
    assert len(manifest) == 70
    total = len(pd.read_csv(metadata))
    assert f"dropped {total - 70} of {total} metadata row(s) with no image file" in caplog.text
    full = pd.read_csv(metadata).set_index("image_id")
    assert (manifest.set_index("image_id")["label"] == full.loc[manifest["image_id"], "dx"].str.upper()).all()


def _setup(tmp_path: Path, rows: list[str], images: dict[str, str]) -> None:
    (tmp_path / "meta.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    for relative in images:
        path = tmp_path / "img" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 3), images[relative]).save(path)


def test_dx_maps_case_insensitively_and_images_found_recursively(tmp_path: Path) -> None:
    _setup(tmp_path, ["HAM_1,ISIC_1,MEL,histo,50,male,back", "HAM_1,ISIC_2,nv,follow_up,,female,face"],
           {"a/ISIC_1.jpg": "red", "b/c/ISIC_2.png": "blue"})
    manifest = build(tmp_path, CLASSES, tmp_path, metadata_csv="meta.csv", image_dir="img")
    assert manifest["label"].tolist() == ["MEL", "NV"]
    assert manifest["image_path"].tolist() == ["img/a/ISIC_1.jpg", "img/b/c/ISIC_2.png"]
    assert manifest["group_id"].tolist() == ["HAM_1", "HAM_1"]
    assert manifest["label_origin"].tolist() == ["histo", "follow_up"]


def test_dx_map(tmp_path: Path) -> None:
    _setup(tmp_path, ["HAM_1,ISIC_1,mel,histo,50,male,back"], {"ISIC_1.jpg": "red"})
    manifest = build(tmp_path, ["melanoma", "other"], tmp_path, metadata_csv="meta.csv", image_dir="img", dx_map={"mel": "melanoma"})
    assert manifest["label"].tolist() == ["melanoma"]
    with pytest.raises(ConfigError, match="dx_map"):
        build(tmp_path, ["melanoma"], tmp_path, metadata_csv="meta.csv", image_dir="img", dx_map={"mel": "MEL"})


def test_unknown_dx_names_row_and_value(tmp_path: Path) -> None:
    _setup(tmp_path, ["HAM_1,ISIC_1,mel,histo,50,male,back", "HAM_2,ISIC_2,scc,histo,50,male,back"],
           {"ISIC_1.jpg": "red", "ISIC_2.jpg": "red"})
    with pytest.raises(DataError, match=r"meta.csv: line 3 \(image 'ISIC_2'\) has unknown dx 'scc'"):
        build(tmp_path, CLASSES, tmp_path, metadata_csv="meta.csv", image_dir="img")


def test_missing_image_is_named(tmp_path: Path) -> None:
    _setup(tmp_path, ["HAM_1,ISIC_1,mel,histo,50,male,back", "HAM_2,ISIC_404,nv,histo,50,male,back"], {"ISIC_1.jpg": "red"})
    with pytest.raises(DataError, match=r"1 image\(s\) not found.*ISIC_404"):
        build(tmp_path, CLASSES, tmp_path, metadata_csv="meta.csv", image_dir="img")


def test_duplicate_image_stem_names_both_files(tmp_path: Path) -> None:
    _setup(tmp_path, ["HAM_1,ISIC_1,mel,histo,50,male,back"], {"a/ISIC_1.jpg": "red", "b/ISIC_1.jpg": "red"})
    with pytest.raises(DataError, match=r"share the id 'ISIC_1'.*a/ISIC_1.jpg.*b/ISIC_1.jpg"):
        build(tmp_path, CLASSES, tmp_path, metadata_csv="meta.csv", image_dir="img")


def test_duplicate_metadata_row(tmp_path: Path) -> None:
    _setup(tmp_path, ["HAM_1,ISIC_1,mel,histo,50,male,back", "HAM_1,ISIC_1,mel,histo,50,male,back"], {"ISIC_1.jpg": "red"})
    with pytest.raises(DataError, match="'ISIC_1' is repeated at line 3"):
        build(tmp_path, CLASSES, tmp_path, metadata_csv="meta.csv", image_dir="img")


def test_missing_column(tmp_path: Path) -> None:
    (tmp_path / "meta.csv").write_text("lesion_id,image_id\nHAM_1,ISIC_1\n")
    with pytest.raises(DataError, match=r"meta.csv lacks column\(s\) \['dx'\]"):
        build(tmp_path, CLASSES, tmp_path, metadata_csv="meta.csv")
