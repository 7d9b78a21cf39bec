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
