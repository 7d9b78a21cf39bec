"""Helpers shared by the dataset adapters: parameter checking, path handling, CSV reading,
image indexing and label-map rendering. Not part of the public API."""

from __future__ import annotations

import dataclasses
import logging
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from pipeline.data.io import write_instance_map, write_png_atomic
from pipeline.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# torchvision's IMG_EXTENSIONS, copied so that preparing data does not import torch (~3 s).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})
MAX_LISTED = 5

# Roboflow export name: the original file name with its dot turned into "_", then ".rf.<hash>".
# `levle0_108_jpg.rf.0a1b...` -> `levle0_108` (ACNE04 photo levle0_108.jpg).
_ROBOFLOW_STEM = re.compile(r"^(?P<original>.+)_(?:jpe?g|png|bmp)\.rf\.[0-9a-fA-F]+$", re.IGNORECASE)
# ACNE04 photo names carry the annotated severity grade (Hayashi): `levle2_14` -> grade 2.
_ACNE04_GRADE = re.compile(r"^levle(?P<grade>[0-3])_")
INSTANCES_DIR = "instances"  # instance maps go to <mask_root>/instances/<image_id>.png

Spec = TypeVar("Spec")


# ---------------------------------------------------------------- parameters
def _matches_hint(value: Any, hint: Any) -> bool:
    """isinstance() for the simple hints adapters use: classes, X | None, dict[..], list[..]."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches_hint(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if origin is not None:
        return isinstance(value, origin)
    if hint is int:  # a YAML `true` is not a count
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def parse_params(spec: type[Spec], params: Mapping[str, Any], adapter: str) -> Spec:
    """Build the adapter's parameter dataclass; unknown, missing or mistyped names -> ConfigError."""
    fields = {field.name: field for field in dataclasses.fields(spec)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ConfigError(f"adapter {adapter!r}: unknown parameter(s) {unknown}; allowed: {sorted(fields)}")
    required = [
        name for name, field in fields.items()
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in params]
    if missing:
        raise ConfigError(f"adapter {adapter!r}: missing required parameter(s) {missing}")
    hints = typing.get_type_hints(spec)
    for name, value in params.items():
        if not _matches_hint(value, hints[name]):
            raise ConfigError(
                f"adapter {adapter!r}: parameter {name!r} = {value!r} should be {hints[name]}, not {type(value).__name__}"
            )
    return spec(**params)


def check_classes(classes: Sequence[str], adapter: str) -> list[str]:
    classes = list(classes)
    if not classes or not all(isinstance(c, str) and c for c in classes):
        raise ConfigError(f"adapter {adapter!r}: classes must be a non-empty list of codes, got {classes!r}")
    if len({c.lower() for c in classes}) != len(classes):
        raise ConfigError(f"adapter {adapter!r}: duplicate class codes (case-insensitive) in {classes}")
    return classes


def check_split(value: Any, where: str) -> str:
    """A fixed split from the config: null -> '' (the splitter decides), else train/val/test."""
    if value is None or value == "":
        return ""
    if value not in SPLITS:
        raise ConfigError(f"{where}: split {value!r} must be null or one of {list(SPLITS)}")
    return value


def check_subsets(subsets: Mapping[str, Any], adapter: str) -> dict[str, str]:
    if not subsets:
        raise ConfigError(f"adapter {adapter!r}: `subsets` must name at least one folder (folder: split or null)")
    return {str(folder): check_split(split, f"adapter {adapter!r}, subset {folder!r}") for folder, split in subsets.items()}


def check_type_map(mapping: Mapping[str, str], classes: Sequence[str], adapter: str, param: str) -> dict[str, str]:
    """A source-name -> class-code map; every target must be a configured class code."""
    bad = {name: code for name, code in mapping.items() if code not in classes}
    if bad:
        raise ConfigError(f"adapter {adapter!r}: `{param}` maps to code(s) not in the class list {list(classes)}: {bad}")
    return {str(name): code for name, code in mapping.items()}


def lesion_values(class_map: Mapping[str, str], classes: Sequence[str], adapter: str) -> dict[str, int]:
    """``class_map`` (source name -> class code) as source name -> label-map value (class index + 1)."""
    checked = check_type_map(class_map, classes, adapter, "class_map")
    return {name: classes.index(code) + 1 for name, code in checked.items()}


# ---------------------------------------------------------------- paths
def resolve(path: str | Path, root: Path) -> Path:
    """A path from the config: absolute as is, else relative to the dataset root."""
    path = Path(path)
    return path if path.is_absolute() else Path(root) / path


def manifest_path(path: Path, base: Path) -> str:
    """Relative to ``base`` (POSIX form) when the file lies under it, else absolute."""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path.resolve())


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} {path} is not a folder")
    return path


def subset_folders(subsets: Mapping[str, str], root: Path) -> Iterator[tuple[Path, str]]:
    """``(folder, split)`` for each checked subset; a folder that does not exist -> DataError."""
    for folder_name, split in subsets.items():
        yield require_dir(resolve(folder_name, root), f"subset {folder_name!r}:"), split


def check_mask_root(mask_root: Path, root: Path, adapter: str) -> Path:
    """Derived masks must never be written into the user's download."""
    mask_root, root = Path(mask_root), Path(root)
    resolved, data = mask_root.resolve(), root.resolve()
    if resolved == data or data in resolved.parents:
        raise ConfigError(
            f"adapter {adapter!r}: mask_root {mask_root} is inside the data root {root}; derived masks are never "
            f"written next to the user's data: set the dataset's mask_root to a folder outside it"
        )
    return mask_root


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def index_images(folder: Path, recursive: bool) -> dict[str, Path]:
    """Map file stem -> image path; two images with one stem -> DataError naming both."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    index: dict[str, Path] = {}
    for path in sorted(found):
        if not is_image(path):
            continue
        if path.stem in index:
            raise DataError(f"two images share the id {path.stem!r}: {index[path.stem]} and {path}")
        index[path.stem] = path
    return index


def acne04_original(stem: str) -> str:
    """ACNE04 photo name behind a Roboflow export name (the stem itself for an original file)."""
    match = _ROBOFLOW_STEM.match(stem)
    return match.group("original") if match else stem


def acne04_grade(stem: str) -> int | str:
    """The ACNE04 severity grade (0..3) in a photo or Roboflow export name; "" when it has none."""
    match = _ACNE04_GRADE.match(acne04_original(stem))
    return int(match.group("grade")) if match else ""


def types_that_follow_grades(pairs: Iterable[tuple[Any, str]], where: str) -> dict[str, Any] | None:
    """Warn when the lesion types of a data set are the photos' severity grades in disguise.

    ``pairs``: (photo grade, lesion type) for every annotated lesion (photos without a grade are
    skipped). When there are two or more types and each type occurs under exactly one grade, and
    each grade has one type, a type says nothing a photo's grade does not: a per-type figure then
    measures the photo's severity, not the lesion. The Roboflow export of ACNE04 in ../shared/data
    is such a set (every box of a levle0 photo is "whitehead and blackhead", of levle3 "nodules and
    cysts"; docs/BENCHMARKS.md §4b). Returns {type: grade} when so, else None.
    """
    grades_of: dict[str, set] = {}
    for grade, lesion_type in pairs:
        if grade != "" and grade is not None:
            grades_of.setdefault(str(lesion_type), set()).add(grade)
    if len(grades_of) < 2 or any(len(g) != 1 for g in grades_of.values()):
        return None
    mapping = {t: next(iter(g)) for t, g in sorted(grades_of.items())}
    if len(set(mapping.values())) != len(mapping):
        return None
    logger.warning(
        "%s: every lesion type occurs under one photo grade only (%s): the types are the photos' severity "
        "grades, not lesion types; per-type figures on this data measure the grade",
        where, ", ".join(f"{t} -> grade {g}" for t, g in mapping.items()))
    return mapping


# ---------------------------------------------------------------- tables
def read_csv(path: Path, required: Iterable[str], what: str) -> pd.DataFrame:
    """Read a CSV with string columns kept as text; missing file or columns -> DataError."""
    if not path.is_file():
        raise DataError(f"{what} {path} not found")
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column's name
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{what} {path} is not a readable CSV: {err}") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{what} {path} lacks column(s) {missing}; it has {list(frame.columns)}")
    return frame


def csv_row(index: int) -> int:
    """Line number in the file of a pandas row (header is line 1)."""
    return int(index) + 2


def parse_age(text: str) -> float:
    """An age cell as a number; empty or not a number -> NaN."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def listed(items: Sequence[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:MAX_LISTED])
    return shown + (f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def manifest_frame(rows: list[dict[str, Any]], target: str, where: str) -> pd.DataFrame:
    """Rows -> DataFrame with the contract columns first; no rows -> DataError."""
    if not rows:
        raise DataError(f"{where}: no images found, the manifest would be empty")
    frame = pd.DataFrame(rows)
    first = ["image_id", "image_path", target, "instance_path", "group_id", "split", "source", "label_origin", "grade"]
    ordered = [c for c in first if c in frame.columns] + [c for c in frame.columns if c not in first]
    return frame[ordered]


# ---------------------------------------------------------------- weak labels
@dataclasses.dataclass(frozen=True)
class Ellipse:
    """An axis-aligned ellipse inscribed in the box [x0, x1) x [y0, y1) (continuous pixel
    coordinates: pixel column i covers [i, i + 1)), filled with ``value``."""

    x0: float
    y0: float
    x1: float
    y1: float
    value: int

    @property
    def area(self) -> float:
        return (self.x1 - self.x0) * (self.y1 - self.y0)


def render_instances(height: int, width: int, ellipses: Sequence[Ellipse]) -> tuple[np.ndarray, np.ndarray]:
    """Label map (uint8) and instance map (int64; instance k is ``ellipses[k - 1]``) of the ellipses.

    Each ellipse is filled by PIL, larger ones first, so that a small lesion lying on a large one
    stays visible (it is drawn on top). Parts outside the image are clipped. An ellipse wholly
    covered by smaller ones drawn later would vanish from both maps: it takes back the pixels of
    its own ellipse that lie deeper inside it (elliptical distance from its centre) than inside
    their current owner, so every annotation keeps pixels. Two identical annotations cannot be
    told apart: a DataError (the caller names the file).
    """
    if len(ellipses) > np.iinfo(np.uint16).max:
        raise DataError(f"{len(ellipses)} lesions in one image: instance maps hold at most 65535")
    labels = Image.new("L", (width, height), 0)
    instances = Image.new("I", (width, height), 0)
    draw_labels, draw_instances = ImageDraw.Draw(labels), ImageDraw.Draw(instances)
    # sorted() is stable, so equal areas keep their annotation order (as before instance maps)
    for index in sorted(range(len(ellipses)), key=lambda i: ellipses[i].area, reverse=True):
        corners = _pil_corners(ellipses[index])
        draw_labels.ellipse(corners, fill=ellipses[index].value)
        draw_instances.ellipse(corners, fill=index + 1)
    label_map = np.asarray(labels, dtype=np.uint8).copy()
    instance_map = np.asarray(instances, dtype=np.int64).copy()
    present = np.bincount(instance_map.ravel(), minlength=len(ellipses) + 1)
    for index in np.flatnonzero(present[1:] == 0):
        _reclaim(label_map, instance_map, ellipses, int(index))
    return label_map, instance_map


def render_ellipses(height: int, width: int, ellipses: Iterable[Ellipse]) -> np.ndarray:
    """Label map of the ellipses (see :func:`render_instances`)."""
    return render_instances(height, width, list(ellipses))[0]


def _pil_corners(shape: Ellipse) -> list[int]:
    # PIL truncates float corners (a shift of up to 1 px up-left): snap them to the nearest
    # pixel edge instead. PIL's box includes its last pixel, hence -1; keep at least one pixel.
    left, top, right, bottom = (round(v) for v in (shape.x0, shape.y0, shape.x1, shape.y1))
    return [left, top, max(left, right - 1), max(top, bottom - 1)]


def _depth(shape: Ellipse, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Squared elliptical distance of pixel centres from the ellipse's centre (1 on its border)."""
    cx, cy = (shape.x0 + shape.x1) / 2, (shape.y0 + shape.y1) / 2
    rx, ry = max((shape.x1 - shape.x0) / 2, 0.5), max((shape.y1 - shape.y0) / 2, 0.5)
    return ((cols + 0.5 - cx) / rx) ** 2 + ((rows + 0.5 - cy) / ry) ** 2


def _reclaim(label_map: np.ndarray, instance_map: np.ndarray, ellipses: Sequence[Ellipse], index: int) -> None:
    shape = ellipses[index]
    own = Image.new("1", (label_map.shape[1], label_map.shape[0]), 0)
    ImageDraw.Draw(own).ellipse(_pil_corners(shape), fill=1)
    rows, cols = np.nonzero(np.asarray(own))
    if rows.size == 0:  # PIL draws nothing for some one-pixel-thin boxes: keep the centre pixel
        height, width = label_map.shape
        rows = np.array([min(max(int((shape.y0 + shape.y1) / 2), 0), height - 1)])
        cols = np.array([min(max(int((shape.x0 + shape.x1) / 2), 0), width - 1)])
    owners = instance_map[rows, cols]
    mine = _depth(shape, rows, cols)
    theirs = np.array([_depth(ellipses[o - 1], r, c) if o else np.inf for o, r, c in zip(owners, rows, cols)])
    take = mine < theirs
    if not take.any():
        raise DataError(f"annotation {index + 1} coincides with annotation {int(owners[0])}: "
                        "two identical lesions cannot be told apart; remove the duplicate")
    label_map[rows[take], cols[take]] = shape.value
    instance_map[rows[take], cols[take]] = index + 1


def type_counts(type_values: Iterable[int], classes: Sequence[str]) -> dict[str, int]:
    """``n_<type>`` columns: lesions per type in one image (0 for absent types)."""
    values = list(type_values)
    return {f"n_{code}": values.count(index + 1) for index, code in enumerate(classes)}


def write_mask(mask: np.ndarray, mask_root: Path, image_id: str) -> str:
    """Write ``<mask_root>/<image_id>.png`` atomically; return the manifest's mask_path."""
    write_png_atomic(mask, Path(mask_root) / f"{image_id}.png")
    return f"{image_id}.png"


def write_instances(instance_map: np.ndarray, mask_root: Path, image_id: str) -> str:
    """Write ``<mask_root>/instances/<image_id>.png`` (uint16) atomically; return the manifest's
    instance_path (relative to mask_root, like mask_path)."""
    relative = f"{INSTANCES_DIR}/{image_id}.png"
    write_instance_map(instance_map, Path(mask_root) / relative)
    return relative


def weak_mask_row(
    image: Path,
    size: tuple[int, int],
    ellipses: list[Ellipse],
    classes: Sequence[str],
    root: Path,
    mask_root: Path,
    *,
    group_id: str,
    split: str,
    source: str,
    label_origin: str,
    where: str = "",
) -> dict[str, Any]:
    """Manifest row of an image whose mask is drawn from ``ellipses``; writes the label map and
    the instance map (one instance per ellipse). ``size`` is the image's (height, width);
    ``where`` names the annotation file in errors."""
    height, width = size
    try:
        label_map, instance_map = render_instances(height, width, ellipses)
    except DataError as error:
        raise DataError(f"{where or image}: {error}") from None
    return {
        "image_id": image.stem,
        "image_path": manifest_path(image, root),
        "mask_path": write_mask(label_map, mask_root, image.stem),
        "instance_path": write_instances(instance_map, mask_root, image.stem),
        "group_id": group_id,
        "split": split,
        "source": source,
        "label_origin": label_origin,
        "grade": acne04_grade(image.stem),
        **type_counts([e.value for e in ellipses], classes),
    }


def log_dropped(adapter: str, count: int, what: str, examples: Sequence[str]) -> None:
    if count:
        logger.warning("adapter %r: dropped %d %s (e.g. %s)", adapter, count, what, listed(list(examples)))
