"""Training datasets draw each item's augmentation from (seed, epoch, item): loader workers, persistent
or not, and resumed runs see the same draws as one process running straight through."""

from pathlib import Path

import numpy as np
import pandas as pd
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
