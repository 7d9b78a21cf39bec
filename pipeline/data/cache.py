"""Decode once: every image of a training set decoded a single time into a memory-mapped file.

Each epoch otherwise decodes every image again (and an oversampled image once per copy). With
``train.decode_cache`` (a folder; default ``data/cache``) the classification training set is
decoded once, by ``read_rgb`` (the very function the direct path calls, so the arrays are the
same bytes and results are bit-identical with and without the cache), into

    <decode_cache>/decoded-<key>/pixels.u8   every image's H x W x 3 uint8 pixels, one after another
    <decode_cache>/decoded-<key>/index.npy   per image: byte offset, height, width

The key is a SHA-256 of the images' contents in manifest order (plus a format version), so a
changed, added, removed or reordered image makes a new cache, and the same images under another
experiment, seed or loss reuse it. Building happens in a private temporary folder renamed into
place when complete (an atomic rename): two jobs building the same cache at once both finish,
one rename wins, and no reader ever sees a half-written cache. Readers open the file read-only
through ``numpy.memmap`` (the operating system's page cache shares it between loader workers and
between jobs). Full-resolution pixels are kept (no resize), so random crops see the detail they
would see without the cache; a 10,000-image ISIC set at 600 x 450 needs about 8 GB of disk.
Like MONAI's ``PersistentDataset``, but storing decoded pixels before any random transform.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.data.io import read_rgb
from pipeline.progress import progress

log = logging.getLogger("pipeline.data.cache")
FORMAT = "decoded-rgb-uint8-v1"


def content_key(paths: Sequence[Path]) -> str:
    """SHA-256 of the files' contents in order (and the cache format): the cache's name."""
    digest = hashlib.sha256(FORMAT.encode())
    for path in paths:
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:24]


def build(paths: Sequence[Path], folder: Path) -> None:
    """Decode ``paths`` into ``folder`` (pixels.u8 + index.npy), atomically: written in a sibling
    temporary folder and renamed; if another builder got there first, its cache is kept."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        index = np.zeros((len(paths), 3), dtype=np.int64)
        offset = 0
        with open(tmp / "pixels.u8", "wb") as pixels:
            for i, path in enumerate(progress(paths, "decoding into the cache", unit="image")):
                image = read_rgb(path)  # a bad image stops here with its name, before anything is kept
                pixels.write(np.ascontiguousarray(image).tobytes())
                index[i] = (offset, image.shape[0], image.shape[1])
                offset += image.size
        np.save(tmp / "index.npy", index)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "index.npy").is_file():
                raise
            log.info("another job finished %s first; using it", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class DecodedImages:
    """Read-only view of a decode cache: ``images[i]`` is image i as a writable (H, W, 3) uint8
    array, equal to ``read_rgb(paths[i])``. Built on first use when missing. The memory map is
    opened lazily in each process, so the object pickles cheaply into DataLoader workers."""

    def __init__(self, paths: Sequence[Path], cache_dir: str | Path) -> None:
        paths = [Path(p) for p in paths]
        self.folder = Path(cache_dir) / f"decoded-{content_key(paths)}"
        if not (self.folder / "index.npy").is_file():
            log.info("decoding %d images once into %s", len(paths), self.folder)
            build(paths, self.folder)
        self.index = np.load(self.folder / "index.npy")
        if len(self.index) != len(paths):
            raise RuntimeError(f"{self.folder}: holds {len(self.index)} images, the manifest {len(paths)}; delete the folder")
        self._pixels: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / "pixels.u8", dtype=np.uint8, mode="r")
        offset, height, width = (int(v) for v in self.index[i])
        return np.array(self._pixels[offset:offset + height * width * 3].reshape(height, width, 3))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}

    @property
    def nbytes(self) -> int:
        return int((self.folder / "pixels.u8").stat().st_size)
