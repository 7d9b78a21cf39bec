"""Classification transforms: evaluation keeps the training geometry (crop, never stretch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.transforms import classification_transform


def disc_image(height: int = 450, width: int = 600, radius: int = 150) -> np.ndarray:
    """A white disc on black, centred: a 600x450 dermoscopy-shaped frame with a round lesion."""
    rows, cols = np.mgrid[:height, :width]
    inside = (rows - height / 2) ** 2 + (cols - width / 2) ** 2 <= radius**2
    return np.repeat(inside[..., None] * 255, 3, axis=2).astype(np.uint8)


def disc_extent(tensor: torch.Tensor) -> tuple[float, float]:
    """(height, width) in pixels of the bright region of a transformed (C, H, W) image."""
    bright = tensor.mean(0) > tensor.mean()
    return float(bright.any(1).sum()), float(bright.any(0).sum())


@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
def test_eval_transform_keeps_a_circle_round(crop_pct):
    out = classification_transform(64, train=False, crop_pct=crop_pct, mean=(0, 0, 0), std=(1, 1, 1))(disc_image())
    assert out.shape == (3, 64, 64)
    height, width = disc_extent(out)
    assert width / height == pytest.approx(1.0, abs=0.05)
    # the disc spans 300 of the 450-pixel short side; the short side is resized to floor(64 / crop_pct)
    assert height == pytest.approx(300 / 450 * int(64 / crop_pct), abs=2)


def test_a_square_resize_would_have_stretched_it():
    # what evaluation did before: Resize((s, s)) squashes the 600-pixel side 1.33x more than the other
    from torchvision.transforms import v2

    squash = v2.Compose([v2.ToImage(), v2.Resize((64, 64), antialias=True), v2.ToDtype(torch.float32, scale=True)])
    height, width = disc_extent(squash(disc_image()))
    assert height / width == pytest.approx(600 / 450, abs=0.1)


def test_training_without_augmentation_uses_the_eval_geometry():
    image = disc_image()
    plain = classification_transform(64, train=True, augment=False)(image)
    assert torch.equal(plain, classification_transform(64, train=False)(image))


def test_training_crops_are_not_stretched_either():
    torch.manual_seed(0)
    transform = classification_transform(64, train=True, mean=(0, 0, 0), std=(1, 1, 1))
    ratios = []
    for _ in range(20):
        height, width = disc_extent(transform(disc_image()))
        ratios.append(max(height, width) / min(height, width))  # 90° rotations swap the axes
    assert max(ratios) <= 1.15  # RandomResizedCrop's aspect 0.9-1.1 plus pixel rounding


def test_bad_crop_pct():
    with pytest.raises(ValueError, match="crop_pct"):
        classification_transform(64, train=False, crop_pct=1.5)
