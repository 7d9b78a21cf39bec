"""Training datasets draw each item's augmentation from (seed, epoch, item): loader workers, persistent
or not, and resumed runs see the same draws as one process running straight through."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import transforms

from pipeline.data.datasets import ClassificationDataset, seeded_global_rngs
from tests.helpers import make_colour_dataset

CLASSES = ["A", "B", "C"]


def _dataset(tmp_path: Path, seed: int | None = 0) -> ClassificationDataset:
    frame = make_colour_dataset(tmp_path / "data", per_class=2)
    # a transform that draws from both the torch and the python global RNG
    transform = transforms.Compose([transforms.ToTensor(), transforms.RandomCrop(8),
                                    transforms.Lambda(lambda x: x + torch.rand(1))])
    return ClassificationDataset(frame, tmp_path / "data", CLASSES, transform, seed=seed)


def _epochs(dataset: ClassificationDataset, num_workers: int, epochs=(0, 1)) -> list[torch.Tensor]:
    loader = DataLoader(dataset, batch_size=3, shuffle=False, num_workers=num_workers,
                        persistent_workers=num_workers > 0)
    out = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        out.append(torch.cat([images for images, _ in loader]))
    return out


def test_persistent_workers_see_each_epoch_and_draw_what_one_process_draws(tmp_path):
    dataset = _dataset(tmp_path)
    single = _epochs(dataset, num_workers=0)
    workers = _epochs(dataset, num_workers=2)
    assert not torch.equal(single[0], single[1])  # a new epoch, new augmentation
    for a, b in zip(single, workers):
        assert torch.equal(a, b)


def test_a_resumed_run_draws_the_epoch_it_missed(tmp_path):
    straight = _epochs(_dataset(tmp_path), num_workers=0, epochs=(0, 1, 2))
    resumed = _epochs(_dataset(tmp_path), num_workers=2, epochs=(2,))  # a fresh process starting at epoch 2
    assert torch.equal(straight[2], resumed[0])


def test_item_seeding_leaves_the_callers_random_streams_alone(tmp_path):
    torch.manual_seed(5)
    np.random.seed(5)
    expected = (torch.rand(3), np.random.rand(3))
    torch.manual_seed(5)
    np.random.seed(5)
    with seeded_global_rngs(123):
        torch.rand(10)
        np.random.rand(10)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    dataset = _dataset(tmp_path, seed=None)  # evaluation: no per-item seeding
    assert dataset[0][0].shape == (3, 8, 8)


def test_a_patch_names_the_image_it_is_cut_from():
    # patch i of an epoch is cut from image i // patches_per_image: training errors name that image
    from types import SimpleNamespace

    from pipeline.data.datasets import PatchDataset

    dataset = object.__new__(PatchDataset)  # only the bookkeeping: no images decoded
    dataset.images = SimpleNamespace(frame=pd.DataFrame({"image_id": ["face_a", "face_b"]}))
    dataset.patches_per_image = 3
    assert [dataset.image_id(i) for i in range(6)] == ["face_a"] * 3 + ["face_b"] * 3


def _square_masks(holding: list[tuple[int, ...]], size: int = 64) -> list[np.ndarray]:
    """One label map per entry, holding a 3x3 square of each listed type, far apart."""
    corners = {1: (8, 8), 2: (50, 50), 3: (8, 50)}
    masks = []
    for types in holding:
        mask = np.zeros((size, size), dtype=np.uint8)
        for t in types:
            r, c = corners[t]
            mask[r:r + 3, c:c + 3] = t
        masks.append(mask)
    return masks


def test_balance_images_scales_each_type_by_the_images_that_hold_it():
    from pipeline.data.datasets import images_holding_types, patch_ratios
    from pipeline.errors import ConfigError

    masks = _square_masks([(1,)] * 6 + [(1, 2)] * 2 + [()])  # type 1 in 8 images, type 2 in 2, type 3 in none
    assert images_holding_types(masks, 3).tolist() == [8, 2, 0]
    types = ["comedone", "nodule", "cyst"]
    plain = {"name": "lesion_patches", "ratios": {"background": 1, "comedone": 2}}
    assert patch_ratios(plain, types, masks) == [1.0, 2.0, 1.0, 1.0]
    # max n / n_t times the configured ratio; a type in no image keeps its ratio; background untouched
    assert patch_ratios({**plain, "balance": "images"}, types, masks) == [1.0, 2.0, 4.0, 1.0]
    with pytest.raises(ConfigError, match="balance must be one of"):
        patch_ratios({**plain, "balance": "pixels"}, types, masks)
    with pytest.raises(ConfigError, match="unknown key"):
        patch_ratios({**plain, "start": 0.5}, types, masks)


def test_balanced_patches_centre_the_rare_type_as_often_as_the_common_one():
    # type 1 in 8 images, type 2 in 1: at equal ratios type 2 is in about 1 / 3 of that one image's
    # patches (background, type 1, type 2 drawn alike); balanced (ratio 9) in about 9 / 11 of them
    from pipeline.data.datasets import PatchDataset, patch_ratios

    class Images:
        def __init__(self, masks):
            self.masks = masks
            self.images = [np.full(m.shape + (3,), 128, dtype=np.uint8) for m in masks]

        def __len__(self):
            return len(self.masks)

    masks = _square_masks([(1,)] * 8 + [(1, 2)])
    images = Images(masks)
    ppi = 60
    with_type_2 = {}
    for balance in ("none", "images"):
        ratios = patch_ratios({"name": "lesion_patches", "balance": balance}, ["a", "b"], masks)
        dataset = PatchDataset(images, patch_size=8, patches_per_image=ppi, ratios=ratios, num_classes=3,
                               augment=False, seed=0)
        patches = [dataset[i][1] for i in range(8 * ppi, 9 * ppi)]  # the patches of the image holding type 2
        with_type_2[balance] = sum(int((mask == 2).any()) for mask in patches)
    assert with_type_2["none"] < 0.5 * ppi
    assert with_type_2["images"] > 0.7 * ppi


def test_with_aspect_items_carry_each_photos_width_over_height(tmp_path):
    # augment_on_device: all: the loader squashes whole photos to a square and BatchAugment needs their aspect
    from PIL import Image

    from pipeline.data.transforms import classification_transform

    (tmp_path / "img").mkdir()
    rows = []
    for i, (width, height) in enumerate([(60, 45), (30, 40), (32, 32)]):
        Image.fromarray(np.full((height, width, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"image_id": f"i{i}", "image_path": f"img/{i}.png", "label": CLASSES[i]})
    transform = classification_transform(16, train=False, normalise=False, whole_image=True)
    dataset = ClassificationDataset(pd.DataFrame(rows), tmp_path, CLASSES, transform, seed=0, with_aspect=True)
    (pixels, aspect), targets = next(iter(DataLoader(dataset, batch_size=3)))
    assert pixels.shape == (3, 3, 16, 16) and pixels.dtype == torch.uint8
    assert aspect.tolist() == pytest.approx([60 / 45, 30 / 40, 1.0]) and targets.tolist() == [0, 1, 2]
