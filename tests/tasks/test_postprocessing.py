"""Segmentation post-processing: the lesion threshold on P(lesion) and its choice on validation."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.data.io import write_instance_map, write_png_atomic
from pipeline.tasks.segmentation import SegmentationTask, lesion_label_map


def test_lesion_threshold_types_by_the_most_probable_lesion_type():
    probs = np.zeros((3, 1, 3), np.float32)
    probs[:, 0, 0] = [0.45, 0.30, 0.25]  # background most probable, but P(lesion) = 0.55
    probs[:, 0, 1] = [0.80, 0.05, 0.15]
    probs[:, 0, 2] = [0.20, 0.70, 0.10]
    assert lesion_label_map(probs, lesion_threshold=None, min_lesion_area=0).tolist() == [[0, 0, 1]]
    assert lesion_label_map(probs, lesion_threshold=0.5, min_lesion_area=0).tolist() == [[1, 0, 1]]
    assert lesion_label_map(probs, lesion_threshold=0.6, min_lesion_area=0).tolist() == [[0, 0, 1]]


class _RedIsLesion(torch.nn.Module):
    """Logits (background 0, lesion k * red channel, second type -inf-ish): P(lesion) rises with red."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, :1]
        return torch.cat([torch.zeros_like(red), 4.0 * red, torch.full_like(red, -20.0)], dim=1)


def _write_case(root: Path, name: str, rng: np.random.Generator) -> dict:
    """A 48x48 photo: three true 4x4 lesions that are bright red, and four dimmer false spots."""
    image = np.zeros((48, 48, 3), np.uint8)
    image[..., 0] = 100  # normalised red about -0.3: P(lesion) ~ 0.17
    labels = np.zeros((48, 48), np.uint8)
    instances = np.zeros((48, 48), np.uint16)
    spots = rng.permutation([(r, c) for r in range(4, 44, 10) for c in range(4, 44, 10)])[:7]
    for index, (r, c) in enumerate(spots):
        true_lesion = index < 3
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
