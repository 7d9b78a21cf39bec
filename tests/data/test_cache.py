"""The decode-once cache: the same pixels as decoding each time, a new cache when the images
change, safe under two builders at once, one decode per image however often it is drawn, and
training bit-identical with and without it."""

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import training
from pipeline.data import cache as cache_module
from pipeline.data.cache import DecodedImages, build, content_key
from pipeline.data.io import read_rgb
from pipeline.sampling import build_sampler
from tests.helpers import tiny_classification_run


def _images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (size, mode) in enumerate([((20, 12), "RGB"), ((9, 31), "L"), ((16, 16), "RGBA")]):
        pixels = rng.integers(0, 255, (*size, {"RGB": 3, "L": 1, "RGBA": 4}[mode]), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(), mode).save(folder / f"img{i}.png")
        paths.append(folder / f"img{i}.png")
    return paths


def test_the_cache_holds_exactly_what_decoding_gives(tmp_path):
    paths = _images(tmp_path / "images")
    decoded = DecodedImages(paths, tmp_path / "cache")
    assert len(decoded) == 3
    for i, path in enumerate(paths):
        image = decoded[i]
        assert image.dtype == np.uint8 and image.flags.writeable
        assert np.array_equal(image, read_rgb(path))
    assert decoded.nbytes == sum(read_rgb(p).size for p in paths)


def test_changed_added_or_reordered_images_make_a_new_cache(tmp_path):
    paths = _images(tmp_path / "images")
    first = DecodedImages(paths, tmp_path / "cache").folder
    assert DecodedImages(paths, tmp_path / "cache").folder == first  # reused
    assert content_key(paths[::-1]) != content_key(paths)
    assert content_key(paths[:2]) != content_key(paths)
    Image.fromarray(np.zeros((20, 12, 3), np.uint8)).save(paths[0])  # same name, new pixels
    changed = DecodedImages(paths, tmp_path / "cache")
    assert changed.folder != first and np.array_equal(changed[0], np.zeros((20, 12, 3), np.uint8))


def _build(paths, folder):
    build(paths, folder)


def test_two_builders_at_once_leave_one_complete_cache(tmp_path):
    paths = _images(tmp_path / "images")
    folder = tmp_path / "cache" / f"decoded-{content_key(paths)}"
    context = multiprocessing.get_context("fork")
    builders = [context.Process(target=_build, args=(paths, folder)) for _ in range(2)]
    for p in builders:
        p.start()
    for p in builders:
        p.join()
    assert [p.exitcode for p in builders] == [0, 0]
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == [folder.name]  # no temporary left
    decoded = DecodedImages(paths, tmp_path / "cache")
    assert all(np.array_equal(decoded[i], read_rgb(p)) for i, p in enumerate(paths))


def test_a_corrupt_image_stops_the_build_with_its_name_and_leaves_no_cache(tmp_path):
    from pipeline.errors import DataError

    paths = _images(tmp_path / "images")
    paths[1].write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="img1.png"):
        DecodedImages(paths, tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())


def test_an_oversampled_epoch_decodes_each_image_once(tmp_path, monkeypatch):
    run = tiny_classification_run(tmp_path)
    calls = []
    original = cache_module.read_rgb
    monkeypatch.setattr(cache_module, "read_rgb", lambda path: calls.append(Path(path).name) or original(path))
    monkeypatch.setattr("pipeline.data.datasets.read_rgb", lambda path: pytest.fail("decoded outside the cache"))
    trainer = training.setup(run, threads=1)
    dataset = trainer.dataset
    sampler = build_sampler({"name": "oversample", "coefficients": {"A": 4, "B": 1, "C": 1}}, dataset.targets,
                            ["A", "B", "C"], seed=0)
    order = [int(i) for i in sampler]
    assert max(order.count(i) for i in set(order)) > 1  # oversampled images are drawn several times
    for _ in range(2):  # two epochs
        for i in order:
            dataset[i]
    assert sorted(calls) == sorted(Path(p).name for p in dataset.paths)


@pytest.mark.parametrize("workers", [0, 2])
def test_training_is_bit_identical_with_and_without_the_cache(tmp_path, workers):
    with_cache = training.train(tiny_classification_run(tmp_path / "a", num_workers=workers), threads=1)
    without = training.train(tiny_classification_run(tmp_path / "b", num_workers=workers, decode_cache=None), threads=1)
    assert with_cache["fingerprint"] != "" and with_cache["steps"] == without["steps"]
    assert list((tmp_path / "a" / "cache").iterdir()) and not (tmp_path / "b" / "cache").exists()
    a = torch.load(tmp_path / "a/results/tiny_ce/seed0/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b/results/tiny_ce/seed0/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
