import logging
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pipeline.data.adapters import get_adapter
from pipeline.data.manifest import validate_manifest
from pipeline.errors import ConfigError, DataError

CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
build = get_adapter("folder")


@pytest.mark.realdata
def test_real_sample70(real_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = real_data / "ham10000_sample70"
    with caplog.at_level(logging.WARNING):
        manifest = build(root, CLASSES, tmp_path)
    validate_manifest(manifest, task="classification", classes=CLASSES, root=root, check_files=True)
    assert "group_id = image_id" in caplog.text
    assert len(manifest) == 70
    assert manifest["label"].value_counts().to_dict() == {code: 10 for code in CLASSES}
    # Independent route: the dx of the same image in the sample's metadata.
    metadata = pd.read_csv(root / "HAM10000_metadata_sample.csv").set_index("image_id")
    assert (manifest.set_index("image_id")["label"] == metadata.loc[manifest["image_id"], "dx"].str.upper()).all()
    assert (manifest["group_id"] == manifest["image_id"]).all()


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), "white").save(path)


def test_folder_map_and_ignored_files(tmp_path: Path) -> None:
    _image(tmp_path / "Melanoma" / "a.jpg")
    _image(tmp_path / "nevus" / "b.png")
    (tmp_path / "nevus" / "notes.txt").write_text("not an image")
    (tmp_path / "README.md").write_text("top-level files are ignored")
    manifest = build(tmp_path, ["MEL", "NV"], tmp_path, folder_map={"melanoma": "MEL", "Nevus": "NV"})
    assert manifest[["image_id", "image_path", "label"]].values.tolist() == [
        ["a", "Melanoma/a.jpg", "MEL"], ["b", "nevus/b.png", "NV"],
    ]


def test_unknown_folder_is_named(tmp_path: Path) -> None:
    _image(tmp_path / "mel" / "a.jpg")
    _image(tmp_path / "scc" / "b.jpg")
    with pytest.raises(DataError, match=r"folder .*scc matches no class"):
        build(tmp_path, ["MEL", "NV"], tmp_path)


def test_folder_map_to_unknown_code(tmp_path: Path) -> None:
    _image(tmp_path / "mel" / "a.jpg")
    with pytest.raises(ConfigError, match="folder_map"):
        build(tmp_path, ["MEL"], tmp_path, folder_map={"mel": "MELANOMA"})


def test_duplicate_id_across_folders(tmp_path: Path) -> None:
    _image(tmp_path / "mel" / "a.jpg")
    _image(tmp_path / "nv" / "a.png")
    with pytest.raises(DataError, match=r"share the id 'a'"):
        build(tmp_path, ["MEL", "NV"], tmp_path)


def test_missing_image_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image_dir .*nope is not a folder"):
        build(tmp_path, ["MEL"], tmp_path, image_dir="nope")


def test_no_images_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "mel").mkdir()
    with pytest.raises(DataError, match="no images found"):
        build(tmp_path, ["MEL"], tmp_path)


def test_split_folders_fix_the_split_imagefolder_layout(tmp_path: Path) -> None:
    for split, name in [("train", "a"), ("train", "b"), ("Valid", "c"), ("test", "d")]:
        _image(tmp_path / split / ("MEL" if name in "ac" else "nv") / f"{name}.jpg")
    manifest = build(tmp_path, CLASSES, tmp_path / "masks").set_index("image_id")
    assert manifest["split"].to_dict() == {"a": "train", "b": "train", "c": "val", "d": "test"}
    assert manifest.loc["c", "image_path"] == "Valid/MEL/c.jpg"
    assert manifest["label"].to_dict() == {"a": "MEL", "b": "NV", "c": "MEL", "d": "NV"}
    assert manifest.loc["d", "image_path"] == "test/nv/d.jpg"


def test_split_fixed_by_folder_survives_the_splitter(tmp_path: Path) -> None:
    from pipeline.data.splits import split_manifest

    for index in range(12):
        _image(tmp_path / "train" / ("MEL" if index % 2 else "NV") / f"tr{index}.jpg")
    for index in range(4):
        _image(tmp_path / "test" / ("MEL" if index % 2 else "NV") / f"te{index}.jpg")
    manifest = build(tmp_path, ["MEL", "NV"], tmp_path / "masks")
    assert set(manifest.loc[manifest["image_id"].str.startswith("tr"), "split"]) == {""}  # no val/: left free
    split = split_manifest(manifest, task="classification", classes=["MEL", "NV"],
                           fractions={"train": 0.75, "val": 0.25, "test": 0.0}, seed=0)
    by_id = split.set_index("image_id")["split"]
    assert (by_id[[f"te{i}" for i in range(4)]] == "test").all()  # the folder's split is kept
    assert set(by_id[[f"tr{i}" for i in range(12)]]) == {"train", "val"}  # val is cut from train/ only


def test_a_class_folder_next_to_split_folders_is_not_a_split_layout(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "MEL" / "a.jpg")
    _image(tmp_path / "NV" / "b.jpg")
    with pytest.raises(DataError, match="train matches no class"):
        build(tmp_path, CLASSES, tmp_path / "masks")
