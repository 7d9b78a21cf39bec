"""The defaults that hid small lesions: an unweighted pixel term (never learns a 3-px lesion type in a
short schedule) and a 4-px post-filter (deletes the ones it does find). docs/BENCHMARKS.md, §3."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline import config as cfgmod
from pipeline.losses import build_loss
from pipeline.models import build_segmenter
from pipeline.tasks.segmentation import remove_small_lesions

REPO = Path(__file__).resolve().parents[2]
EMBEDDED = cfgmod.load_config(REPO / "configs" / "config.yaml")
DEFAULT_RUN = cfgmod.resolve_experiment(EMBEDDED, EMBEDDED["baselines"]["segmentation"], 0)  # Dice+CE


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise with one large blob (type 2, ~113 px) and three 1x3-px dots (type 1) per 32x32 image."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 0.2, (n, 3, 32, 32)).astype(np.float32)
    labels = np.zeros((n, 32, 32), np.int64)
    rows, cols = np.mgrid[:32, :32]
    for i in range(n):
        r, c = rng.integers(8, 24, 2)
        blob = (rows - r) ** 2 + (cols - c) ** 2 <= 36
        images[i, 0][blob] += 1.5
        labels[i][blob] = 2
        for _ in range(3):
            while True:
                a, b = rng.integers(1, 30, 2)
                if not blob[max(a - 2, 0):a + 4, max(b - 2, 0):b + 5].any():
                    break
            images[i, :, a, b:b + 3] += 1.5
            labels[i, a, b:b + 3] = 1
    return torch.from_numpy(images), torch.from_numpy(labels)


def _dot_recall(loss_spec: dict, min_lesion_area: int, steps: int = 30) -> float:
    """Train a tiny U-Net `steps` steps; the share of test dots with any pixel predicted as a dot."""
    images, labels = _images(16, seed=0)
    test_images, test_labels = _images(8, seed=1)
    torch.manual_seed(0)
    model = build_segmenter({"name": "Unet", "encoder": "tu-test_resnet",
                             "params": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}}, num_classes=3)
    spec = dict(loss_spec)
    counts = np.bincount(labels.numpy().ravel(), minlength=3).tolist()
    criterion = build_loss(spec.pop("name"), num_classes=3, class_counts=counts, **spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    batches = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(0, len(images), (8,), generator=batches)
        loss = criterion(model(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(test_images).argmax(1).numpy().astype(np.uint8)
    found = total = 0
    for pred, truth in zip(predicted, test_labels.numpy()):
        pred = remove_small_lesions(pred, min_lesion_area)
        dots, count = ndimage.label(truth == 1)
        total += count
        found += sum(bool((pred[dots == k] == 1).any()) for k in range(1, count + 1))
    return found / total


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_default_recipe_finds_3px_lesions_that_the_old_defaults_missed():
    loss, min_area = DEFAULT_RUN["loss"], DEFAULT_RUN["predict"]["min_lesion_area"]
    default = _dot_recall(loss, min_area)
    unweighted = _dot_recall({**loss, "weights": "none"}, min_area)
    old_filter = _dot_recall(loss, 4)
    assert default >= 0.8
    assert unweighted <= 0.5  # same steps, pixel term unweighted: the dots are not learned yet
    assert old_filter <= default - 0.3  # found, then deleted by a 4-px post-filter


def test_the_default_post_filter_keeps_a_2px_lesion_and_drops_a_lone_pixel():
    labels = np.zeros((8, 8), np.uint8)
    labels[1, 1:3] = 1  # a 2-px whitehead
    labels[6, 6] = 1  # speckle
    kept = remove_small_lesions(labels, DEFAULT_RUN["predict"]["min_lesion_area"])
    assert kept[1, 1:3].tolist() == [1, 1] and kept[6, 6] == 0


def test_every_embedded_segmentation_experiment_weights_its_pixel_term():
    config = EMBEDDED
    segmentation = [e for e, spec in config["experiments"].items()
                    if config["datasets"][spec["dataset"]]["task"] == "segmentation"]
    assert segmentation
    for experiment in segmentation:
        run = cfgmod.resolve_experiment(config, experiment, 0)
        assert run["loss"].get("weights") not in (None, "none"), experiment
        assert run["predict"]["min_lesion_area"] <= 2, experiment
