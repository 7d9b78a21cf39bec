"""Classification transforms (pipeline.data.transforms): the training augmentation levels (train.augment)."""

import numpy as np
import pytest
import torch

from pipeline.data.transforms import classification_transform
from pipeline.errors import ConfigError


def _image(size: int = 12) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_flips_only_permute_the_pixels_of_the_evaluation_image():
    image = _image()
    reference = classification_transform(12, train=False)(image)
    flips = classification_transform(12, train=True, augment="flips")
    torch.manual_seed(0)
    outputs = [flips(image) for _ in range(16)]
    for out in outputs:
        assert out.shape == reference.shape
        # a flip or 90-degree rotation moves pixels, never changes or resamples them
        assert torch.equal(out.flatten(1).sort(dim=1).values, reference.flatten(1).sort(dim=1).values)
    assert any(not torch.equal(out, reference) for out in outputs)  # and it does move them


def test_full_augmentation_resamples_and_none_is_the_evaluation_transform():
    image = _image()
    reference = classification_transform(12, train=False)(image)
    torch.manual_seed(0)
    full = classification_transform(12, train=True, augment=True)(image)
    assert full.shape == reference.shape
    assert not torch.equal(full.flatten(1).sort(dim=1).values, reference.flatten(1).sort(dim=1).values)
    assert torch.equal(classification_transform(12, train=True, augment=False)(image), reference)


@pytest.mark.parametrize("augment", ["yes", 1, None])
def test_an_unknown_level_names_the_key(augment):
    with pytest.raises(ConfigError, match="train.augment must be true, false or 'flips'"):
        classification_transform(12, train=True, augment=augment)
