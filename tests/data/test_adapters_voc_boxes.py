import math
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.adapters import get_adapter
from pipeline.data.io import read_label_map
from pipeline.data.manifest import validate_manifest
from pipeline.errors import ConfigError, DataError

TYPES = ["nodule", "pustule", "papule", "comedone"]
CLASS_MAP = {"nodules and cysts": "nodule", "pustules": "pustule", "papules": "papule", "whitehead and blackhead": "comedone"}
SUBSETS = {"valid": None, "test": "test"}
build = get_adapter("voc_boxes")

_OBJECT = re.compile(
    r"<name>(?P<name>[^<]*)</name>.*?<xmin>(?P<xmin>[^<]*)</xmin>\s*<xmax>(?P<xmax>[^<]*)</xmax>\s*"
    r"<ymin>(?P<ymin>[^<]*)</ymin>\s*<ymax>(?P<ymax>[^<]*)</ymax>",
    re.DOTALL,
)


def _boxes_by_regex(xml: Path) -> list[tuple[int, float, float, float, float]]:
    """Independent of the adapter's XML reading: (label value, xmin, ymin, xmax, ymax)."""
    return [
        (TYPES.index(CLASS_MAP[m["name"]]) + 1, float(m["xmin"]), float(m["ymin"]), float(m["xmax"]), float(m["ymax"]))
        for m in _OBJECT.finditer(xml.read_text())
    ]


def _copy_pairs(source: Path, target: Path, count: int) -> None:
    target.mkdir(parents=True)
    for xml in sorted(source.glob("*.xml"))[:count]:
        shutil.copy(xml, target)
        shutil.copy(xml.with_suffix(".jpg"), target)


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.realdata
def test_real_masks_match_boxes(real_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "acne04"
    _copy_pairs(real_data / "acne04_voc" / "valid", root / "valid", 3)
    _copy_pairs(real_data / "acne04_voc" / "test", root / "test", 2)
    before = _listing(root)
    manifest = build(root, TYPES, tmp_path / "masks", subsets=SUBSETS, class_map=CLASS_MAP)
    validate_manifest(manifest, task="segmentation", classes=TYPES, root=root, mask_root=tmp_path / "masks", check_files=True)
    assert _listing(root) == before  # nothing written next to the user's data
    assert len(manifest) == 5
    assert manifest["split"].tolist() == [""] * 3 + ["test"] * 2  # subsets in config order
    assert set(manifest["label_origin"]) == {"box-derived"}

    checked_areas = 0
    for row in manifest.to_dict("records"):
        assert row["group_id"] == row["image_id"].split("_jpg.rf.")[0]
        boxes = _boxes_by_regex(root / Path(row["image_path"]).with_suffix(".xml"))
        counts = Counter(value for value, *_ in boxes)
        assert [row[f"n_{t}"] for t in TYPES] == [counts[i + 1] for i in range(len(TYPES))]
        mask = read_label_map(tmp_path / "masks" / row["mask_path"])
        assert mask.shape == (640, 640)

        inside_any = np.zeros_like(mask, dtype=bool)
        for value, x0, y0, x1, y1 in boxes:
            inside_any[math.floor(y0):math.ceil(y1), math.floor(x0):math.ceil(x1)] = True
            # The centre shows this box's type, or that of a smaller box drawn over it.
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            area = (x1 - x0) * (y1 - y0)
            allowed = {v for v, a0, b0, a1, b1 in boxes if (a1 - a0) * (b1 - b0) <= area and a0 <= cx < a1 and b0 <= cy < b1}
            assert mask[int(cy), int(cx)] in allowed
        assert not mask[~inside_any].any()  # pixels outside every box are background

        for index, (value, x0, y0, x1, y1) in enumerate(boxes):
            others = [b for j, b in enumerate(boxes) if j != index]
            isolated = all(b[3] < x0 - 1 or b[1] > x1 + 1 or b[4] < y0 - 1 or b[2] > y1 + 1 for b in others)
            if isolated and min(x1 - x0, y1 - y0) >= 8:
                region = mask[int(y0):int(math.ceil(y1)), int(x0):int(math.ceil(x1))]
                expected = math.pi * (x1 - x0) * (y1 - y0) / 4
                assert abs(int((region == value).sum()) - expected) <= 0.08 * expected
                checked_areas += 1
    assert checked_areas >= 5


@pytest.mark.realdata
def test_real_test_folder_box_counts(real_data: Path, tmp_path: Path) -> None:
    root = real_data / "acne04_voc"
    manifest = build(root, TYPES, tmp_path / "masks", subsets={"test": "test"}, class_map=CLASS_MAP)
    xmls = sorted(root.glob("test/*.xml"))
    assert len(manifest) == len(xmls)
    expected = Counter(CLASS_MAP[m] for xml in xmls for m in re.findall(r"<name>([^<]*)</name>", xml.read_text()))
    assert {t: int(manifest[f"n_{t}"].sum()) for t in TYPES} == {t: expected[t] for t in TYPES}
    assert (manifest["split"] == "test").sum() == len(list(root.glob("test/*.xml")))
    # Resize-only folders: one image per ACNE04 photo.
    assert manifest["group_id"].is_unique


# ---------------------------------------------------------------- tmp inputs
def _voc(folder: Path, stem: str, objects: list[tuple[str, float, float, float, float]], size=(64, 48), declared=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "white").save(folder / f"{stem}.jpg")
    width, height = declared or size
    body = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><xmax>{x1}</xmax><ymin>{y0}</ymin><ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1 in objects
    )
    xml = folder / f"{stem}.xml"
    xml.write_text(f"<annotation><size><width>{width}</width><height>{height}</height></size>{body}</annotation>")
    return xml


def _build(tmp_path: Path, **kwargs):
    params = {"subsets": {"valid": None}, "class_map": {"pap": "papule", "nod": "nodule"}, **kwargs}
    return build(tmp_path / "root", TYPES, tmp_path / "masks", **params)


def test_ellipse_matches_pixel_centre_test(tmp_path: Path) -> None:
    _voc(tmp_path / "root" / "valid", "levle1_7_jpg.rf.abc123", [("pap", 10, 6, 50, 30)])
    manifest = _build(tmp_path)
    assert manifest.loc[0, "group_id"] == "levle1_7"
    assert manifest.loc[0, "n_papule"] == 1 and manifest.loc[0, "n_nodule"] == 0
    mask = read_label_map(tmp_path / "masks" / manifest.loc[0, "mask_path"])
    # Independent rasterisation: pixel centres inside the inscribed ellipse.
    ys, xs = np.mgrid[0:48, 0:64] + 0.5
    inside = ((xs - 30) / 20) ** 2 + ((ys - 18) / 12) ** 2 <= 1
    drawn = mask == TYPES.index("papule") + 1
    assert set(np.unique(mask)) == {0, 3}
    assert (drawn & inside).sum() / (drawn | inside).sum() > 0.95
    assert abs(drawn.sum() - math.pi * 20 * 12) < 0.03 * math.pi * 20 * 12


def test_small_box_drawn_over_large_one(tmp_path: Path) -> None:
    # Listed small first: the large box must not paint over it.
    _voc(tmp_path / "root" / "valid", "img", [("pap", 28, 20, 34, 26), ("nod", 4, 4, 60, 44)])
    mask = read_label_map(tmp_path / "masks" / _build(tmp_path).loc[0, "mask_path"])
    assert mask[23, 31] == TYPES.index("papule") + 1
    assert mask[12, 16] == TYPES.index("nodule") + 1


def test_box_within_one_pixel_is_clipped(tmp_path: Path) -> None:
    _voc(tmp_path / "root" / "valid", "img", [("pap", -0.5, 0, 64.8, 48)])
    mask = read_label_map(tmp_path / "masks" / _build(tmp_path).loc[0, "mask_path"])
    assert mask[24, 0] == 3 and mask[24, 63] == 3 and mask[0, 0] == 0


def test_box_outside_image_names_file(tmp_path: Path) -> None:
    _voc(tmp_path / "root" / "valid", "img", [("pap", 10, 10, 70, 20)])
    with pytest.raises(DataError, match=r"img.xml: object 1 .*outside the 64x48 image"):
        _build(tmp_path)


@pytest.mark.parametrize("box", [(10, 10, 10, 20), (10, 20, 30, 20), (30, 10, 10, 20)])
def test_zero_area_box_names_file(tmp_path: Path, box) -> None:
    _voc(tmp_path / "root" / "valid", "img", [("pap", *box)])
    with pytest.raises(DataError, match=r"img.xml: object 1 .*zero area"):
        _build(tmp_path)


def test_unmapped_name_names_file_and_name(tmp_path: Path) -> None:
    _voc(tmp_path / "root" / "valid", "img", [("pap", 1, 1, 5, 5), ("scar", 1, 1, 5, 5)])
    with pytest.raises(DataError, match=r"img.xml: object 2 has name 'scar'"):
        _build(tmp_path)


def test_missing_image_and_missing_xml(tmp_path: Path) -> None:
    xml = _voc(tmp_path / "root" / "valid", "img", [("pap", 1, 1, 5, 5)])
    xml.with_suffix(".jpg").unlink()
    with pytest.raises(DataError, match=r"img.xml has no image"):
        _build(tmp_path)
    xml.unlink()
    Image.new("RGB", (8, 8)).save(xml.with_name("lonely.jpg"))
    with pytest.raises(DataError, match=r"lonely.jpg has no VOC .xml"):
        _build(tmp_path)


def test_undecodable_image_and_size_mismatch(tmp_path: Path) -> None:
    xml = _voc(tmp_path / "root" / "valid", "img", [("pap", 1, 1, 5, 5)], declared=(640, 640))
    with pytest.raises(DataError, match=r"declares a 640x640 image but .*img.jpg is 64x48"):
        _build(tmp_path)
    xml.with_suffix(".jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot decode image .*img.jpg"):
        _build(tmp_path)


def test_unparsable_xml(tmp_path: Path) -> None:
    xml = _voc(tmp_path / "root" / "valid", "img", [])
    xml.write_text("<annotation><object>")
    with pytest.raises(DataError, match="img.xml cannot be parsed"):
        _build(tmp_path)


def test_fixed_split_and_duplicate_ids(tmp_path: Path) -> None:
    _voc(tmp_path / "root" / "valid", "a", [])
    _voc(tmp_path / "root" / "test", "b", [("nod", 1, 1, 9, 9)])
    manifest = _build(tmp_path, subsets={"valid": None, "test": "test"})
    assert dict(zip(manifest["image_id"], manifest["split"])) == {"a": "", "b": "test"}
    assert not read_label_map(tmp_path / "masks" / "a.png").any()  # no boxes: all background
    _voc(tmp_path / "root" / "test", "a", [])
    with pytest.raises(DataError, match="share the id 'a'"):
        _build(tmp_path, subsets={"valid": None, "test": "test"})


def test_config_errors(tmp_path: Path) -> None:
    _voc(tmp_path / "root" / "valid", "img", [])
    with pytest.raises(ConfigError, match="split 'holdout'"):
        _build(tmp_path, subsets={"valid": "holdout"})
    with pytest.raises(ConfigError, match="class_map"):
        _build(tmp_path, class_map={"pap": "acne"})
    with pytest.raises(ConfigError, match="inside the data root"):
        build(tmp_path / "root", TYPES, tmp_path / "root" / "masks", subsets={"valid": None}, class_map={})
    with pytest.raises(ConfigError, match="inside the data root"):
        build(tmp_path / "root", TYPES, tmp_path / "root", subsets={"valid": None}, class_map={})


def test_types_that_only_repeat_the_photo_grade_are_flagged(tmp_path: Path, caplog) -> None:
    # levle0 photos hold only "pap" boxes and levle3 photos only "nod": the type is the grade
    folder = tmp_path / "root" / "valid"
    _voc(folder, "levle0_1_jpg.rf.a", [("pap", 2, 2, 10, 10), ("pap", 20, 20, 30, 30)])
    _voc(folder, "levle3_2_jpg.rf.b", [("nod", 2, 2, 10, 10)])
    with caplog.at_level("WARNING", logger="pipeline.data.adapters._common"):
        _build(tmp_path)
    assert "the types are the photos' severity grades" in caplog.text and "papule -> grade 0" in caplog.text
    caplog.clear()
    _voc(folder, "levle3_3_jpg.rf.c", [("pap", 2, 2, 10, 10)])  # a papule on a severe face: types carry information
    with caplog.at_level("WARNING", logger="pipeline.data.adapters._common"):
        _build(tmp_path)
    assert "severity grades" not in caplog.text


@pytest.mark.realdata
def test_the_roboflow_acne04_types_are_the_photo_grades(real_data: Path) -> None:
    # every box of a levle0 photo is "whitehead and blackhead", of levle1 "pustules", levle2 "papules",
    # levle3 "nodules and cysts" (docs/BENCHMARKS.md §4b): read from the XML, independently of the adapter
    from pipeline.data.adapters._common import acne04_grade, types_that_follow_grades

    pairs = [(acne04_grade(xml.stem), m) for xml in sorted((real_data / "acne04_voc").glob("*/*.xml"))
             for m in re.findall(r"<name>([^<]*)</name>", xml.read_text())]
    assert len(pairs) == 3425 + 1737
    assert types_that_follow_grades(pairs, "acne04_voc") == {
        "whitehead and blackhead": 0, "pustules": 1, "papules": 2, "nodules and cysts": 3}
