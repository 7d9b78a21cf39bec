import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion

from pipeline.data.adapters import get_adapter
from pipeline.data.io import read_label_map
from pipeline.data.manifest import validate_manifest
from pipeline.errors import ConfigError, DataError

build = get_adapter("circles")


def _circle_pixels(shape: tuple[int, int], circles: list[tuple[float, float, float]], sx: float, sy: float) -> np.ndarray:
    """Independent rasterisation: pixel centres inside any rescaled circle (an ellipse)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    inside = np.zeros(shape, dtype=bool)
    for x, y, r in circles:
        inside |= ((xs - x * sx) / (r * sx)) ** 2 + ((ys - y * sy) / (r * sy)) ** 2 <= 1
    return inside


@pytest.mark.realdata
def test_real_circles_on_acne04_voc_images(real_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    annotation_file = real_data / "acne04v2_circles" / "Acne04-v2_annotations.json"
    data = json.loads(annotation_file.read_text())
    photos = {Path(i["file_name"]).stem: i for i in data["images"]}
    circles: dict[int, list] = {}
    for a in data["annotations"]:
        circles.setdefault(a["image_id"], []).append((*a["coordinates"], a["radius"]))

    root = tmp_path / "acne04"
    picked: dict[str, tuple[str, str]] = {}  # image stem -> (folder, photo)
    for folder, wanted in (("valid", 3), ("test", 1)):
        (root / folder).mkdir(parents=True)
        for image in sorted((real_data / "acne04_voc" / folder).glob("*.jpg")):
            photo = image.name.split("_jpg.rf.")[0]
            if photo in photos and sum(f == folder for f, _ in picked.values()) < wanted:
                shutil.copy(image, root / folder)
                picked[image.stem] = (folder, photo)
    unannotated = next(p for p in sorted((real_data / "acne04_voc" / "valid").glob("*.jpg")) if p.name.split("_jpg.rf.")[0] not in photos)
    shutil.copy(unannotated, root / "valid")

    with caplog.at_level(logging.WARNING):
        manifest = build(root, ["acne"], tmp_path / "masks", annotations=str(annotation_file),
                         subsets={"valid": None, "test": "test"}, class_map={"acne": "acne"})
    validate_manifest(manifest, task="segmentation", classes=["acne"], root=root, mask_root=tmp_path / "masks", check_files=True)
    assert "dropped 1 image file(s) with no entry" in caplog.text
    assert f"dropped {len(photos) - len(picked)} annotated photo(s)" in caplog.text
    assert sorted(manifest["image_id"]) == sorted(picked)
    assert set(manifest["label_origin"]) == {"circle-derived"}

    for row in manifest.to_dict("records"):
        folder, photo = picked[row["image_id"]]
        assert row["group_id"] == photo
        assert row["split"] == ("test" if folder == "test" else "")
        info = photos[photo]
        its_circles = circles.get(info["id"], [])
        assert row["n_acne"] == len(its_circles)
        mask = read_label_map(tmp_path / "masks" / row["mask_path"])
        assert mask.shape == (640, 640) and set(np.unique(mask)) <= {0, 1}
        sx, sy = 640 / info["width"], 640 / info["height"]
        expected = _circle_pixels(mask.shape, its_circles, sx, sy)
        drawn = mask == 1
        # Lesions are a few pixels wide here: allow one pixel of rasterisation difference at edges.
        assert not (drawn & ~binary_dilation(expected, np.ones((3, 3)))).any()
        assert not (binary_erosion(expected, np.ones((3, 3))) & ~drawn).any()
        assert abs(int(drawn.sum()) - int(expected.sum())) <= 0.25 * expected.sum()
        for x, y, r in its_circles:
            if r * min(sx, sy) >= 2:
                assert mask[int(y * sy), int(x * sx)] == 1


def _setup(tmp_path: Path, annotations: list[dict], images: dict[str, tuple[int, int]], photos=None) -> Path:
    root = tmp_path / "root"
    for relative, size in images.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, "white").save(root / relative)
    photos = photos or [{"id": 0, "file_name": "levle0_1.jpg", "width": 200, "height": 100}]
    (root / "ann.json").write_text(json.dumps({"images": photos, "annotations": annotations}))
    return root


def _circle(x, y, r, name="acne", image_id=0, number=0) -> dict:
    return {"id": number, "image_id": image_id, "coordinates": [x, y], "radius": r, "class_name": name}


def test_circle_rescaled_to_stretched_image(tmp_path: Path) -> None:
    root = _setup(tmp_path, [_circle(100, 50, 20)], {"valid/levle0_1_jpg.rf.ff00.jpg": (100, 100)})
    manifest = build(root, ["acne"], tmp_path / "m", annotations="ann.json", subsets={"valid": None}, class_map={"acne": "acne"})
    mask = read_label_map(tmp_path / "m" / manifest.loc[0, "mask_path"])
    # 200x100 photo on a 100x100 image: x halves, y stays; the circle becomes a 10x20 ellipse at (50, 50).
    drawn = mask == 1
    expected = _circle_pixels((100, 100), [(100, 50, 20)], 0.5, 1.0)
    assert (drawn & expected).sum() / (drawn | expected).sum() > 0.9
    ys, xs = np.nonzero(drawn)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (40, 59, 30, 69)
    assert manifest.loc[0, "group_id"] == "levle0_1" and manifest.loc[0, "n_acne"] == 1


def test_two_class_names_and_drawing_order(tmp_path: Path) -> None:
    annotations = [_circle(100, 50, 4, "small", number=1), _circle(100, 50, 40, "big", number=2)]
    root = _setup(tmp_path, annotations, {"valid/levle0_1.jpg": (200, 100)})
    manifest = build(root, ["a", "b"], tmp_path / "m", annotations="ann.json", subsets={"valid": None}, class_map={"small": "a", "big": "b"})
    mask = read_label_map(tmp_path / "m" / "levle0_1.png")
    assert mask[50, 100] == 1 and mask[50, 125] == 2
    assert manifest.loc[0, "n_a"] == 1 and manifest.loc[0, "n_b"] == 1


def test_photo_without_circles_is_kept_empty(tmp_path: Path) -> None:
    root = _setup(tmp_path, [], {"valid/levle0_1.jpg": (20, 10)})
    manifest = build(root, ["acne"], tmp_path / "m", annotations="ann.json", subsets={"valid": "val"}, class_map={"acne": "acne"})
    assert manifest.loc[0, "n_acne"] == 0 and manifest.loc[0, "split"] == "val"
    assert not read_label_map(tmp_path / "m" / "levle0_1.png").any()


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (_circle(10, 10, 3, "scar"), "class_name 'scar', not in class_map"),
        (_circle(250, 10, 3), r"centre \(250.0, 10.0\) lies outside the 200x100 photo"),
        (_circle(10, 10, 0), "radius 0.0 gives a zero-area lesion"),
    ],
)
def test_bad_circles_name_photo(tmp_path: Path, annotation: dict, message: str) -> None:
    root = _setup(tmp_path, [annotation], {"valid/levle0_1.jpg": (100, 100)})
    with pytest.raises(DataError, match=f"ann.json: photo 'levle0_1.jpg', annotation 0.*{message}"):
        build(root, ["acne"], tmp_path / "m", annotations="ann.json", subsets={"valid": None}, class_map={"acne": "acne"})


def test_two_copies_of_one_photo_is_a_data_error(tmp_path: Path) -> None:
    root = _setup(tmp_path, [], {"train/levle0_1_jpg.rf.aa.jpg": (10, 10), "train/levle0_1_jpg.rf.bb.jpg": (10, 10)})
    with pytest.raises(DataError, match="both copies of ACNE04 photo 'levle0_1'"):
        build(root, ["acne"], tmp_path / "m", annotations="ann.json", subsets={"train": None}, class_map={"acne": "acne"})


def test_malformed_or_missing_annotation_file(tmp_path: Path) -> None:
    root = _setup(tmp_path, [{"image_id": 0, "radius": 3}], {"valid/levle0_1.jpg": (10, 10)})
    kwargs = dict(subsets={"valid": None}, class_map={"acne": "acne"})
    with pytest.raises(DataError, match=r"annotations\[0\] needs coordinates"):
        build(root, ["acne"], tmp_path / "m", annotations="ann.json", **kwargs)
    (root / "ann.json").write_text("{not json")
    with pytest.raises(DataError, match="ann.json is not COCO-like JSON"):
        build(root, ["acne"], tmp_path / "m", annotations="ann.json", **kwargs)
    with pytest.raises(DataError, match="nope.json not found"):
        build(root, ["acne"], tmp_path / "m", annotations="nope.json", **kwargs)


def test_no_match_at_all_is_a_data_error(tmp_path: Path) -> None:
    root = _setup(tmp_path, [], {"valid/other.jpg": (10, 10)})
    with pytest.raises(DataError, match="no images found"):
        build(root, ["acne"], tmp_path / "m", annotations="ann.json", subsets={"valid": None}, class_map={"acne": "acne"})


def test_mask_root_inside_data_is_refused(tmp_path: Path) -> None:
    root = _setup(tmp_path, [], {"valid/levle0_1.jpg": (10, 10)})
    with pytest.raises(ConfigError, match="inside the data root"):
        build(root, ["acne"], root / "derived", annotations="ann.json", subsets={"valid": None}, class_map={"acne": "acne"})
