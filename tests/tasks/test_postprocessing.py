"""Segmentation post-processing: the lesion threshold on P(lesion) and its choice on validation."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from pipeline.data.io import write_instance_map, write_png_atomic
from pipeline.errors import ConfigError
from pipeline.tasks.segmentation import SegmentationTask, lesion_label_map, lesion_mass


def test_lesion_threshold_types_by_the_most_probable_lesion_type():
    probs = np.zeros((3, 1, 3), np.float32)
    probs[:, 0, 0] = [0.45, 0.30, 0.25]  # background most probable, but P(lesion) = 0.55
    probs[:, 0, 1] = [0.80, 0.05, 0.15]
    probs[:, 0, 2] = [0.20, 0.70, 0.10]
    assert lesion_label_map(probs, lesion_threshold=None, min_lesion_area=0).tolist() == [[0, 0, 1]]
    assert lesion_label_map(probs, lesion_threshold=0.5, min_lesion_area=0).tolist() == [[1, 0, 1]]
    assert lesion_label_map(probs, lesion_threshold=0.6, min_lesion_area=0).tolist() == [[0, 0, 1]]


def _disc(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _probs_of(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Softmax-like probabilities: 0.8 on each pixel's label, the rest spread evenly."""
    probs = np.full((num_classes, *labels.shape), 0.2 / (num_classes - 1), np.float32)
    np.put_along_axis(probs, labels[None].astype(np.int64), 0.8, axis=0)
    return probs


SPLIT = {"split_touching": True, "min_peak_distance": 3, "min_neck_depth": 1.0}


def test_instance_vote_gives_a_lesion_with_a_fringe_of_another_type_one_type():
    labels = np.zeros((30, 30), np.uint8)
    papule = _disc(labels.shape, (15, 15), 7)
    labels[papule] = 3
    labels[papule & ~_disc(labels.shape, (15, 15), 6) & (np.arange(30)[None, :] > 18)] = 5  # a nodule rim, right side
    probs = _probs_of(labels, 7)
    pixel = lesion_label_map(probs, lesion_threshold=None, min_lesion_area=0)
    assert set(np.unique(pixel)) == {0, 3, 5}  # per pixel: a papule and a crescent-shaped "nodule"
    voted = lesion_label_map(probs, lesion_threshold=None, min_lesion_area=0, lesion_types="instance_vote", split=SPLIT)
    assert set(np.unique(voted)) == {0, 3}
    assert np.array_equal(voted > 0, pixel > 0)  # the vote changes types, never the lesion pixels


def test_instance_vote_keeps_touching_lesions_with_their_own_centres_and_types():
    labels = np.zeros((30, 40), np.uint8)
    labels[_disc(labels.shape, (15, 12), 6)] = 3  # a papule
    labels[_disc(labels.shape, (15, 25), 6)] = 4  # a pustule touching it (centres 13 px apart)
    assert ndimage.label(labels > 0, structure=np.ones((3, 3)))[1] == 1  # one blob of lesion pixels
    probs = _probs_of(labels, 7)
    voted = lesion_label_map(probs, lesion_threshold=None, min_lesion_area=0, lesion_types="instance_vote", split=SPLIT)
    assert voted[15, 12] == 3 and voted[15, 25] == 4
    assert np.array_equal(voted, labels)


def test_unknown_lesion_type_rule_is_a_config_error():
    with pytest.raises(ConfigError, match="lesion_types"):
        lesion_label_map(np.ones((2, 3, 3), np.float32) / 2, lesion_threshold=None, min_lesion_area=0,
                         lesion_types="majority")


class _RedIsLesion(torch.nn.Module):
    """Logits (background 0, lesion k * red channel, second type -inf-ish): P(lesion) rises with red."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, :1]
        return torch.cat([torch.zeros_like(red), 4.0 * red, torch.full_like(red, -20.0)], dim=1)


def _write_case(root: Path, name: str, rng: np.random.Generator, n_true: int = 3) -> dict:
    """A 48x48 photo: ``n_true`` true 4x4 lesions that are bright red, and four dimmer false spots."""
    image = np.zeros((48, 48, 3), np.uint8)
    image[..., 0] = 100  # normalised red about -0.3: P(lesion) ~ 0.17
    labels = np.zeros((48, 48), np.uint8)
    instances = np.zeros((48, 48), np.uint16)
    spots = rng.permutation([(r, c) for r in range(4, 44, 10) for c in range(4, 44, 10)])[:n_true + 4]
    for index, (r, c) in enumerate(spots):
        true_lesion = index < n_true
        image[r:r + 4, c:c + 4, 0] = 250 if true_lesion else 150  # P(lesion) ~ 1.0 vs ~ 0.86
        if true_lesion:
            labels[r:r + 4, c:c + 4] = 1
            instances[r:r + 4, c:c + 4] = index + 1
    from PIL import Image

    Image.fromarray(image).save(root / f"{name}.png")
    write_png_atomic(labels, root / f"{name}_mask.png")
    write_instance_map(instances, root / f"{name}_inst.png")
    return {"image_id": name, "image_path": f"{name}.png", "mask_path": f"{name}_mask.png",
            "instance_path": f"{name}_inst.png", "split": "val"}


def test_tuning_on_validation_finds_the_threshold_that_drops_false_lesions(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame([_write_case(tmp_path, f"img{i}", rng) for i in range(3)])
    cfg = {"dataset": {"classes": ["papule", "pustule"], "root": str(tmp_path), "mask_root": str(tmp_path)},
           "train": {"patch_size": 32},
           "predict": {"batch_size": 4, "overlap": 0.25, "min_lesion_area": 2, "lesion_threshold": None,
                       "tune_grid": {"lesion_threshold": [0.3, 0.5, 0.7, 0.9], "min_lesion_area": [1, 4]}},
           "evaluation": {"iou_threshold": 0.1, "split_touching": True}}
    task = SegmentationTask(cfg)
    model = _RedIsLesion()
    image = task.images(frame).images[0]
    before = task.label_map(model, image, torch.device("cpu"))  # argmax: the dim spots are lesions too
    assert (np.unique(before) == [0, 1]).all()

    tuned = task.tune_postprocessing(model, frame, torch.device("cpu"))

    by_setting = {(row["lesion_threshold"], row["min_lesion_area"]): row for row in tuned["grid"]}
    assert len(by_setting) == 8
    assert by_setting[(0.5, 1)]["precision"] < 0.5  # 3 true lesions, 4 false ones per photo
    assert tuned["lesion_threshold"] == 0.9  # the only grid value between 0.86 and 1.0
    assert tuned["val_f1"] == 1.0 and tuned["n_images"] == 3
    after = task.label_map(model, image, torch.device("cpu"))  # the tuned values are now in use
    from scipy import ndimage

    assert ndimage.label(after > 0)[1] == 3


def _tuning_cfg(root: Path, **predict) -> dict:
    return {"dataset": {"classes": ["papule", "pustule"], "root": str(root), "mask_root": str(root)},
            "train": {"patch_size": 32},
            "predict": {"batch_size": 4, "overlap": 0.25, "min_lesion_area": 2, "lesion_threshold": None,
                        "tune_postprocessing": True, **predict},
            "evaluation": {"iou_threshold": 0.1, "split_touching": True}}


def test_count_calibration_is_fitted_on_the_validation_counts_at_the_chosen_threshold(tmp_path):
    # 1, 2 and 3 true lesions and 4 false spots a photo; a grid that keeps the false spots (threshold
    # 0.5) finds 5, 6, 7: the annotated count is the found count minus 4, exactly
    rng = np.random.default_rng(1)
    frame = pd.DataFrame([_write_case(tmp_path, f"img{n}", rng, n_true=n) for n in (1, 2, 3)])
    grid = {"lesion_threshold": [0.5], "min_lesion_area": [1]}
    task = SegmentationTask(_tuning_cfg(tmp_path, tune_grid=grid, count_calibration="linear"))
    tuned = task.tune_postprocessing(_RedIsLesion(), frame, torch.device("cpu"))
    calibration = tuned["count_calibration"]
    assert calibration["method"] == "linear" and calibration["fitted_on"] == "val" and calibration["n_images"] == 3
    assert calibration["slope"] == pytest.approx(1.0) and calibration["intercept"] == pytest.approx(-4.0)
    assert calibration["val_count_mae_found"] == pytest.approx(4.0) and calibration["val_count_mae"] == pytest.approx(0.0, abs=1e-9)

    task = SegmentationTask(_tuning_cfg(tmp_path, tune_grid=grid))  # the default: grade the lesions found
    assert task.tune_postprocessing(_RedIsLesion(), frame, torch.device("cpu"))["count_calibration"] is None


def test_lesion_mass_sums_lesion_probability_at_or_above_the_threshold_small_lesions_included():
    background = np.array([[0.9, 0.4, 0.2, 0.5]], np.float32)  # P(lesion) 0.1, 0.6, 0.8, 0.5
    probs = np.stack([background, 1 - background])
    assert lesion_mass(probs, 0.5) == pytest.approx(0.6 + 0.8 + 0.5)
    assert lesion_mass(probs, 0.7) == pytest.approx(0.8)
    assert lesion_mass(probs, None) == pytest.approx(0.6 + 0.8)  # argmax: a tie stays background
    # the minimum lesion area removes these three pixels as a lesion; their mass still counts
    assert not lesion_label_map(probs, lesion_threshold=0.5, min_lesion_area=5).any()


def test_count_calibration_from_the_lesion_mass_is_fitted_on_the_validation_masses(tmp_path):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame([_write_case(tmp_path, f"img{n}", rng, n_true=n) for n in (1, 2, 3)])
    grid = {"lesion_threshold": [0.5], "min_lesion_area": [1]}
    task = SegmentationTask(_tuning_cfg(tmp_path, tune_grid=grid, count_calibration="linear", count_from="lesion_mass"))
    model = _RedIsLesion()
    masses = [lesion_mass(task.probabilities(model, image, torch.device("cpu")), 0.5) for image in task.images(frame).images]
    calibration = task.tune_postprocessing(model, frame, torch.device("cpu"))["count_calibration"]
    slope, intercept = np.polyfit(masses, [1, 2, 3], 1)
    assert calibration["count_from"] == "lesion_mass" and calibration["n_images"] == 3
    # the tuning step keeps its probabilities in float16: the same line to that precision
    assert calibration["slope"] == pytest.approx(slope, rel=1e-3) and calibration["intercept"] == pytest.approx(intercept, abs=1e-2)
    # the predict stage writes the mass it grades from beside each label map
    table = task.predict(model, frame, torch.device("cpu"), tmp_path / "run")
    assert table["lesion_mass"].tolist() == pytest.approx(masses, rel=1e-6)


def test_count_from_the_lesion_mass_without_a_calibration_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="count_from: lesion_mass is a probability mass"):
        SegmentationTask(_tuning_cfg(tmp_path, count_from="lesion_mass"))


def test_count_calibration_without_tuning_is_a_config_error(tmp_path):
    cfg = _tuning_cfg(tmp_path, count_calibration="isotonic")
    cfg["predict"]["tune_postprocessing"] = False
    with pytest.raises(ConfigError, match="count_calibration"):
        SegmentationTask(cfg)


def test_tuning_grid_spread_over_processes_counts_what_one_process_counts(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.tasks.segmentation.PARALLEL_GRID_MIN_CELLS", 1)  # 12 cells here
    rng = np.random.default_rng(2)
    frame = pd.DataFrame([_write_case(tmp_path, f"img{n}", rng, n_true=n) for n in (1, 2, 3, 4)])
    grid = {"lesion_threshold": [0.3, 0.5, 0.9], "min_lesion_area": [1, 4, 25]}
    task = SegmentationTask(_tuning_cfg(tmp_path, tune_grid=grid))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial, *_ = task.grid_counts(_RedIsLesion(), frame, torch.device("cpu"))
        torch.set_num_threads(2)  # the stage's threads: two worker processes take the photos
        spread, *_ = task.grid_counts(_RedIsLesion(), frame, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert serial.shape == (4, 3, 3, 3)
    assert serial[:, 2, 0, 0].tolist() == [1, 2, 3, 4]  # at 0.9 each photo's true lesions are matched
    assert np.array_equal(serial, spread)
