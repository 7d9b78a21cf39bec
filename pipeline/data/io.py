"""Image and label-map IO with errors that name the file.

Label maps follow docs/ARCHITECTURE.md: a single-channel uint8 PNG, 0 = background and
``i + 1`` = lesion type ``i`` of the dataset's class list.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.atomic import atomic_path
from pipeline.errors import DataError

# Modes whose pixels are already label values (P: palette indices, as in VOC-style masks).
_INDEX_MODES = {"1", "L", "P", "I", "I;16", "I;16B", "I;16L"}


def _open_image(path: Path) -> Image.Image:
    """Open and fully decode ``path``; a missing or undecodable file is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image {path}: {err}") from err


def read_image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` from the file header only (cheap: no pixel decoding)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot decode image {path}: {err}") from err
    # the size read_rgb returns: an image stored sideways is turned upright there
    return (width, height) if orientation in _ROTATED_ORIENTATIONS else (height, width)


_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I"}
_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image as an ``(H, W, 3)`` uint8 RGB array, upright: the EXIF orientation of a
    camera photo is applied (as a viewer shows it), grey is replicated, alpha dropped, CMYK and
    palette converted, and 16-bit grey scaled to 8 bits (PIL's own conversion clips at 255)."""
    path = Path(path)
    image = _open_image(path)
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode in _SIXTEEN_BIT_MODES:
            values = np.asarray(image).astype(np.float64)
            grey = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)  # 65535 -> 255
            return np.repeat(grey[..., None], 3, axis=2)
        rgb = image.convert("RGB")
    except (OSError, ValueError) as err:
        raise DataError(f"cannot convert image {path} to RGB: {err}") from err
    return np.array(rgb, dtype=np.uint8)  # a writable copy: torch refuses read-only buffers


def read_label_map(path: str | Path) -> np.ndarray:
    """Read a label map as an ``(H, W)`` uint8 array of raw label values.

    Grey and palette PNGs give their stored values; an RGB file is accepted only when its three
    channels are equal (a grey mask saved as RGB); values above 255 are a DataError.
    """
    path = Path(path)
    image = _open_image(path)
    if image.mode in _INDEX_MODES:
        values = np.asarray(image)
    elif image.mode in {"LA", "RGB", "RGBA"}:
        channels = np.asarray(image.convert("RGB"))
        if not (np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(channels[..., 0], channels[..., 2])):
            raise DataError(f"mask {path} is a colour image (mode {image.mode}); a label map needs one channel of label values")
        values = channels[..., 0]
    else:
        raise DataError(f"mask {path} has pixel mode {image.mode!r}; a label map needs integer label values")
    if values.size and int(values.max()) > 255:
        raise DataError(f"mask {path} has label value {int(values.max())} > 255; label maps are uint8")
    return values.astype(np.uint8)


def write_png_atomic(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 ``(H, W)`` or ``(H, W, 3|4)`` array as PNG: temp file in the same folder,
    then ``os.replace``, so a crash never leaves a truncated file under the final name."""
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_png_atomic({path}): expected a uint8 array, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"write_png_atomic({path}): expected (H, W) or (H, W, 3|4), got shape {array.shape}")
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path


def write_instance_map(array: np.ndarray, path: str | Path) -> Path:
    """Write an instance map (0 = background, 1..n = one annotated lesion each) as a 16-bit grey
    PNG, atomically. Values must fit in uint16."""
    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"write_instance_map({path}): expected an (H, W) integer array, got {array.dtype} {array.shape}")
    if array.size and (int(array.min()) < 0 or int(array.max()) > np.iinfo(np.uint16).max):
        raise ValueError(f"write_instance_map({path}): values must lie in 0..65535")
    with atomic_path(path) as tmp:
        Image.fromarray(array.astype(np.uint16)).save(tmp, format="PNG")
    return path


def read_instance_map(path: str | Path) -> np.ndarray:
    """Read an instance map (any single-channel integer PNG, 8 or 16 bit) as ``(H, W)`` int64."""
    path = Path(path)
    image = _open_image(path)
    if image.mode not in _INDEX_MODES:
        raise DataError(f"instance map {path} has pixel mode {image.mode!r}; it needs one channel of instance ids")
    values = np.asarray(image).astype(np.int64)
    if values.ndim != 2:
        raise DataError(f"instance map {path} has shape {values.shape}; it must be a single (H, W) channel")
    if values.size and int(values.min()) < 0:
        raise DataError(f"instance map {path} has negative values")
    return values


def check_mask(mask: np.ndarray, image_shape: Sequence[int], num_types: int, path: str | Path) -> None:
    """A label map must have its image's height and width and values in ``0..num_types``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"mask {path} has shape {mask.shape}; a label map is a single (H, W) channel")
    height, width = int(image_shape[0]), int(image_shape[1])
    if mask.shape != (height, width):
        raise DataError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is {width}x{height}"
        )
    if mask.size and (int(mask.min()) < 0 or int(mask.max()) > num_types):
        values = np.unique(mask)
        bad = [int(v) for v in values if v < 0 or v > num_types]
        raise DataError(
            f"mask {path} has label value(s) {bad[:10]} outside 0..{num_types} "
            f"(0 = background, 1..{num_types} = the {num_types} lesion type(s))"
        )
