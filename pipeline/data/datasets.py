"""torch Datasets over a manifest. Image decoding errors name the file (pipeline.data.io)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from pipeline.data.cache import DecodedImages
from pipeline.data.io import read_label_map, read_rgb
from pipeline.data.manifest import resolve
from pipeline.data.transforms import normalise_image, segmentation_augment
from pipeline.errors import ConfigError


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The random state of one training item: a function of (run seed, epoch, item) only."""
    return (seed * 1_000_003 + epoch * 100_003 + index) % (2**32)


class EpochCounter:
    """The epoch, in shared memory: ``set_epoch`` in the main process reaches DataLoader workers,
    persistent ones included (a plain attribute would stay at the value the workers were started
    with, so every epoch would repeat the first one's random draws)."""

    def __init__(self) -> None:
        self._value = torch.zeros((), dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self._value.fill_(int(epoch))

    def get(self) -> int:
        return int(self._value)


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed the global RNGs that transforms draw from (torch CPU, ``random``, numpy) for one item,
    and restore them afterwards, so the caller's random stream is untouched."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed also queues a lazy CUDA seeding that records the
        # call stack, a millisecond an item (docs/BENCHMARKS.md §7); CPU transforms draw from this one
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class ClassificationDataset(Dataset):
    """(image tensor, class index) per manifest row.

    With a ``seed`` (training), each item's random augmentation is drawn from a state fixed by
    (seed, epoch, item): the same whatever the number of loader workers, and the same in a resumed
    run as in an uninterrupted one. Without one (evaluation), transforms draw as they are.
    """

    def __init__(self, frame: pd.DataFrame, root: Path, classes: list[str], transform, seed: int | None = None,
                 cache_dir: str | Path | None = None, with_aspect: bool = False) -> None:
        self.frame = frame.reset_index(drop=True)
        self.with_aspect = with_aspect  # items ((image, width / height of the photo), class): BatchAugment's input
        self.root = Path(root)
        self.paths = [resolve(p, self.root) for p in self.frame["image_path"]]
        # decoded once into a memory-mapped file (pipeline.data.cache), or decoded per item
        self.decoded = DecodedImages(self.paths, cache_dir) if cache_dir else None
        self.transform = transform
        self.seed = seed
        self.epoch = EpochCounter()
        index = {c: i for i, c in enumerate(classes)}
        self.targets = [index[label] for label in self.frame["label"]]

    def set_epoch(self, epoch: int) -> None:
        self.epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.frame)

    def image_id(self, i: int) -> str:
        """The manifest's image_id of item i (named by training errors)."""
        return str(self.frame["image_id"].iat[i])

    def __getitem__(self, i: int):
        image = self.decoded[i] if self.decoded is not None else read_rgb(self.paths[i])
        if self.seed is None:
            pixels = self.transform(image)
        else:
            with seeded_global_rngs(item_seed(self.seed, self.epoch.get(), i)):
                pixels = self.transform(image)
        if self.with_aspect:
            return (pixels, image.shape[1] / image.shape[0]), self.targets[i]
        return pixels, self.targets[i]


class SegmentationImages:
    """Decoded images and label maps of a manifest, read once and kept in memory (small data sets;
    patch sampling revisits every image many times per epoch)."""

    def __init__(self, frame: pd.DataFrame, root: Path, mask_root: Path, num_types: int) -> None:
        from pipeline.data.io import check_mask

        self.frame = frame.reset_index(drop=True)
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        for row in self.frame.itertuples():
            image_path = resolve(row.image_path, root)
            mask_path = resolve(row.mask_path, mask_root)
            image, mask = read_rgb(image_path), read_label_map(mask_path)
            check_mask(mask, image.shape[:2], num_types, mask_path)
            self.images.append(image)
            self.masks.append(mask)

    def __len__(self) -> int:
        return len(self.images)


PATCH_BALANCE = ("none", "images")


def patch_ratios(spec: dict, types: list[str], masks: list[np.ndarray] | None = None) -> list[float] | None:
    """Per-class patch-centre ratios (background first) for MONAI RandCropByLabelClasses, or None for uniform crops.

    The segmentation counterpart of the classification oversampling coefficients: a type with ratio r
    is r times as likely as a ratio-1 class to be the centre of a training patch.

    ``balance: images`` multiplies each lesion type's ratio by max_s n_s / n_t, n_t the number of
    training label maps (``masks``) that hold type t. Why: RandCropByLabelClasses picks a patch's centre
    class among the classes present in the image drawn, so at equal ratios a type found in 44 of 562
    images is the centre of about a tenth as many patches as one found in 448, however the pixel terms
    are weighted (nnU-Net's foreground oversampling, Isensee et al., Nature Methods 2021, draws its
    centre class the same way: uniformly among the classes of the case). With the correction every
    type is the centre of about as many patches per epoch (exactly so when the images hold equally
    many types). A type in no training image keeps its ratio (it can never be drawn).
    """
    name = spec.get("name", "none")
    if name == "none":
        return None
    if name != "lesion_patches":
        raise ConfigError(f"unknown segmentation sampler {name!r}; use 'none' or 'lesion_patches'")
    unknown_keys = set(spec) - {"name", "ratios", "balance"}
    if unknown_keys:
        raise ConfigError(f"lesion_patches sampler: unknown key(s) {sorted(unknown_keys)}; known: name, ratios, balance")
    ratios = dict(spec.get("ratios") or {})
    unknown = set(ratios) - set(types) - {"background"}
    if unknown:
        raise ConfigError(f"sampler ratios name unknown lesion type(s) {sorted(unknown)}; types are {types}")
    values = [float(ratios.get("background", 1.0))] + [float(ratios.get(t, 1.0)) for t in types]
    if any(v < 0 for v in values) or sum(values) == 0:
        raise ConfigError(f"sampler ratios must be non-negative and not all zero, got {values}")
    balance = spec.get("balance", "none")
    if balance not in PATCH_BALANCE:
        raise ConfigError(f"lesion_patches sampler: balance must be one of {list(PATCH_BALANCE)}, got {balance!r}")
    if balance == "images":
        if masks is None:
            raise ValueError("patch_ratios: balance 'images' needs the training label maps")
        holding = images_holding_types(masks, len(types))
        most = holding.max()
        values = [values[0]] + [float(v * most / n) if n > 0 else v for v, n in zip(values[1:], holding)]
    return values


def images_holding_types(masks: list[np.ndarray], n_types: int) -> np.ndarray:
    """How many label maps hold each lesion type (labels 1..n_types; 0 is background)."""
    # the same per-mask bincount as the training pixel counts (SegmentationTask.class_counts); labels
    # above n_types (an ignore index) fall outside the slice
    holding = np.zeros(n_types, dtype=np.int64)
    for mask in masks:
        holding += np.bincount(mask.ravel(), minlength=n_types + 1)[1:n_types + 1] > 0
    return holding


class PatchDataset(Dataset):
    """Random training patches: each epoch draws `patches_per_image` patches from every image.

    With a `lesion_patches` sampler, patch centres are drawn by class with MONAI's
    RandCropByLabelClassesd, so rare lesion types are seen often; otherwise crops are uniform.
    """

    def __init__(self, images: SegmentationImages, *, patch_size: int, patches_per_image: int,
                 ratios: list[float] | None, num_classes: int, augment: bool, seed: int) -> None:
        from monai.transforms import ClassesToIndices, Compose, RandCropByLabelClassesd, RandSpatialCropd, SpatialPadd

        self.images = images
        self.patches_per_image = patches_per_image
        self.augment = augment
        self.seed = seed
        self.epoch = EpochCounter()
        size = (patch_size, patch_size)
        # Crops are taken from uint8 images and normalised afterwards: normalising a whole photo per
        # patch would cost more than the crop. Label maps are padded so every crop fits.
        pad = SpatialPadd(keys=["image", "label"], spatial_size=size, mode="constant")
        self.items = [pad({"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                           "label": torch.from_numpy(mask[None].astype(np.int64))})
                      for image, mask in zip(images.images, images.masks)]
        if ratios is None:
            crop = RandSpatialCropd(keys=["image", "label"], roi_size=size, random_size=False)
        else:
            # Per-class pixel indices are computed once per image, not for every patch drawn.
            to_indices = ClassesToIndices(num_classes=num_classes)
            for item in self.items:
                item["class_indices"] = to_indices(item["label"])
            crop = RandCropByLabelClassesd(keys=["image", "label"], label_key="label", spatial_size=size,
                                           ratios=ratios, num_classes=num_classes, num_samples=1,
                                           indices_key="class_indices", warn=False)
        self.transform = Compose([crop])

    def set_epoch(self, epoch: int) -> None:
        self.epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.images) * self.patches_per_image

    def image_id(self, i: int) -> str:
        """The manifest's image_id of the image patch i is cut from (named by training errors)."""
        return str(self.images.frame["image_id"].iat[i // self.patches_per_image])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # One deterministic random state per (seed, epoch, item): resumable and worker-independent.
        seed = item_seed(self.seed, self.epoch.get(), i)
        self.transform.set_random_state(seed=seed)
        out = self.transform(dict(self.items[i // self.patches_per_image]))
        out = out[0] if isinstance(out, list) else out
        patch = normalise_image(torch.as_tensor(out["image"]).permute(1, 2, 0).numpy())
        mask = torch.as_tensor(out["label"])[0].long()
        if self.augment:
            generator = torch.Generator().manual_seed(seed)
            patch, mask = segmentation_augment(patch, mask, generator)
        return patch.contiguous(), mask.contiguous()
