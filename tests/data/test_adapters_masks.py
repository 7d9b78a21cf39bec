import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data.adapters import get_adapter
from pipeline.data.io import read_label_map
from pipeline.data.manifest import validate_manifest
from pipeline.errors import ConfigError, DataError

build = get_adapter("masks")


@pytest.mark.realdata
def test_real_ph2_subset(real_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = real_data / "ph2_subset"
    with caplog.at_level(logging.INFO):
        manifest = build(root, ["lesion"], tmp_path, image_dir="images", mask_dir="masks", mask_suffix="_lesion")
    validate_manifest(manifest, task="segmentation", classes=["lesion"], root=root, mask_root=tmp_path, check_files=True)
    # Independent figures: the subset index gives each image's size and lesion fraction.
    index = pd.read_csv(root / "subset_index.csv").set_index("image_name")
    assert sorted(manifest["image_id"]) == sorted(index.index)
    masks_total = len(list((root / "masks").glob("*_lesion.png")))
    assert f"{masks_total - len(index)} mask(s)" in caplog.text
    for row in manifest.to_dict("records"):
        mask = read_label_map(tmp_path / row["mask_path"])
        info = index.loc[row["image_id"]]
        assert mask.shape == (info["height"], info["width"])
        assert set(np.unique(mask)) == {0, 1}
        assert mask.mean() == pytest.approx(info["lesion_fraction"], abs=1e-4)
        source = np.asarray(Image.open(root / "masks" / f"{row['image_id']}_lesion.png"))
        np.testing.assert_array_equal(mask, (source == 255).astype(np.uint8))


@pytest.mark.realdata
def test_real_ham10000_masks5_with_lesion_groups(real_data: Path, tmp_path: Path) -> None:
    root = real_data / "ham10000_masks5"
    metadata = real_data / "isic2018_task3_labels" / "HAM10000_metadata_kaggle.csv"
    manifest = build(root, ["lesion"], tmp_path, image_dir="images", mask_dir="masks",
                     groups_csv=str(metadata), group_column="lesion_id")
    assert len(manifest) == 5
    lesions = pd.read_csv(metadata).set_index("image_id")["lesion_id"]
    assert (manifest["group_id"] == lesions.loc[manifest["image_id"]].to_numpy()).all()
    for row in manifest.to_dict("records"):
        source = np.asarray(Image.open(root / "masks" / f"{row['image_id']}.png"))
        np.testing.assert_array_equal(read_label_map(tmp_path / row["mask_path"]), (source > 0).astype(np.uint8))


def _pair(root: Path, stem: str, mask: np.ndarray, image_size: tuple[int, int] | None = None, suffix: str = "_seg") -> None:
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "msk").mkdir(parents=True, exist_ok=True)
    height, width = image_size or mask.shape
    Image.new("RGB", (width, height), "white").save(root / "img" / f"{stem}.jpg")
    Image.fromarray(mask.astype(np.uint8)).save(root / "msk" / f"{stem}{suffix}.png")


def _build(tmp_path: Path, classes=("lesion",), **kwargs):
    params = {"image_dir": "img", "mask_dir": "msk", "mask_suffix": "_seg", **kwargs}
    return build(tmp_path / "root", list(classes), tmp_path / "out", **params)


def test_binary_0_1_and_0_255_become_label_1(tmp_path: Path) -> None:
    _pair(tmp_path / "root", "a", np.array([[0, 255], [255, 0]]))
    _pair(tmp_path / "root", "b", np.array([[1, 0], [0, 0]]))
    manifest = _build(tmp_path)
    assert manifest["mask_path"].tolist() == ["a.png", "b.png"]
    np.testing.assert_array_equal(read_label_map(tmp_path / "out" / "a.png"), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(read_label_map(tmp_path / "out" / "b.png"), [[1, 0], [0, 0]])
    assert manifest["group_id"].tolist() == ["a", "b"]


def test_label_map_mode_keeps_values(tmp_path: Path) -> None:
    _pair(tmp_path / "root", "a", np.array([[0, 1], [2, 0]]))
    _build(tmp_path, classes=("x", "y"), binary=False)
    np.testing.assert_array_equal(read_label_map(tmp_path / "out" / "a.png"), [[0, 1], [2, 0]])


def test_mask_size_mismatch_names_mask(tmp_path: Path) -> None:
    _pair(tmp_path / "root", "a", np.zeros((4, 6)), image_size=(4, 5))
    with pytest.raises(DataError, match=r"a_seg.png is 6x4 \(WxH\) but its image is 5x4"):
        _build(tmp_path)


def test_label_value_out_of_range_names_mask(tmp_path: Path) -> None:
    _pair(tmp_path / "root", "a", np.array([[0, 1], [3, 0]]))
    with pytest.raises(DataError, match=r"a_seg.png has label value\(s\) \[3\] outside 0..2"):
        _build(tmp_path, classes=("x", "y"), binary=False)


def test_non_binary_mask_in_binary_mode(tmp_path: Path) -> None:
    _pair(tmp_path / "root", "a", np.array([[0, 128], [255, 0]]))
    with pytest.raises(DataError, match=r"a_seg.png is not binary: values \[0, 128, 255\]"):
        _build(tmp_path)


def test_missing_mask_and_undecodable_image(tmp_path: Path) -> None:
    _pair(tmp_path / "root", "a", np.zeros((2, 2)))
    (tmp_path / "root" / "msk" / "a_seg.png").unlink()
    with pytest.raises(DataError, match=r"img/a.jpg has no mask: expected .*msk/a_seg.png"):
        _build(tmp_path)
    _pair(tmp_path / "root", "a", np.zeros((2, 2)))
    (tmp_path / "root" / "img" / "a.jpg").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"cannot decode image .*a.jpg"):
        _build(tmp_path)


def test_groups_csv(tmp_path: Path) -> None:
    _pair(tmp_path / "root", "a", np.zeros((2, 2)))
    _pair(tmp_path / "root", "b", np.zeros((2, 2)))
    (tmp_path / "root" / "groups.csv").write_text("image_id,patient\na,P1\nb,P1\n")
    manifest = _build(tmp_path, groups_csv="groups.csv", group_column="patient")
    assert manifest["group_id"].tolist() == ["P1", "P1"]
    (tmp_path / "root" / "groups.csv").write_text("image_id,patient\na,P1\n")
    with pytest.raises(DataError, match=r"no group for 1 image\(s\): b"):
        _build(tmp_path, groups_csv="groups.csv", group_column="patient")


def test_masks_in_image_folder_are_not_images(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _pair(root, "a", np.zeros((2, 2)))
    (root / "msk" / "a_seg.png").rename(root / "img" / "a_seg.png")
    manifest = build(root, ["lesion"], tmp_path / "out", image_dir="img", mask_dir="img", mask_suffix="_seg")
    assert manifest["image_id"].tolist() == ["a"]


def test_config_errors(tmp_path: Path) -> None:
    _pair(tmp_path / "root", "a", np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="binary masks hold one lesion type"):
        _build(tmp_path, classes=("x", "y"))
    with pytest.raises(ConfigError, match="inside the data root"):
        build(tmp_path / "root", ["lesion"], tmp_path / "root" / "out", image_dir="img", mask_dir="msk", mask_suffix="_seg")
    before = sorted(p.name for p in (tmp_path / "root").rglob("*"))
    _build(tmp_path)
    assert sorted(p.name for p in (tmp_path / "root").rglob("*")) == before
