"""A folder of images and a folder of masks -> segmentation manifest.

Fits PH2 (``images/IMD003.jpg`` + ``masks/IMD003_lesion.png``), HAM10000 lesion masks and ISIC
2018 Task 1 (``ISIC_x.jpg`` + ``ISIC_x_segmentation.png``). The mask of image ``<stem>.<ext>`` is
``mask_dir/<stem><mask_suffix><mask_ext>``. Every mask is normalised to a label map (uint8,
0 = background, i + 1 = type i), checked against its image (same size, values in range) and
written to ``mask_root/<image_id>.png``; its instance map (the 8-connected components of each
lesion type) to ``mask_root/instances/<image_id>.png``. Masks without an image are ignored (logged count); an
image without a mask is a DataError.

Params:
    image_dir, mask_dir: folders relative to root
    mask_suffix: text between the image stem and the mask extension (default "")
    mask_ext: default ".png"
    binary: true (default): a 0/255 or 0/1 mask of the single lesion type in ``classes``, any
        other value is a DataError; false: the masks already hold label values 0..len(classes)
    groups_csv: optional CSV giving each image its group (lesion or patient); without it
        ``group_id = image_id``
    id_column, group_column: columns of ``groups_csv`` (default "image_id", "group_id"; for
        HAM10000 metadata use ``group_column: lesion_id``)
    source: value of the ``source`` column (default "masks")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.adapters import ADAPTERS
from pipeline.data.adapters._common import (
    check_classes,
    check_mask_root,
    index_images,
    listed,
    manifest_frame,
    manifest_path,
    parse_params,
    read_csv,
    require_dir,
    resolve,
    write_instances,
    write_mask,
)
from pipeline.data.instances import components_per_type
from pipeline.data.io import check_mask, read_image_size, read_label_map
from pipeline.errors import ConfigError, DataError

logger = logging.getLogger(__name__)
ADAPTER = "masks"
_BINARY_VALUE_SETS = ({0, 255}, {0, 1})


@dataclass(frozen=True)
class MasksParams:
    image_dir: str
    mask_dir: str
    mask_suffix: str = ""
    mask_ext: str = ".png"
    binary: bool = True
    groups_csv: str | None = None
    id_column: str = "image_id"
    group_column: str = "group_id"
    source: str = ADAPTER


def binary_to_label_map(mask: np.ndarray, path: Path) -> np.ndarray:
    """0/255 (or 0/1) -> 0/1; any other value means the mask is not binary -> DataError."""
    values = {int(v) for v in np.unique(mask)}
    if not any(values <= allowed for allowed in _BINARY_VALUE_SETS):
        raise DataError(f"mask {path} is not binary: values {sorted(values)[:10]}, expected 0/255 or 0/1 (binary: false for label maps)")
    return (mask > 0).astype(np.uint8)


def _groups(options: MasksParams, root: Path) -> dict[str, str] | None:
    if options.groups_csv is None:
        return None
    path = resolve(options.groups_csv, root)
    table = read_csv(path, [options.id_column, options.group_column], "groups_csv")
    pairs = table[[options.id_column, options.group_column]].drop_duplicates()
    clash = pairs[options.id_column].duplicated()
    if clash.any():
        raise DataError(f"groups_csv {path}: image {pairs[options.id_column][clash].iloc[0]!r} is given more than one group")
    return dict(zip(pairs[options.id_column], pairs[options.group_column]))


def _unused_masks(mask_dir: Path, used: set[Path], options: MasksParams) -> None:
    pattern = f"*{options.mask_suffix}{options.mask_ext}"
    unused = sorted(p.name for p in mask_dir.glob(pattern) if p not in used)
    if unused:
        logger.info("adapter %r: %d mask(s) in %s have no image and are ignored (e.g. %s)", ADAPTER, len(unused), mask_dir, listed(unused))


def _images(image_dir: Path, mask_dir: Path, options: MasksParams) -> dict[str, Path]:
    """Images by stem; when masks share the image folder, the masks are not images."""
    images = index_images(image_dir, recursive=False)
    if image_dir.resolve() != mask_dir.resolve():
        return images
    if not options.mask_suffix:
        raise ConfigError(f"adapter {ADAPTER!r}: image_dir and mask_dir are one folder, so mask_suffix must tell masks apart")
    mask_name = f"{options.mask_suffix}{options.mask_ext}"
    return {stem: path for stem, path in images.items() if not path.name.endswith(mask_name)}


@ADAPTERS.register("masks")
def build(root: Path, classes: list[str], mask_root: Path, **params: Any) -> pd.DataFrame:
    """Segmentation manifest from image + mask folders (see module docstring)."""
    options = parse_params(MasksParams, params, ADAPTER)
    classes = check_classes(classes, ADAPTER)
    if options.binary and len(classes) != 1:
        raise ConfigError(f"adapter {ADAPTER!r}: binary masks hold one lesion type, but the class list has {len(classes)}: {classes}")
    root = Path(root)
    mask_root = check_mask_root(mask_root, root, ADAPTER)
    image_dir = require_dir(resolve(options.image_dir, root), "image_dir")
    mask_dir = require_dir(resolve(options.mask_dir, root), "mask_dir")
    groups = _groups(options, root)

    images = _images(image_dir, mask_dir, options)
    if groups is not None:
        ungrouped = sorted(set(images) - set(groups))
        if ungrouped:
            raise DataError(f"groups_csv {options.groups_csv}: no group for {len(ungrouped)} image(s): {listed(ungrouped)}")

    rows, used = [], set()
    for image_id, image in images.items():
        source_mask = mask_dir / f"{image_id}{options.mask_suffix}{options.mask_ext}"
        if not source_mask.is_file():
            raise DataError(f"image {image} has no mask: expected {source_mask}")
        used.add(source_mask)
        mask = read_label_map(source_mask)
        if options.binary:
            mask = binary_to_label_map(mask, source_mask)
        check_mask(mask, read_image_size(image), len(classes), source_mask)
        rows.append({
            "image_id": image_id,
            "image_path": manifest_path(image, root),
            "mask_path": write_mask(mask, mask_root, image_id),
            # a mask has no annotation ids: each type's connected components are its instances
            "instance_path": write_instances(components_per_type(mask), mask_root, image_id),
            "group_id": groups[image_id] if groups is not None else image_id,
            "split": "",
            "source": options.source,
            "label_origin": "expert",
            "grade": "",
        })
    _unused_masks(mask_dir, used, options)
    return manifest_frame(rows, "mask_path", f"adapter {ADAPTER!r} ({image_dir})")
