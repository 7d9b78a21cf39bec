"""One folder per class -> classification manifest.

``image_dir/<class folder>/<image>``: each subfolder name maps case-insensitively to a class
code, or through ``folder_map``; a subfolder that maps to no class is a DataError.
``image_dir/<split folder>/<class folder>/<image>`` (torchvision's ImageFolder layout with split
folders): when every subfolder of ``image_dir`` is a split name (``train``; ``val``, ``valid`` or
``validation``; ``test``, case-insensitive), each fixes the split of its images. Without a
validation folder, the images of ``train/`` are left to the splitter, which cuts ``val`` out of them
(grouped and stratified as usual) and never touches ``test/``. Files
directly in ``image_dir`` (a README, a CSV) and non-image files are ignored. A folder layout
says nothing about lesions or patients, so ``group_id = image_id`` and a warning says so.

Params:
    image_dir: folder holding the class folders, relative to root (default ".")
    folder_map: optional ``{folder name: class code}``
    source: value of the ``source`` column (default "folder")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.data.adapters import ADAPTERS
from pipeline.data.adapters._common import (
    check_classes,
    check_type_map,
    index_images,
    manifest_frame,
    manifest_path,
    parse_params,
    require_dir,
    resolve,
)
from pipeline.errors import DataError

logger = logging.getLogger(__name__)
ADAPTER = "folder"
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class FolderParams:
    image_dir: str = "."
    folder_map: dict | None = None
    source: str = ADAPTER


def _class_folders(image_dir: Path, classes: list[str], folder_map: dict | None) -> dict[Path, str]:
    lookup = {code.lower(): code for code in classes}
    if folder_map:
        lookup.update({name.lower(): code for name, code in check_type_map(folder_map, classes, ADAPTER, "folder_map").items()})
    folders = {}
    for folder in sorted(p for p in image_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        code = lookup.get(folder.name.lower())
        if code is None:
            raise DataError(
                f"folder {folder} matches no class; class folders must be named after {classes} "
                f"(case-insensitive) or mapped with folder_map"
            )
        folders[folder] = code
    if not folders:
        raise DataError(f"image_dir {image_dir} has no class folders")
    return folders


@ADAPTERS.register("folder")
def build(root: Path, classes: list[str], mask_root: Path, **params: Any) -> pd.DataFrame:
    """Classification manifest from class folders (see module docstring)."""
    options = parse_params(FolderParams, params, ADAPTER)
    classes = check_classes(classes, ADAPTER)
    root = Path(root)
    image_dir = require_dir(resolve(options.image_dir, root), "image_dir")

    subfolders = [p for p in image_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if subfolders and all(p.name.lower() in SPLIT_FOLDERS for p in subfolders):
        split_dirs = [(p, SPLIT_FOLDERS[p.name.lower()]) for p in sorted(subfolders)]
        if "val" not in {split for _, split in split_dirs}:  # no validation folder: cut it out of train/
            split_dirs = [(p, "" if split == "train" else split) for p, split in split_dirs]
    else:
        split_dirs = [(image_dir, "")]
    rows: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    class_folders = [(folder, code, split) for split_dir, split in split_dirs
                     for folder, code in _class_folders(split_dir, classes, options.folder_map).items()]
    for folder, code, split in class_folders:
        for image_id, image in index_images(folder, recursive=False).items():
            if image_id in seen:
                raise DataError(f"two images share the id {image_id!r}: {seen[image_id]} and {image}")
            seen[image_id] = image
            rows.append({
                "image_id": image_id,
                "image_path": manifest_path(image, root),
                "label": code,
                "group_id": image_id,
                "split": split,
                "source": options.source,
                "label_origin": "expert",
            })
    frame = manifest_frame(rows, "label", f"adapter {ADAPTER!r} ({image_dir})")
    logger.warning(
        "adapter %r: a folder layout has no lesion or patient ids, so group_id = image_id; images of one lesion "
        "could land in different splits",
        ADAPTER,
    )
    return frame
