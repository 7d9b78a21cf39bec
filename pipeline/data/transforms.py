"""Image transforms (torchvision v2 for classification, MONAI dictionary transforms for segmentation)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from pipeline.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def classification_transform(image_size: int, *, train: bool, augment: bool | str = True, crop_pct: float = 1.0,
                             mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                             normalise: bool = True) -> v2.Compose:
    """uint8 HWC numpy -> normalised float CHW tensor, ``image_size`` square (``normalise=False``:
    the uint8 CHW tensor before normalisation, for :func:`normalise_batch` on the device).

    ``augment`` (training only): True = RandomResizedCrop of 70-100% of the area at aspect 0.9-1.1
    (the image is cropped, never stretched), flips, 90° rotations and colour jitter; ``"flips"`` =
    flips and 90° rotations of the evaluation geometry's image only (nothing crops further,
    rescales or recolours: for small lesion crops, docs/BENCHMARKS.md section 6); False = none.
    Dermoscopy has no canonical orientation, so flips and 90° rotations are label-preserving;
    colour jitter is kept small because colour is diagnostic (e.g. blue-grey veil in melanoma).

    Evaluation (and training without the full augmentation): timm's eval geometry: resize the
    **shorter** side to floor(image_size / crop_pct), keeping the aspect, then centre-crop
    image_size. A 600x450 dermoscopy image is cropped at its long side as in training, not squashed
    1.33x by a resize to a square. ``crop_pct`` (``train.crop_pct``, default 1.0) matches the scale
    of the training crops: sqrt(crop area) / shorter side averages 1.00 for 600x450 images (draws
    larger than the short side are rejected; the fallback is the whole short side at aspect 1.1)
    and 0.91 for square ones (20,000 draws of torchvision's RandomResizedCrop.get_params).
    """
    if not (isinstance(augment, bool) or augment == "flips"):
        raise ConfigError(f"train.augment must be true, false or 'flips', got {augment!r}")
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must lie in (0, 1], got {crop_pct!r}")
    steps: list = [v2.ToImage()]
    if train and augment is True:
        steps += [
            v2.RandomResizedCrop(image_size, scale=(0.7, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomApply([v2.RandomRotation(degrees=(90, 90))], p=0.5),
            v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.05, hue=0.02),
        ]
    else:
        steps += [v2.Resize(math.floor(image_size / crop_pct), antialias=True), v2.CenterCrop(image_size)]
        if train and augment == "flips":
            steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
                      v2.RandomApply([v2.RandomRotation(degrees=(90, 90))], p=0.5)]
    if normalise:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)


def normalise_batch(batch: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float32, by the same two functions as the per-image path of
    :func:`classification_transform` (so the same numbers). On a GPU the loader then moves uint8
    batches, a quarter of the float32 bytes through worker queues, pinned memory and the bus, and
    the arithmetic runs on the device (what timm's PrefetchLoader does)."""
    batch = v2.functional.to_dtype(batch, torch.float32, scale=True)
    return v2.functional.normalize(batch, mean=list(mean), std=list(std))


def normalise_image(image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 HWC numpy -> float CHW tensor, same normalisation as classification_transform."""
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
    return v2.functional.normalize(tensor, mean=list(mean), std=list(std))


def segmentation_augment(patch: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint flips / 90° rotations of an image patch (C,H,W) and its label map (H,W)."""
    if torch.rand(1, generator=generator).item() < 0.5:
        patch, mask = patch.flip(-1), mask.flip(-1)
    if torch.rand(1, generator=generator).item() < 0.5:
        patch, mask = patch.flip(-2), mask.flip(-2)
    k = int(torch.randint(0, 4, (1,), generator=generator).item())
    if k:
        patch, mask = torch.rot90(patch, k, dims=(-2, -1)), torch.rot90(mask, k, dims=(-2, -1))
    return patch, mask
