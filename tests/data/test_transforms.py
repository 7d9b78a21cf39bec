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


# --- the colour jitter on the device (train.augment_on_device) ---------------------------------------

def _jitter_one_by_one(batch, factors, order):
    """torchvision's public adjust_* functions, image by image, in each image's order."""
    from torchvision.transforms.v2 import functional as F

    functions = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    out = []
    for image, image_factors, image_order in zip(batch, factors, order):
        for op in image_order.tolist():
            image = functions[op](image, float(image_factors[op]))
        out.append(image)
    return torch.stack(out)


def test_batch_colour_jitter_is_torchvisions_per_image():
    from pipeline.data.transforms import BatchColourJitter, colour_jitter_batch

    batch = torch.rand(24, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    # large factors, so that every operation (and its clamp) moves the pixels
    jitter = BatchColourJitter(seed=5, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.3)
    factors, order = jitter.draw(len(batch))
    assert len({tuple(row) for row in order.tolist()}) > 5  # each image its own order ...
    assert len(set(factors[:, 3].tolist())) == len(batch)  # ... and its own factors
    assert torch.allclose(colour_jitter_batch(batch, factors, order), _jitter_one_by_one(batch, factors, order), atol=1e-5)


def test_batch_colour_jitter_draws_torchvisions_ranges_and_repeats_per_epoch():
    from pipeline.data.transforms import COLOUR_JITTER, BatchColourJitter

    jitter = BatchColourJitter(seed=1)
    jitter.set_epoch(3)
    factors, order = jitter.draw(4000)
    for column, name in enumerate(["brightness", "contrast", "saturation"]):
        width = COLOUR_JITTER[name]
        assert 1 - width <= factors[:, column].min() < 1 - 0.9 * width and 1 + 0.9 * width < factors[:, column].max() <= 1 + width
    assert -0.02 <= factors[:, 3].min() < -0.018 and 0.018 < factors[:, 3].max() <= 0.02
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(4000, 4))  # permutations
    assert (order[:, 0] == 3).float().mean().item() == pytest.approx(0.25, abs=0.03)  # each op first a quarter of the time
    jitter.set_epoch(3)
    again = jitter.draw(4000)
    jitter.set_epoch(4)
    other = jitter.draw(4000)
    assert torch.equal(again[0], factors) and torch.equal(again[1], order) and not torch.equal(other[0], factors)
    rank_1 = BatchColourJitter(seed=1, stream=1)
    rank_1.set_epoch(3)
    assert not torch.equal(rank_1.draw(4000)[0], factors)  # torchrun ranks draw apart


def test_batch_colour_jitter_refuses_a_uint8_or_grey_batch():
    from pipeline.data.transforms import BatchColourJitter

    with pytest.raises(ValueError, match="float"):
        BatchColourJitter(seed=0)(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        BatchColourJitter(seed=0)(torch.zeros(2, 1, 4, 4))


def test_training_transform_without_its_colour_jitter():
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    with_jitter = classification_transform(32, train=True, normalise=False)
    without = classification_transform(32, train=True, normalise=False, colour_jitter=False)
    assert any(type(t).__name__ == "ColorJitter" for t in with_jitter.transforms)
    assert not any(type(t).__name__ == "ColorJitter" for t in without.transforms)
    assert without(image).dtype == torch.uint8


# --- BatchAugment (train.augment_on_device: all): the whole augmentation on the batch -------------------

from torchvision.transforms.v2 import functional as TF  # noqa: E402

from pipeline.data.transforms import BatchAugment, colour_maps  # noqa: E402


def _mid_range_batch(n=6, size=12, seed=0):
    # values in [0.3, 0.7]: none of the ranges' maps reach 0 or 1, so no clamp hides a difference
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 0.4 + 0.3


@pytest.mark.parametrize("op, adjust", [(0, TF.adjust_brightness), (1, TF.adjust_contrast), (2, TF.adjust_saturation)])
def test_colour_maps_are_torchvisions_blends(op, adjust):
    batch = _mid_range_batch()
    factors = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64).repeat(len(batch), 1)
    factors[:, op] = torch.linspace(0.9, 1.1, len(batch), dtype=torch.float64)
    order = torch.tensor([[op] + [k for k in range(4) if k != op]]).repeat(len(batch), 1)
    matrix, offset = colour_maps(batch.mean(dim=(2, 3)), factors, order)
    mapped = (matrix.float() @ batch.flatten(2) + offset.float()[:, :, None]).view_as(batch)
    expected = torch.stack([adjust(image, float(f)) for image, f in zip(batch, factors[:, op])])
    torch.testing.assert_close(mapped, expected, atol=1e-5, rtol=0)


def test_the_hue_map_keeps_luma_and_grey_and_turns_the_chroma():
    batch = _mid_range_batch()
    factors = torch.tensor([[1.0, 1.0, 1.0, 0.02]], dtype=torch.float64).repeat(len(batch), 1)
    order = torch.tensor([[3, 0, 1, 2]]).repeat(len(batch), 1)
    matrix, offset = colour_maps(batch.mean(dim=(2, 3)), factors, order)
    assert torch.all(offset == 0)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    torch.testing.assert_close(luma @ matrix[0], luma)  # brightness of every pixel kept
    torch.testing.assert_close(matrix[0] @ torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))  # greys stay grey
    assert not torch.allclose(matrix[0], torch.eye(3, dtype=torch.float64))  # and colours turn
    back = colour_maps(batch.mean(dim=(2, 3)), factors * torch.tensor([1, 1, 1, -1.0], dtype=torch.float64), order)[0]
    torch.testing.assert_close(back[0] @ matrix[0], torch.eye(3, dtype=torch.float64))  # -h undoes +h


def test_colour_maps_compose_in_each_images_order():
    batch = _mid_range_batch(n=1)
    factors = torch.tensor([[1.1, 0.9, 1.05, 0.0]], dtype=torch.float64)
    order = torch.tensor([[2, 0, 1, 3]])
    matrix, offset = colour_maps(batch.mean(dim=(2, 3)), factors, order)
    mapped = (matrix.float() @ batch.flatten(2) + offset.float()[:, :, None]).view_as(batch)
    expected = TF.adjust_contrast(TF.adjust_brightness(TF.adjust_saturation(batch[0], 1.05), 1.1), 0.9)
    torch.testing.assert_close(mapped[0], expected, atol=1e-5, rtol=0)


def test_batch_augment_geometry_is_exact_for_flips_and_turns(monkeypatch):
    batch = _mid_range_batch(n=4, size=8)
    augment = BatchAugment(seed=0, jitter={"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0})
    identity, h_flip, v_flip = [[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]]
    turn = [[0.0, -1.0], [1.0, 0.0]]
    linear = torch.tensor([identity, h_flip, v_flip, turn], dtype=torch.float64)
    monkeypatch.setattr(augment, "draw_geometry", lambda n, aspect=None: torch.cat([linear, torch.zeros(n, 2, 1, dtype=torch.float64)], 2))
    out = augment(batch)
    torch.testing.assert_close(out[0], batch[0])
    torch.testing.assert_close(out[1], batch[1].flip(-1))
    torch.testing.assert_close(out[2], batch[2].flip(-2))
    assert any(torch.allclose(out[3], batch[3].rot90(k, dims=(-2, -1)), atol=1e-6) for k in (1, 3))


def test_batch_augment_draws_the_per_image_paths_ranges_and_repeats_per_epoch():
    augment = BatchAugment(seed=3)
    theta = augment.draw_geometry(4000)
    # |det| of the map = the crop's area fraction (in [0.7, 1.0], less where a side was clipped)
    area = torch.linalg.det(theta[:, :, :2]).abs()
    assert 0.69 < area.min() and area.max() <= 1.0 + 1e-9 and 0.80 < area.mean() < 0.88
    # the crop stays inside the image: centre plus half-extent within [-1, 1]
    extent = theta[:, :, :2].abs().sum(dim=2)
    assert torch.all(theta[:, :, 2].abs() + extent <= 1.0 + 1e-9)
    dets = torch.linalg.det(theta[:, :, :2])
    assert 0.4 < (dets < 0).double().mean() < 0.6  # one flip or the other (not both) half the time
    factors, order = augment.draw_colour(4000)
    assert torch.all((factors[:, :3] - 1).abs() <= torch.tensor([0.1, 0.1, 0.05], dtype=torch.float64))
    assert factors[:, 3].abs().max() <= 0.02 and factors[:, 3].abs().max() > 0.019
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(4000, 4))
    augment.set_epoch(2)
    first = augment.draw_geometry(5)
    augment.set_epoch(2)
    assert torch.equal(first, augment.draw_geometry(5))
    augment.set_epoch(3)
    assert not torch.equal(first, augment.draw_geometry(5))


def test_batch_augment_output_is_in_range_and_close_to_the_input_on_average():
    batch = torch.rand(16, 3, 32, 32)
    out = BatchAugment(seed=0)(batch)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    # small colour ranges: each image's mean colour moves little
    assert (out.mean(dim=(2, 3)) - batch.mean(dim=(2, 3))).abs().max() < 0.15


def test_batch_augment_crops_a_squashed_photo_in_its_own_proportions():
    # a 600 x 450 photo squashed to a square: the crop's area and aspect are RandomResizedCrop's in the
    # photo's pixels, not in the square's (width fraction w of 600 px, height fraction h of 450 px)
    from pipeline.data.transforms import BatchAugment

    aspect = torch.full((4000,), 600 / 450, dtype=torch.float64)
    square, photo = BatchAugment(seed=3), BatchAugment(seed=3)
    theta_square, theta_photo = square.draw_geometry(4000), photo.draw_geometry(4000, aspect)
    # the same draws: without a turn the diagonal holds the signed fractions, with one the off-diagonal
    w = (theta_photo[:, 0, 0].abs() + theta_photo[:, 0, 1].abs())
    h = (theta_photo[:, 1, 1].abs() + theta_photo[:, 1, 0].abs())
    unclipped = (w < 1) & (h < 1)
    area, ratio = (w * h)[unclipped], (w * 600 / (h * 450))[unclipped]
    assert unclipped.float().mean() > 0.1  # most near-square crops of 70-100% of a 4:3 photo exceed its height: clipped
    assert area.min() >= 0.7 - 1e-9 and area.max() <= 1.0 + 1e-9
    assert ratio.min() >= 0.9 - 1e-9 and ratio.max() <= 1.1 + 1e-9  # square in the photo, not in the square
    w_square = theta_square[:, 0, 0].abs() + theta_square[:, 0, 1].abs()
    h_square = theta_square[:, 1, 1].abs() + theta_square[:, 1, 0].abs()
    assert (w_square * h_square).min() >= 0.7 - 1e-9
    # an aspect of 1 is the square image's geometry, bit for bit
    torch.testing.assert_close(BatchAugment(seed=3).draw_geometry(64, torch.ones(64, dtype=torch.float64)),
                               BatchAugment(seed=3).draw_geometry(64), rtol=0, atol=0)


def test_whole_image_loader_geometry_squashes_the_photo_to_a_square():
    from pipeline.data.transforms import classification_transform

    photo = np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8)
    out = classification_transform(16, train=False, normalise=False, whole_image=True)(photo)
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8
