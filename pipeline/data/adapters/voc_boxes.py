"""Pascal VOC boxes (e.g. the Roboflow ACNE04 export) -> segmentation manifest of weak masks.

Each box becomes a filled ellipse inscribed in it, in the label map of its lesion type (value
``type index + 1``); larger boxes are drawn first so that a small lesion on a large one stays
visible. Every box is also one instance in the instance map (``instance_path``, uint16 PNG,
instance k = object k of the XML), so touching or overlapping lesions stay separate lesions. The
``grade`` column is the ACNE04 severity grade in the file name (``levle0``..``levle3``), else empty.
Boxes are not masks: rows get ``label_origin = "box-derived"`` and every figure computed
from them must say so. ``n_<type>`` columns count the boxes per type in each image.

Box coordinates are read as continuous pixel coordinates (column i covers [i, i + 1)), so the
ellipse spans ``[xmin, xmax) x [ymin, ymax)``. A box that passes the image border by at most
``CLIP_TOLERANCE_PX`` (rounding in exporters) is clipped to it; further out, or with zero area
(after clipping), is a DataError naming the file.

``group_id`` is the original ACNE04 photo behind a Roboflow name (``levle0_108_jpg.rf.<hash>``
-> ``levle0_108``), so augmented copies of one photo never land in two splits.

Params:
    subsets: ``{folder: split or null}``: folders (relative to root) of ``<stem>.jpg`` +
        ``<stem>.xml`` pairs; a non-null split is fixed in the manifest (e.g. ``test: test``)
    class_map: ``{VOC object name: lesion type code}``; an unmapped name is a DataError
    source: value of the ``source`` column (default "voc_boxes")
Masks are written to ``mask_root/<image_id>.png``, instance maps to ``mask_root/instances/<image_id>.png``.
"""

from __future__ import annotations

# ElementTree resolves no external entities, and the bundled expat (>= 2.4.1) refuses
# entity-expansion ("billion laughs") attacks; see the Python docs "XML vulnerabilities".
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.data.adapters import ADAPTERS
from pipeline.data.adapters._common import (
    Ellipse,
    acne04_grade,
    acne04_original,
    check_classes,
    check_mask_root,
    check_subsets,
    index_images,
    lesion_values,
    manifest_frame,
    parse_params,
    subset_folders,
    types_that_follow_grades,
    weak_mask_row,
)
from pipeline.data.io import read_image_size
from pipeline.errors import DataError

ADAPTER = "voc_boxes"
CLIP_TOLERANCE_PX = 1.0


@dataclass(frozen=True)
class VocBoxesParams:
    subsets: dict
    class_map: dict
    source: str = ADAPTER


@dataclass(frozen=True)
class VocObject:
    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float


def _number(element: ElementTree.Element, tag: str, path: Path, what: str) -> float:
    text = element.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise DataError(f"VOC file {path}: {what} has no numeric <{tag}> (found {text!r})") from None


def read_voc(path: Path) -> tuple[tuple[int, int] | None, list[VocObject]]:
    """``((width, height) or None, objects)`` of one VOC annotation file."""
    try:
        annotation = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as err:
        raise DataError(f"VOC file {path} cannot be parsed: {err}") from err
    size = annotation.find("size")
    declared = None
    if size is not None and size.findtext("width") and size.findtext("height"):
        declared = (int(_number(size, "width", path, "<size>")), int(_number(size, "height", path, "<size>")))
    objects = []
    for number, element in enumerate(annotation.iter("object"), start=1):
        box = element.find("bndbox")
        what = f"object {number}"
        if box is None:
            raise DataError(f"VOC file {path}: {what} has no <bndbox>")
        objects.append(VocObject(
            name=(element.findtext("name") or "").strip(),
            xmin=_number(box, "xmin", path, what), ymin=_number(box, "ymin", path, what),
            xmax=_number(box, "xmax", path, what), ymax=_number(box, "ymax", path, what),
        ))
    return declared, objects


def clip_box(obj: VocObject, width: int, height: int, path: Path, number: int) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of one box clipped to the image, after the border and area checks
    described in the module docstring."""
    where = f"VOC file {path}: object {number} ({obj.name!r}, box x {obj.xmin}..{obj.xmax}, y {obj.ymin}..{obj.ymax})"
    tol = CLIP_TOLERANCE_PX
    if obj.xmin < -tol or obj.ymin < -tol or obj.xmax > width + tol or obj.ymax > height + tol:
        raise DataError(f"{where} lies outside the {width}x{height} image")
    x0, y0 = max(obj.xmin, 0.0), max(obj.ymin, 0.0)
    x1, y1 = min(obj.xmax, float(width)), min(obj.ymax, float(height))
    if x1 <= x0 or y1 <= y0:
        raise DataError(f"{where} has zero area")
    return x0, y0, x1, y1


def box_ellipse(obj: VocObject, value: int, width: int, height: int, path: Path, number: int) -> Ellipse:
    """The ellipse of one box (see :func:`clip_box`)."""
    return Ellipse(*clip_box(obj, width, height, path, number), value)


def _image_row(xml: Path, image: Path, split: str, values: dict[str, int], classes: list[str], root: Path,
               mask_root: Path, source: str, typed: list[tuple[Any, str]]) -> dict[str, Any]:
    height, width = read_image_size(image)
    declared, objects = read_voc(xml)
    typed += [(acne04_grade(image.stem), obj.name) for obj in objects]
    if declared is not None and declared != (width, height):
        raise DataError(f"VOC file {xml} declares a {declared[0]}x{declared[1]} image but {image} is {width}x{height}")
    ellipses = []
    for number, obj in enumerate(objects, start=1):
        if obj.name not in values:
            raise DataError(f"VOC file {xml}: object {number} has name {obj.name!r}, not in class_map {sorted(values)}")
        ellipses.append(box_ellipse(obj, values[obj.name], width, height, xml, number))
    return weak_mask_row(image, (height, width), ellipses, classes, root, mask_root,
                         group_id=acne04_original(image.stem), split=split, source=source, label_origin="box-derived",
                         where=f"VOC file {xml}")


def voc_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(xml, image) pairs by stem; an XML without image or an image without XML -> DataError."""
    images = index_images(folder, recursive=False)
    xmls = {p.stem: p for p in sorted(folder.glob("*.xml"))}
    no_image = sorted(set(xmls) - set(images))
    if no_image:
        raise DataError(f"VOC file {xmls[no_image[0]]} has no image next to it ({len(no_image)} such file(s) in {folder})")
    no_xml = sorted(set(images) - set(xmls))
    if no_xml:
        raise DataError(f"image {images[no_xml[0]]} has no VOC .xml next to it ({len(no_xml)} such image(s) in {folder})")
    return [(xmls[stem], images[stem]) for stem in sorted(xmls)]


@ADAPTERS.register("voc_boxes")
def build(root: Path, classes: list[str], mask_root: Path, **params: Any) -> pd.DataFrame:
    """Segmentation manifest with ellipse masks from VOC boxes (see module docstring)."""
    options = parse_params(VocBoxesParams, params, ADAPTER)
    classes = check_classes(classes, ADAPTER)
    root = Path(root)
    mask_root = check_mask_root(mask_root, root, ADAPTER)
    subsets = check_subsets(options.subsets, ADAPTER)
    values = lesion_values(options.class_map, classes, ADAPTER)

    rows: list[dict[str, Any]] = []
    typed: list[tuple[Any, str]] = []  # (photo grade, VOC name) of every box
    seen: dict[str, Path] = {}
    for folder, split in subset_folders(subsets, root):
        for xml, image in voc_pairs(folder):
            if image.stem in seen:
                raise DataError(f"two images share the id {image.stem!r}: {seen[image.stem]} and {image}")
            seen[image.stem] = image
            rows.append(_image_row(xml, image, split, values, classes, root, mask_root, options.source, typed))
    types_that_follow_grades(((grade, options.class_map[name]) for grade, name in typed), f"adapter {ADAPTER!r} ({root})")
    return manifest_frame(rows, "mask_path", f"adapter {ADAPTER!r}")
