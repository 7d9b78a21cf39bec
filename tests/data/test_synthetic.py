"""Embedded synthetic data: generators (pipeline.data.synthetic) and their adapters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.data.adapters import synthetic
from pipeline.data.adapters.synthetic import build_synthetic_acne, build_synthetic_isic
from pipeline.data.synthetic import acne, isic
from pipeline.errors import ConfigError, DataError

ISIC_CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
ACNE_TYPES = ["whitehead", "blackhead", "papule", "pustule", "nodule", "cyst"]
# Typed in from the ISIC 2018 task 3 ground truth and the preliminary acne data set.
ISIC2018 = {"NV": 6705, "MEL": 1113, "BKL": 1099, "BCC": 514, "AKIEC": 327, "VASC": 142, "DF": 115}
ACNE_PRELIMINARY = {"whitehead": 1722, "blackhead": 357, "papule": 2130, "pustule": 277, "nodule": 53, "cyst": 469}

ISIC_PARAMS = dict(scale=0.01, image_size=32, seed=3)
ACNE_PARAMS = dict(n_images=12, scale=0.02, image_size=64, seed=3)
CLASSIFICATION_COLUMNS = {"image_id", "image_path", "label", "group_id", "split", "source", "label_origin",
                          "age", "sex", "site"}
SEGMENTATION_COLUMNS = {"image_id", "image_path", "mask_path", "group_id", "split", "source", "label_origin"}


@pytest.fixture(scope="module")
def isic_set(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("isic") / "data"
    return root, build_synthetic_isic(root, ISIC_CLASSES, root, **ISIC_PARAMS)


@pytest.fixture(scope="module")
def acne_set(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("acne") / "data"
    return root, build_synthetic_acne(root, ACNE_TYPES, root, **ACNE_PARAMS)


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- ISIC-style


def test_isic_class_counts_follow_isic2018(isic_set):
    _, manifest = isic_set
    expected = {c: max(round(n * ISIC_PARAMS["scale"]), 3) for c, n in ISIC2018.items()}
    assert manifest["label"].value_counts().to_dict() == expected
    lesions_per_class = manifest.groupby("label")["group_id"].nunique()
    assert (lesions_per_class >= 3).all(), lesions_per_class


def test_isic_images_of_a_lesion_share_group_label_and_metadata(isic_set):
    _, manifest = isic_set
    per_lesion = manifest.groupby("group_id")
    assert per_lesion.size().between(1, 4).all()
    assert (per_lesion.size() > 1).any(), "no lesion has several images"
    assert (per_lesion[["label", "age", "sex", "site"]].nunique() == 1).all().all()


def test_isic_views_of_a_lesion_look_more_alike_than_other_lesions(isic_set):
    root, manifest = isic_set
    mean_colour = {row.image_id: np.asarray(Image.open(root / row.image_path), float).mean(axis=(0, 1))
                   for row in manifest.itertuples()}
    within, between = [], []
    rows = list(manifest.itertuples())
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            distance = np.linalg.norm(mean_colour[a.image_id] - mean_colour[b.image_id])
            (within if a.group_id == b.group_id else between).append(distance)
    assert np.mean(within) < 0.5 * np.mean(between)


def test_isic_manifest_follows_the_contract(isic_set):
    root, manifest = isic_set
    assert set(manifest.columns) == CLASSIFICATION_COLUMNS
    assert manifest["image_id"].is_unique
    assert (manifest["split"] == "").all()
    assert (manifest["source"] == "synthetic").all() and (manifest["label_origin"] == "synthetic").all()
    assert set(manifest["label"]) == set(ISIC_CLASSES)
    assert not any(Path(p).is_absolute() for p in manifest["image_path"])
    assert json.loads((root / synthetic.PARAMS_FILE).read_text())["seed"] == ISIC_PARAMS["seed"]


def test_isic_every_image_decodes_and_no_extra_files(isic_set):
    root, manifest = isic_set
    for path in manifest["image_path"]:
        with Image.open(root / path) as image:
            image.load()
            assert image.mode == "RGB" and image.size == (32, 32)
    assert len(list((root / "images").iterdir())) == len(manifest)


def test_isic_same_seed_same_bytes_other_seed_other_images(isic_set, tmp_path):
    root, manifest = isic_set
    again = build_synthetic_isic(tmp_path / "again", ISIC_CLASSES, tmp_path / "again", **ISIC_PARAMS)
    pd.testing.assert_frame_equal(again, manifest)
    assert _file_bytes(tmp_path / "again") == _file_bytes(root)

    other = tmp_path / "other"
    build_synthetic_isic(other, ISIC_CLASSES, other, **{**ISIC_PARAMS, "seed": ISIC_PARAMS["seed"] + 1})
    original, changed = _file_bytes(root), _file_bytes(other)
    shared = [name for name in original if name.startswith("images/") and name in changed]
    assert shared and sum(original[n] != changed[n] for n in shared) == len(shared)


def test_isic_rerun_reuses_the_files(isic_set):
    root, manifest = isic_set
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    rerun = build_synthetic_isic(root, list(reversed(ISIC_CLASSES)), root, **ISIC_PARAMS)
    pd.testing.assert_frame_equal(rerun, manifest)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == before


def test_isic_other_params_on_an_existing_root_raise(isic_set):
    root, _ = isic_set
    with pytest.raises(DataError, match="other parameters.*image_size.*delete"):
        build_synthetic_isic(root, ISIC_CLASSES, root, **{**ISIC_PARAMS, "image_size": 48})


def test_isic_foreign_or_damaged_folder_raises(isic_set, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a generated data set"):
        build_synthetic_isic(foreign, ISIC_CLASSES, foreign, **ISIC_PARAMS)
    assert (foreign / "notes.txt").read_text() == "mine"

    root, manifest = isic_set
    damaged = tmp_path / "damaged"
    build_synthetic_isic(damaged, ISIC_CLASSES, damaged, **ISIC_PARAMS)
    (damaged / manifest["image_path"].iloc[-1]).unlink()
    with pytest.raises(DataError, match="incomplete"):
        build_synthetic_isic(damaged, ISIC_CLASSES, damaged, **ISIC_PARAMS)


def test_isic_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    real_render = isic.render_lesion
    calls = []

    def render_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt("simulated interruption")
        return real_render(*args, **kwargs)

    root = tmp_path / "data"
    monkeypatch.setattr(isic, "render_lesion", render_then_fail)
    with pytest.raises(KeyboardInterrupt):
        build_synthetic_isic(root, ISIC_CLASSES, root, **ISIC_PARAMS)
    assert list(tmp_path.iterdir()) == []  # neither the root nor a staging folder is left

    monkeypatch.setattr(isic, "render_lesion", real_render)
    manifest = build_synthetic_isic(root, ISIC_CLASSES, root, **ISIC_PARAMS)
    assert all((root / p).is_file() for p in manifest["image_path"])


@pytest.mark.parametrize("classes, params, message", [
    (ISIC_CLASSES, {"colour": "red"}, "unknown parameter"),
    (ISIC_CLASSES[:-1], {}, r"missing \['VASC'\]"),
    (ISIC_CLASSES + ["SCC"], {}, r"unknown \['SCC'\]"),
    (ISIC_CLASSES, {"scale": 0}, "scale must be a positive number"),
    (ISIC_CLASSES, {"image_size": 8}, "image_size must be an integer"),
    (ISIC_CLASSES, {"seed": 1.5}, "seed must be an integer"),
])
def test_isic_bad_config_raises(tmp_path, classes, params, message):
    with pytest.raises(ConfigError, match=message):
        build_synthetic_isic(tmp_path / "x", classes, tmp_path / "x", **{**ISIC_PARAMS, **params})
    assert not (tmp_path / "x").exists()


def test_isic_simple_features_beat_chance_on_a_grouped_split():
    """Calibration guard: the classes are learnable (a loose bound; the report gives the figure)."""
    features, labels, groups = [], [], []
    for lesion in isic.plan_lesions(scale=0.04, seed=0):
        for view in isic.render_lesion(lesion, image_size=24, seed=0):
            image, core = view.image / 255.0, view.lesion_mask
            inside = image[core] if core.any() else image.reshape(-1, 3)
            features.append(np.concatenate([inside.mean(0), inside.std(0), image[~core].mean(0)]))
            labels.append(lesion.label)
            groups.append(lesion.lesion_index)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced"))
    folds = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=0)
    predicted = cross_val_predict(model, np.array(features), np.array(labels), groups=groups, cv=folds)
    assert balanced_accuracy_score(labels, predicted) > 1 / 7 + 0.15


# --------------------------------------------------------------------------- acne


def _label_map(root: Path, path: str) -> np.ndarray:
    with Image.open(root / path) as mask:
        assert mask.mode == "L"
        return np.asarray(mask)


def test_acne_lesion_counts_follow_the_preliminary_set(acne_set):
    _, manifest = acne_set
    expected = {t: max(round(n * ACNE_PARAMS["scale"]), 6) for t, n in ACNE_PRELIMINARY.items()}
    assert {t: int(manifest[f"n_{t}"].sum()) for t in ACNE_TYPES} == expected
    assert all((manifest[f"n_{t}"] > 0).sum() >= 6 for t in ACNE_TYPES)


def test_acne_masks_match_images_and_counts(acne_set):
    root, manifest = acne_set
    eight_connected = np.ones((3, 3))
    for row in manifest.itertuples():
        with Image.open(root / row.image_path) as image:
            image.load()
            assert image.mode == "RGB" and image.size == (64, 64)
        label_map = _label_map(root, row.mask_path)
        assert label_map.shape == (64, 64) and label_map.dtype == np.uint8
        assert label_map.max() <= len(ACNE_TYPES)
        for value, name in enumerate(ACNE_TYPES, start=1):
            # Separate components per lesion: lesions of one type never touch.
            _, found = ndimage.label(label_map == value, structure=eight_connected)
            assert found == getattr(row, f"n_{name}"), (row.image_id, name)
        # Lesions of different types never touch either: each lesion is one component of the union.
        _, lesions = ndimage.label(label_map > 0, structure=eight_connected)
        assert lesions == sum(getattr(row, f"n_{t}") for t in ACNE_TYPES)


def test_acne_instance_maps_hold_one_instance_per_lesion(acne_set):
    from pipeline.data.instances import check_instances
    from pipeline.data.io import read_instance_map

    root, manifest = acne_set
    for row in manifest.itertuples():
        label_map = _label_map(root, row.mask_path)
        with Image.open(root / row.instance_path) as stored:
            assert stored.mode.startswith("I;16")  # uint16 PNG
        instances = read_instance_map(root / row.instance_path)
        check_instances(label_map, instances, row.image_id)  # same foreground, one type per instance
        n_lesions = sum(getattr(row, f"n_{t}") for t in ACNE_TYPES)
        assert sorted(np.unique(instances[instances > 0]).tolist()) == list(range(1, n_lesions + 1))


def test_acne_instance_maps_are_added_to_an_older_data_set(acne_set, tmp_path):
    root, manifest = acne_set
    import shutil

    copy = tmp_path / "older"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "instances")  # drawn before instance maps existed
    before = {k: v for k, v in _file_bytes(copy).items()}
    build_synthetic_acne(copy, ACNE_TYPES, copy, **ACNE_PARAMS)
    after = _file_bytes(copy)
    assert all(after[name] == data for name, data in before.items())  # nothing redrawn
    assert after.keys() - before.keys() == {f"instances/{i}.png" for i in manifest["image_id"]}


def test_acne_lesion_cores_never_overlap():
    size = 64
    rows, cols = np.mgrid[0:size, 0:size]
    for plan in acne.plan_images(n_images=8, scale=0.03, image_size=size, seed=1):
        claimed = np.zeros((size, size), dtype=int)
        for lesion in plan.lesions:  # rasterised here, independently of the generator
            dr, dc = rows - lesion.row, cols - lesion.col
            u = (dc * np.cos(lesion.angle) + dr * np.sin(lesion.angle)) / lesion.semi_major
            v = (-dc * np.sin(lesion.angle) + dr * np.cos(lesion.angle)) / lesion.semi_minor
            core = u**2 + v**2 <= 1.0
            assert core.any(), "a lesion without a single pixel"
            claimed += core
        assert claimed.max() <= 1


def test_acne_manifest_follows_the_contract(acne_set):
    _, manifest = acne_set
    assert set(manifest.columns) == SEGMENTATION_COLUMNS | {"instance_path", "grade"} | {f"n_{t}" for t in ACNE_TYPES}
    assert (manifest["grade"] == "").all()  # graded by `pipeline prepare` with the dataset's thresholds
    assert manifest["image_id"].is_unique and len(manifest) == ACNE_PARAMS["n_images"]
    assert (manifest["split"] == "").all() and (manifest["label_origin"] == "synthetic").all()
    assert (manifest.groupby("group_id").size() > 1).any(), "no patient has several images"


def test_acne_determinism_and_separate_mask_root(acne_set, tmp_path):
    root, manifest = acne_set
    images, masks = tmp_path / "images_root", tmp_path / "masks_root"
    again = build_synthetic_acne(images, ACNE_TYPES, masks, **ACNE_PARAMS)
    pd.testing.assert_frame_equal(again, manifest)
    original = _file_bytes(root)
    assert {**_file_bytes(images), **_file_bytes(masks)} == original
    assert not (images / "masks").exists() and not (masks / "images").exists()

    other = tmp_path / "other"
    build_synthetic_acne(other, ACNE_TYPES, other, **{**ACNE_PARAMS, "seed": ACNE_PARAMS["seed"] + 1})
    changed = _file_bytes(other)
    assert all(original[n] != changed[n] for n in original if n.startswith("images/"))


def test_acne_label_values_follow_the_configured_class_order(acne_set, tmp_path):
    root, manifest = acne_set
    reordered = ACNE_TYPES[::-1]
    build_synthetic_acne(tmp_path, reordered, tmp_path, **ACNE_PARAMS)
    default_to_reordered = np.array([0] + [reordered.index(t) + 1 for t in ACNE_TYPES])
    for path in manifest["mask_path"]:
        assert np.array_equal(_label_map(tmp_path, path), default_to_reordered[_label_map(root, path)])


def test_acne_other_params_raise_and_too_dense_raises(acne_set, tmp_path):
    root, _ = acne_set
    with pytest.raises(DataError, match="other parameters.*classes"):
        build_synthetic_acne(root, ACNE_TYPES[::-1], root, **ACNE_PARAMS)
    with pytest.raises(ConfigError, match="no room left"):
        build_synthetic_acne(tmp_path / "x", ACNE_TYPES, tmp_path / "x", n_images=6, scale=1.0, image_size=48)
    with pytest.raises(ConfigError, match="n_images must be an integer"):
        build_synthetic_acne(tmp_path / "x", ACNE_TYPES, tmp_path / "x", n_images=3)
    with pytest.raises(ConfigError, match="same folder or two folders outside"):
        build_synthetic_acne(tmp_path / "x", ACNE_TYPES, tmp_path / "x" / "masks", **ACNE_PARAMS)
