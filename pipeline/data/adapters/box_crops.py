"""Pascal VOC boxes (e.g. the Roboflow ACNE04 export) -> classification manifest of lesion crops.

Every box becomes one image: a square crop centred on the box, of side ``max(w, h) * (1 + 2 *
margin)`` (the box plus ``margin`` times its longer side on each side, so some skin around the
lesion is kept), resampled to ``size x size`` pixels (PIL bicubic over the crop's exact float
window, antialiased when shrinking). A window that passes the photo's border is shifted back
inside it; one larger than the photo is cut to the photo's shorter side. The crop's label is the
box's VOC name through ``class_map``.

The crops are *generated* data: the dataset's ``root`` is where they are written (a derived folder
such as ``data/derived/acne04_crops``), and the VOC export is the ``voc_root`` parameter, read
only. A ``root`` inside ``voc_root`` is a ConfigError: nothing is ever written next to the user's
data. Each crop is written atomically (pipeline.data.io.write_png_atomic) and cutting is
deterministic, so preparing twice gives the same bytes. ``root/box_crops.json`` records the
geometry (margin, size); preparing into a root cut with another geometry is a ConfigError, so
crops, the frozen split and the models trained on them never silently disagree.

Grouping reuses the segmentation adapter's (pipeline.data.adapters.voc_boxes): ``group_id`` is the
ACNE04 photo behind a Roboflow name (``levle0_108_jpg.rf.<hash>`` -> ``levle0_108``), so the crops
of one photo, and of every Roboflow copy of it, never land in two splits. Box reading, border
clipping (``voc_boxes.CLIP_TOLERANCE_PX``) and the image/XML pairing are the same code as there.

Labels are the annotators' box labels, not weak masks: rows get ``label_origin = "expert"``.
Extra columns: ``photo`` (the source photo's id), ``box_width`` / ``box_height`` (the clipped box
in source pixels) and ``grade`` (the ACNE04 severity grade in the photo's file name, else empty).

Params:
    voc_root: the VOC export (absolute, or relative to the working directory like the dataset's
        ``root``); ``subsets`` folders are relative to it
    subsets: ``{folder: split or null}``: folders of ``<stem>.jpg`` + ``<stem>.xml`` pairs; a
        non-null split is fixed in the manifest (e.g. ``test: test``)
    class_map: ``{VOC object name: class code}``; an unmapped name is a DataError
    margin: context around the box, as a fraction of its longer side on each side (default 0.25)
    size: side of the written crops in pixels (default 40)
    source: value of the ``source`` column (default "box_crops")
Crops are written to ``root/<photo id>_box<k>.png`` (k = the object's number in its XML, from 1).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.atomic import write_text
from pipeline.data.adapters import ADAPTERS
from pipeline.data.adapters._common import (
    acne04_grade,
    acne04_original,
    check_classes,
    check_subsets,
    check_type_map,
    manifest_frame,
    parse_params,
    subset_folders,
    types_that_follow_grades,
)
from pipeline.data.adapters.voc_boxes import clip_box, read_voc, voc_pairs
from pipeline.data.io import read_rgb, write_png_atomic
from pipeline.errors import ConfigError, DataError

ADAPTER = "box_crops"
GEOMETRY_FILE = "box_crops.json"
# Bump when the cutting changes, so crops cut by an older version are not reused silently.
CROP_VERSION = 1
SIZE_RANGE = (8, 1024)


@dataclass(frozen=True)
class BoxCropsParams:
    voc_root: str
    subsets: dict
    class_map: dict
    margin: float | int = 0.25
    size: int = 40
    source: str = ADAPTER


def crop_window(box: tuple[float, float, float, float], margin: float, width: int, height: int) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` of the square crop around ``box`` (continuous pixel
    coordinates, see the module docstring): centred on the box, shifted inside the image."""
    x0, y0, x1, y1 = box
    side = min(max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin), float(width), float(height))
    left = min(max((x0 + x1 - side) / 2.0, 0.0), width - side)
    top = min(max((y0 + y1 - side) / 2.0, 0.0), height - side)
    return left, top, left + side, top + side


def cut_crop(photo: Image.Image, window: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The ``window`` of ``photo`` resampled to ``size x size`` (uint8 RGB)."""
    crop = photo.resize((size, size), Image.Resampling.BICUBIC, box=window)
    return np.asarray(crop, dtype=np.uint8)


def _check_geometry(options: BoxCropsParams) -> dict[str, Any]:
    margin, size = options.margin, options.size
    if not (math.isfinite(margin) and margin >= 0):
        raise ConfigError(f"adapter {ADAPTER!r}: margin must be a finite number >= 0, got {margin!r}")
    low, high = SIZE_RANGE
    if not low <= size <= high:
        raise ConfigError(f"adapter {ADAPTER!r}: size must lie in {low}..{high} pixels, got {size!r}")
    return {"adapter": ADAPTER, "version": CROP_VERSION, "margin": float(margin), "size": int(size)}


def _claim_root(root: Path, voc_root: Path, geometry: dict[str, Any]) -> None:
    """Refuse a root inside the VOC export or cut with another geometry; record this one."""
    resolved, data = root.resolve(), voc_root.resolve()
    if resolved == data or data in resolved.parents:
        raise ConfigError(
            f"adapter {ADAPTER!r}: the dataset root {root} (where crops are written) is inside voc_root "
            f"{voc_root}; crops are never written next to the user's data: set root to a derived folder, "
            "e.g. data/derived/<name>"
        )
    record = root / GEOMETRY_FILE
    if record.is_file():
        try:
            previous = json.loads(record.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{record} is not valid JSON ({err}); delete it and prepare again") from None
        if previous != geometry:
            raise ConfigError(
                f"adapter {ADAPTER!r}: {root} holds crops cut with {previous}, not {geometry}. Crops are "
                f"not mixed: delete {root} and the dataset's frozen split (results trained on the old crops "
                "are then no longer comparable), or set root to another folder"
            )
    write_text(record, json.dumps(geometry, indent=2) + "\n")


def _photo_rows(xml: Path, image: Path, split: str, labels: dict[str, str], root: Path,
                geometry: dict[str, Any], source: str) -> list[dict[str, Any]]:
    rgb = read_rgb(image)
    height, width = rgb.shape[:2]
    declared, objects = read_voc(xml)
    if declared is not None and declared != (width, height):
        raise DataError(f"VOC file {xml} declares a {declared[0]}x{declared[1]} image but {image} is {width}x{height}")
    photo = Image.fromarray(rgb)
    rows = []
    for number, obj in enumerate(objects, start=1):
        if obj.name not in labels:
            raise DataError(f"VOC file {xml}: object {number} has name {obj.name!r}, not in class_map {sorted(labels)}")
        box = clip_box(obj, width, height, xml, number)
        image_id = f"{image.stem}_box{number:03d}"
        write_png_atomic(cut_crop(photo, crop_window(box, geometry["margin"], width, height), geometry["size"]),
                         root / f"{image_id}.png")
        rows.append({
            "image_id": image_id,
            "image_path": f"{image_id}.png",
            "label": labels[obj.name],
            "group_id": acne04_original(image.stem),
            "split": split,
            "source": source,
            "label_origin": "expert",
            "grade": acne04_grade(image.stem),
            "photo": image.stem,
            "box_width": round(box[2] - box[0], 3),
            "box_height": round(box[3] - box[1], 3),
        })
    return rows


@ADAPTERS.register("box_crops")
def build(root: Path, classes: list[str], mask_root: Path, **params: Any) -> pd.DataFrame:
    """Classification manifest of lesion crops cut from VOC boxes (see module docstring).
    ``mask_root`` is not used (classification)."""
    options = parse_params(BoxCropsParams, params, ADAPTER)
    classes = check_classes(classes, ADAPTER)
    geometry = _check_geometry(options)
    root, voc_root = Path(root), Path(options.voc_root)
    if not voc_root.is_dir():
        raise DataError(f"adapter {ADAPTER!r}: voc_root {voc_root} is not a folder")
    subsets = check_subsets(options.subsets, ADAPTER)
    labels = check_type_map(options.class_map, classes, ADAPTER, "class_map")
    _claim_root(root, voc_root, geometry)

    rows: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for folder, split in subset_folders(subsets, voc_root):
        for xml, image in voc_pairs(folder):
            if image.stem in seen:
                raise DataError(f"two images share the id {image.stem!r}: {seen[image.stem]} and {image}")
            seen[image.stem] = image
            rows += _photo_rows(xml, image, split, labels, root, geometry, options.source)
    types_that_follow_grades(((row["grade"], row["label"]) for row in rows), f"adapter {ADAPTER!r} ({voc_root})")
    return manifest_frame(rows, "label", f"adapter {ADAPTER!r}")
