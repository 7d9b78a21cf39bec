"""ACNE04-v2 circle annotations -> segmentation manifest of weak masks.

ACNE04-v2 (Gazeau et al., MICCAI 2024, "AcneAI") re-annotates ACNE04 photos with circles in a
COCO-like JSON: ``images`` ``{id, file_name: levleG_N.jpg, width, height}`` and ``annotations``
``{image_id, coordinates: [x, y], radius, class_name}``. It ships no images: they come from
other folders (e.g. the Roboflow ACNE04 export) and are matched by the ACNE04 photo name
(``levle0_108_jpg.rf.<hash>.jpg`` or ``levle0_108.jpg`` -> ``levle0_108``). Circles are rescaled
to each image (x * W / width, y * H / height, so a circle becomes an ellipse on a stretched
image) and drawn filled, larger first; each circle is one instance of the instance map
(``instance_path``, instance k = the photo's k-th circle), and ``grade`` is the ACNE04 grade in the
photo name. Rows get ``label_origin = "circle-derived"``.

Rescaling is only right for resize-only copies: two image files of one photo (augmented copies)
are a DataError. Image files with no annotation entry and annotation entries with no image file
are dropped, each with a logged count. A circle whose centre lies outside its image, or with a
radius <= 0, is a DataError naming the photo and annotation id.

Params:
    annotations: path of the JSON (relative to root)
    subsets: ``{image folder: split or null}``, as in ``voc_boxes``
    class_map: ``{class_name: lesion type code}`` (ACNE04-v2 has one name, ``acne``)
    source: value of the ``source`` column (default "circles")
Masks are written to ``mask_root/<image_id>.png``, instance maps to ``mask_root/instances/<image_id>.png``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.data.adapters import ADAPTERS
from pipeline.data.adapters._common import (
    Ellipse,
    acne04_original,
    check_classes,
    check_mask_root,
    check_subsets,
    index_images,
    lesion_values,
    log_dropped,
    manifest_frame,
    parse_params,
    resolve,
    subset_folders,
    weak_mask_row,
)
from pipeline.data.io import read_image_size
from pipeline.errors import DataError

ADAPTER = "circles"


@dataclass(frozen=True)
class CirclesParams:
    annotations: str
    subsets: dict
    class_map: dict
    source: str = ADAPTER


@dataclass(frozen=True)
class Photo:
    """One annotated photo: its annotated size and its circles ``(x, y, radius, class_name, id)``."""

    file_name: str
    width: float
    height: float
    circles: list[tuple[float, float, float, str, Any]]


def read_annotations(path: Path) -> dict[str, Photo]:
    """Photos by ACNE04 name (file stem); malformed entries -> DataError naming the entry."""
    if not path.is_file():
        raise DataError(f"annotation file {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images, annotations = data["images"], data["annotations"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise DataError(f"annotation file {path} is not COCO-like JSON with `images` and `annotations`: {err!r}") from err
    circles: dict[Any, list] = defaultdict(list)
    for number, entry in enumerate(annotations):
        try:
            x, y = (float(v) for v in entry["coordinates"])
            circles[entry["image_id"]].append((x, y, float(entry["radius"]), str(entry["class_name"]), entry.get("id", number)))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DataError(f"annotation file {path}: annotations[{number}] needs coordinates [x, y], radius, class_name, image_id: {err!r}") from err
    photos: dict[str, Photo] = {}
    for number, entry in enumerate(images):
        try:
            name = Path(entry["file_name"]).stem
            photo = Photo(entry["file_name"], float(entry["width"]), float(entry["height"]), circles.get(entry["id"], []))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DataError(f"annotation file {path}: images[{number}] needs id, file_name, width, height: {err!r}") from err
        if photo.width <= 0 or photo.height <= 0:
            raise DataError(f"annotation file {path}: images[{number}] ({photo.file_name!r}) has size {photo.width:g}x{photo.height:g}")
        if name in photos:
            raise DataError(f"annotation file {path}: photo {name!r} appears twice in `images`")
        photos[name] = photo
    return photos


def _image_files(subsets: dict[str, str], root: Path) -> dict[str, tuple[Path, str]]:
    """ACNE04 name -> (image file, split); two files of one photo -> DataError."""
    found: dict[str, tuple[Path, str]] = {}
    for folder, split in subset_folders(subsets, root):
        for stem, image in index_images(folder, recursive=False).items():
            original = acne04_original(stem)
            if original in found:
                raise DataError(
                    f"{found[original][0]} and {image} are both copies of ACNE04 photo {original!r} (augmented copies?); "
                    f"circles can only be rescaled onto resize-only images: leave augmented folders out of `subsets`"
                )
            found[original] = (image, split)
    return found


def circle_ellipses(photo: Photo, values: dict[str, int], height: int, width: int, where: str) -> list[Ellipse]:
    """The photo's circles rescaled onto an image of ``height x width``."""
    scale_x, scale_y = width / photo.width, height / photo.height
    ellipses = []
    for x, y, radius, name, annotation_id in photo.circles:
        what = f"{where}: photo {photo.file_name!r}, annotation {annotation_id}"
        if name not in values:
            raise DataError(f"{what} has class_name {name!r}, not in class_map {sorted(values)}")
        if not (0 <= x <= photo.width and 0 <= y <= photo.height):
            raise DataError(f"{what}: centre ({x}, {y}) lies outside the {photo.width:g}x{photo.height:g} photo")
        if radius <= 0:
            raise DataError(f"{what}: radius {radius} gives a zero-area lesion")
        cx, cy, rx, ry = x * scale_x, y * scale_y, radius * scale_x, radius * scale_y
        ellipses.append(Ellipse(cx - rx, cy - ry, cx + rx, cy + ry, values[name]))
    return ellipses


@ADAPTERS.register("circles")
def build(root: Path, classes: list[str], mask_root: Path, **params: Any) -> pd.DataFrame:
    """Segmentation manifest with masks from ACNE04-v2 circles (see module docstring)."""
    options = parse_params(CirclesParams, params, ADAPTER)
    classes = check_classes(classes, ADAPTER)
    root = Path(root)
    mask_root = check_mask_root(mask_root, root, ADAPTER)
    subsets = check_subsets(options.subsets, ADAPTER)
    values = lesion_values(options.class_map, classes, ADAPTER)
    annotation_path = resolve(options.annotations, root)
    photos = read_annotations(annotation_path)
    images = _image_files(subsets, root)

    rows = []
    for original in sorted(set(images) & set(photos)):
        image, split = images[original]
        height, width = read_image_size(image)
        ellipses = circle_ellipses(photos[original], values, height, width, f"annotation file {annotation_path}")
        rows.append(weak_mask_row(image, (height, width), ellipses, classes, root, mask_root,
                                  group_id=original, split=split, source=options.source, label_origin="circle-derived",
                                  where=f"annotation file {annotation_path}, photo {original!r}"))
    unannotated = sorted(str(images[o][0]) for o in set(images) - set(photos))
    log_dropped(ADAPTER, len(unannotated), "image file(s) with no entry in the annotation file", unannotated)
    unmatched = sorted(photos[o].file_name for o in set(photos) - set(images))
    log_dropped(ADAPTER, len(unmatched), f"annotated photo(s) of {annotation_path.name} with no image file", unmatched)
    return manifest_frame(rows, "mask_path", f"adapter {ADAPTER!r}")
