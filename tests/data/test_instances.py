"""Instance maps (one instance per annotation), their checks, and grades from lesion counts."""

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from pipeline.data.adapters import get_adapter
from pipeline.data.adapters._common import Ellipse, acne04_grade, render_instances
from pipeline.data.instances import (
    check_instances,
    components_per_type,
    grade_from_count,
    grade_synthetic_rows,
)
from pipeline.data.io import read_instance_map, read_label_map, write_instance_map
from pipeline.data.manifest import validate_manifest
from pipeline.errors import DataError
from tests.data.test_adapters_voc_boxes import CLASS_MAP, TYPES, _build, _voc


# ---------------------------------------------------------------- rendering
def test_touching_annotations_stay_separate_instances():
    # two papules side by side, touching: one component of the label map, two instances
    shapes = [Ellipse(2, 2, 12, 12, 1), Ellipse(11, 2, 21, 12, 1)]
    label_map, instances = render_instances(14, 24, shapes)
    assert ndimage.label(label_map > 0, structure=np.ones((3, 3)))[1] == 1
    assert sorted(np.unique(instances).tolist()) == [0, 1, 2]
    check_instances(label_map, instances, "touching")


def test_overlapping_annotations_both_keep_pixels_smaller_on_top():
    large, small = Ellipse(0, 0, 20, 20, 1), Ellipse(8, 8, 14, 14, 2)
    label_map, instances = render_instances(20, 20, [small, large])  # listed small first
    assert instances[11, 11] == 1 and label_map[11, 11] == 2  # the small one is drawn on top
    assert instances[3, 10] == 2 and label_map[3, 10] == 1
    check_instances(label_map, instances, "overlap")


def test_an_annotation_covered_by_smaller_ones_takes_back_its_centre():
    # a large box wholly covered by two halves drawn on top of it would vanish
    large = Ellipse(0, 0, 10, 10, 1)
    shapes = [large, Ellipse(0, 0, 5.5, 10, 2), Ellipse(4.5, 0, 10, 10, 2)]
    # the halves are ellipses, so they leave the large one's centre strip uncovered only partly;
    # cover it fully with a third, wider one to force the vanishing case
    shapes.append(Ellipse(-1, -1, 11, 11, 2))
    shapes[0] = Ellipse(1, 1, 9, 9, 1)
    label_map, instances = render_instances(10, 10, shapes)
    assert set(np.unique(instances)) == {0, 1, 2, 3, 4}  # nobody vanished
    check_instances(label_map, instances, "reclaimed")


def test_identical_annotations_are_an_error():
    with pytest.raises(DataError, match="identical"):
        render_instances(10, 10, [Ellipse(1, 1, 8, 8, 1), Ellipse(1, 1, 8, 8, 1)])


def test_instance_map_png_round_trip(tmp_path):
    instances = np.array([[0, 1], [300, 65535]], dtype=np.int64)
    write_instance_map(instances, tmp_path / "i.png")
    assert read_instance_map(tmp_path / "i.png").tolist() == instances.tolist()


# ---------------------------------------------------------------- checks
def test_instance_on_background_is_an_error_naming_the_file():
    label_map = np.zeros((5, 5), np.uint8)
    label_map[1:3, 1:3] = 1
    instances = (label_map > 0).astype(np.int64)
    instances[4, 4] = 2
    with pytest.raises(DataError, match=r"inst\.png.*lie on label-map background.*row 4, column 4"):
        check_instances(label_map, instances, "inst.png")


def test_instance_spanning_two_types_is_an_error():
    label_map = np.zeros((5, 5), np.uint8)
    label_map[1, 1:3], label_map[2, 1:3] = 1, 2
    instances = (label_map > 0).astype(np.int64)
    with pytest.raises(DataError, match=r"inst\.png: instance 1 spans lesion types 1 and 2"):
        check_instances(label_map, instances, "inst.png")


def test_lesion_pixel_without_instance_is_an_error():
    label_map = np.ones((3, 3), np.uint8)
    with pytest.raises(DataError, match="belong to no instance"):
        check_instances(label_map, np.zeros((3, 3), np.int64), "x")


def test_components_per_type_never_merge_types():
    label_map = np.array([[1, 1, 2, 0, 1],
                          [0, 0, 2, 0, 1]], dtype=np.uint8)
    instances = components_per_type(label_map)
    assert len(np.unique(instances[instances > 0])) == 3
    check_instances(label_map, instances, "per type")


# ---------------------------------------------------------------- grades
def test_grades_follow_the_hayashi_thresholds():
    counts = [0, 5, 6, 20, 21, 50, 51, 400]
    assert grade_from_count(counts).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert grade_from_count([1, 2, 3], [1.5]).tolist() == [0, 1, 1]
    with pytest.raises(ValueError):
        grade_from_count([1], [5, 5])


def test_acne04_grade_from_the_file_name():
    assert acne04_grade("levle2_14_jpg.rf.0a1b2c") == 2
    assert acne04_grade("levle0_108") == 0
    assert acne04_grade("IMD003") == ""


def test_synthetic_rows_are_graded_from_their_counts_others_stay_empty():
    frame = pd.DataFrame({"label_origin": ["synthetic", "synthetic", "box-derived"], "grade": ["", "", ""],
                          "n_a": [1, 4, 9], "n_b": [0, 3, 0]})
    graded = grade_synthetic_rows(frame, ["a", "b"], [2, 5])
    assert graded["grade"].tolist() == [0, 2, ""]


# ---------------------------------------------------------------- adapters
def test_voc_touching_boxes_are_two_instances(tmp_path):
    _voc(tmp_path / "root" / "valid", "levle3_9", [("pap", 10, 10, 30, 30), ("pap", 29, 10, 49, 30)])
    manifest = _build(tmp_path)
    row = manifest.iloc[0]
    label_map = read_label_map(tmp_path / "masks" / row["mask_path"])
    instances = read_instance_map(tmp_path / "masks" / row["instance_path"])
    assert ndimage.label(label_map > 0, structure=np.ones((3, 3)))[1] == 1  # one blob ...
    assert sorted(np.unique(instances).tolist()) == [0, 1, 2]  # ... two lesions
    assert row["grade"] == 3 and row["n_papule"] == 2
    validate_manifest(manifest, task="segmentation", classes=TYPES, root=tmp_path / "root",
                      mask_root=tmp_path / "masks", check_files=True)


def test_voc_image_without_annotations_has_zero_lesions(tmp_path):
    _voc(tmp_path / "root" / "valid", "levle0_1", [])
    row = _build(tmp_path).iloc[0]
    assert not read_instance_map(tmp_path / "masks" / row["instance_path"]).any()
    assert not read_label_map(tmp_path / "masks" / row["mask_path"]).any()
    assert [row[f"n_{t}"] for t in TYPES] == [0, 0, 0, 0] and row["grade"] == 0


def test_masks_adapter_writes_components_per_type(tmp_path):
    from PIL import Image

    (tmp_path / "root" / "images").mkdir(parents=True)
    (tmp_path / "root" / "masks").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "root" / "images" / "a.png")
    mask = np.zeros((6, 8), np.uint8)
    mask[1:3, 1:3] = mask[4:6, 5:8] = 255
    Image.fromarray(mask).save(tmp_path / "root" / "masks" / "a.png")
    row = get_adapter("masks")(tmp_path / "root", ["lesion"], tmp_path / "derived", image_dir="images",
                               mask_dir="masks").iloc[0]
    instances = read_instance_map(tmp_path / "derived" / row["instance_path"])
    assert sorted(np.unique(instances).tolist()) == [0, 1, 2] and row["grade"] == ""


@pytest.mark.realdata
def test_real_acne04_instances_equal_boxes(real_data: Path, tmp_path: Path) -> None:
    """On acne04_voc/valid every box is one instance (the union's components merge up to 30%)."""
    root = real_data / "acne04_voc"
    manifest = get_adapter("voc_boxes")(root, TYPES, tmp_path / "masks", subsets={"valid": None}, class_map=CLASS_MAP)
    boxes = components = instances = 0
    per_grade: dict[int, Counter] = {}
    for row in manifest.to_dict("records"):
        n_boxes = len(re.findall(r"<object>", (root / Path(row["image_path"]).with_suffix(".xml")).read_text()))
        label_map = read_label_map(tmp_path / "masks" / row["mask_path"])
        found = read_instance_map(tmp_path / "masks" / row["instance_path"])
        check_instances(label_map, found, row["image_id"])
        n_instances = len(np.unique(found[found > 0]))
        assert n_instances == n_boxes == sum(row[f"n_{t}"] for t in TYPES), row["image_id"]
        assert row["grade"] == int(row["image_id"][5])  # levleG
        n_components = ndimage.label(label_map > 0, structure=np.ones((3, 3)))[1]
        boxes, components, instances = boxes + n_boxes, components + n_components, instances + n_instances
        per_grade.setdefault(row["grade"], Counter()).update(boxes=n_boxes, components=n_components)
    assert boxes == 3425 and instances == boxes
    assert components / boxes < 0.85  # measured 2816 / 3425 = 0.82: the old rule lost 18% of the lesions
    assert per_grade[3]["components"] / per_grade[3]["boxes"] < 0.75  # measured 0.70 at grade 3
