import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.adapters import get_adapter
from pipeline.data.adapters.box_crops import GEOMETRY_FILE, crop_window
from pipeline.data.io import read_rgb
from pipeline.data.manifest import validate_manifest
from pipeline.errors import ConfigError, DataError

CLASSES = ["comedone", "papule", "pustule", "nodule_cyst"]
ACNE04_MAP = {"whitehead and blackhead": "comedone", "papules": "papule", "pustules": "pustule",
              "nodules and cysts": "nodule_cyst"}
build = get_adapter("box_crops")
RED, BLUE, WHITE = (220, 30, 30), (30, 30, 220), (255, 255, 255)


def _voc(folder: Path, stem: str, objects, size=(96, 64), squares=()) -> Path:
    """A white photo with filled squares ((x0, y0, x1, y1), colour) and its VOC file."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0], 3), 255, dtype=np.uint8)
    for (x0, y0, x1, y1), colour in squares:
        pixels[y0:y1, x0:x1] = colour
    Image.fromarray(pixels).save(folder / f"{stem}.jpg", quality=100, subsampling=0)
    body = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><xmax>{x1}</xmax><ymin>{y0}</ymin><ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1 in objects
    )
    xml = folder / f"{stem}.xml"
    xml.write_text(f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{body}</annotation>")
    return xml


def _build(tmp_path: Path, **params):
    params = {"voc_root": str(tmp_path / "voc"), "subsets": {"valid": None}, "class_map": {"pap": "papule", "nod": "nodule_cyst"},
              **params}
    return build(tmp_path / "crops", CLASSES, tmp_path / "crops", **params)


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------- geometry
def test_window_is_the_box_plus_margin_centred_on_it():
    assert crop_window((40, 20, 60, 30), 0.25, 96, 64) == (35.0, 10.0, 65.0, 40.0)  # side 20 * 1.5
    assert crop_window((40, 20, 60, 30), 0.0, 96, 64) == (40.0, 15.0, 60.0, 35.0)  # square of the longer side


def test_window_is_shifted_inside_the_photo_and_cut_to_its_shorter_side():
    assert crop_window((0, 0, 10, 10), 0.5, 96, 64) == (0.0, 0.0, 20.0, 20.0)
    assert crop_window((86, 54, 96, 64), 0.5, 96, 64) == (76.0, 44.0, 96.0, 64.0)
    assert crop_window((10, 10, 90, 50), 0.5, 96, 64) == (18.0, 0.0, 82.0, 64.0)  # 120 px wanted, 64 fit


# ---------------------------------------------------------------- manifest and crops
def test_rows_labels_groups_and_crop_contents(tmp_path: Path):
    voc = tmp_path / "voc"
    # Two Roboflow copies of ACNE04 photo levle1_7, and another photo in the fixed test split.
    _voc(voc / "valid", "levle1_7_jpg.rf.aa11", [("pap", 20, 20, 40, 40), ("nod", 60, 10, 76, 26)],
         squares=[((20, 20, 40, 40), RED), ((60, 10, 76, 26), BLUE)])
    _voc(voc / "valid", "levle1_7_jpg.rf.bb22", [("nod", 10, 30, 20, 40)], squares=[((10, 30, 20, 40), BLUE)])
    _voc(voc / "test", "levle3_2_jpg.rf.cc33", [("pap", 40, 20, 56, 36)], squares=[((40, 20, 56, 36), RED)])
    before = _listing(voc)
    manifest = _build(tmp_path, subsets={"valid": None, "test": "test"}, margin=0.5, size=16)
    assert _listing(voc) == before  # nothing written next to the user's data
    validate_manifest(manifest, task="classification", classes=CLASSES, root=tmp_path / "crops", check_files=True)

    assert manifest["image_id"].tolist() == ["levle1_7_jpg.rf.aa11_box001", "levle1_7_jpg.rf.aa11_box002",
                                             "levle1_7_jpg.rf.bb22_box001", "levle3_2_jpg.rf.cc33_box001"]
    assert manifest["label"].tolist() == ["papule", "nodule_cyst", "nodule_cyst", "papule"]
    assert manifest["group_id"].tolist() == ["levle1_7"] * 3 + ["levle3_2"]  # Roboflow copies share a group
    assert manifest["split"].tolist() == ["", "", "", "test"]
    assert manifest["grade"].tolist() == [1, 1, 1, 3]
    assert set(manifest["label_origin"]) == {"expert"}
    assert manifest[["box_width", "box_height"]].values.tolist() == [[20, 20], [16, 16], [10, 10], [16, 16]]
    assert manifest["photo"].tolist()[0] == "levle1_7_jpg.rf.aa11"

    for row, colour in zip(manifest.itertuples(), [RED, BLUE, BLUE, RED]):
        crop = read_rgb(tmp_path / "crops" / row.image_path).astype(int)
        assert crop.shape == (16, 16, 3)
        # margin 0.5: the box fills the middle half of the crop, white skin around it
        assert np.abs(crop[6:10, 6:10] - colour).max() < 40, row.image_id
        assert np.abs(crop[0, 0] - WHITE).max() < 40 and np.abs(crop[-1, -1] - WHITE).max() < 40
    assert json.loads((tmp_path / "crops" / GEOMETRY_FILE).read_text())["margin"] == 0.5



def test_preparing_twice_gives_the_same_bytes(tmp_path: Path):
    _voc(tmp_path / "voc" / "valid", "img", [("pap", 11.5, 7.2, 30.9, 22.4), ("nod", 50, 30, 90, 60)],
         squares=[((12, 7, 31, 22), RED)])
    first = _build(tmp_path)
    data = {p: (tmp_path / "crops" / p).read_bytes() for p in first["image_path"]}
    second = _build(tmp_path)
    assert first.equals(second)
    assert {p: (tmp_path / "crops" / p).read_bytes() for p in second["image_path"]} == data
    assert not [p for p in (tmp_path / "crops").iterdir() if p.name.endswith(".tmp")]  # atomic writes left no debris


def test_another_geometry_in_the_same_root_is_refused(tmp_path: Path):
    _voc(tmp_path / "voc" / "valid", "img", [("pap", 10, 10, 20, 20)])
    _build(tmp_path, size=24)
    with pytest.raises(ConfigError, match=r"holds crops cut with .*'size': 24.*delete"):
        _build(tmp_path, size=32)
    _build(tmp_path, size=24)  # the same geometry is fine


def test_root_inside_the_voc_export_is_refused(tmp_path: Path):
    _voc(tmp_path / "voc" / "valid", "img", [("pap", 10, 10, 20, 20)])
    for root in (tmp_path / "voc", tmp_path / "voc" / "crops"):
        with pytest.raises(ConfigError, match="never written next to the user's data"):
            build(root, CLASSES, root, voc_root=str(tmp_path / "voc"), subsets={"valid": None}, class_map={"pap": "papule"})
    assert not (tmp_path / "voc" / "crops").exists()


@pytest.mark.parametrize("params, message", [
    ({"margin": -0.1}, "margin must be"),
    ({"margin": float("nan")}, "margin must be"),
    ({"size": 4}, "size must lie in 8..1024"),
    ({"size": 40.0}, "parameter 'size'"),
    ({"class_map": {"pap": "acne"}}, "class_map"),
    ({"subsets": {"valid": "holdout"}}, "split 'holdout'"),
    ({"colour": True}, "unknown parameter"),
])
def test_config_errors(tmp_path: Path, params, message):
    _voc(tmp_path / "voc" / "valid", "img", [("pap", 10, 10, 20, 20)])
    with pytest.raises(ConfigError, match=message):
        _build(tmp_path, **params)


def test_data_errors_name_the_file(tmp_path: Path):
    _voc(tmp_path / "voc" / "valid", "img", [("pap", 1, 1, 5, 5), ("scar", 1, 1, 5, 5)])
    with pytest.raises(DataError, match=r"img.xml: object 2 has name 'scar'"):
        _build(tmp_path)
    _voc(tmp_path / "voc" / "valid", "img", [("pap", 10, 10, 120, 20)])
    with pytest.raises(DataError, match=r"img.xml: object 1 .*outside the 96x64 image"):
        _build(tmp_path)
    with pytest.raises(DataError, match="voc_root .* is not a folder"):
        _build(tmp_path, voc_root=str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_acne04_test_folder(real_data: Path, tmp_path: Path):
    voc = real_data / "acne04_voc"
    manifest = build(tmp_path / "crops", CLASSES, tmp_path / "crops", voc_root=str(voc), subsets={"test": "test"},
                     class_map=ACNE04_MAP)
    xmls = sorted(voc.glob("test/*.xml"))
    names = [name for xml in xmls for name in re.findall(r"<name>([^<]*)</name>", xml.read_text())]
    assert len(manifest) == len(names)  # one crop per box
    assert Counter(manifest["label"]) == Counter(ACNE04_MAP[n] for n in names)
    assert (manifest["split"] == "test").all()
    assert manifest["group_id"].nunique() == len(xmls)  # resize-only folder: one photo per file
    assert (manifest["group_id"] == manifest["photo"].str.split("_jpg.rf.").str[0]).all()
    for path in manifest["image_path"].sample(20, random_state=0):
        assert read_rgb(tmp_path / "crops" / path).shape == (40, 40, 3)
