"""Adapters for the embedded default data: generate it on first use, then read it back.

`build_synthetic_isic` and `build_synthetic_acne` share the adapter signature
`build(root, classes, mask_root, **params) -> manifest`. On the first call they draw the data
set (pipeline.data.synthetic) into a hidden temporary folder beside `root` and rename it into
place once every file is written, so an interrupted run never leaves a folder that looks
complete. The parameters and seed are recorded in `root/synthetic_params.json`; a later call
with the same parameters reuses the files (generation is deterministic, so they are the same
bytes), and a call with other parameters fails instead of mixing two data sets.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.data.io import write_instance_map
from pipeline.data.adapters import ADAPTERS
from pipeline.data.synthetic import acne, isic
from pipeline.errors import ConfigError, DataError

PARAMS_FILE = "synthetic_params.json"
# Bump when a generator's output changes, so data drawn by an older version is not reused silently.
GENERATOR_VERSION = 1
IMAGES_DIR, MASKS_DIR, INSTANCES_DIR = "images", "masks", "instances"


@ADAPTERS.register("synthetic_isic")
def build_synthetic_isic(root: Path, classes: list[str], mask_root: Path, *, scale: float = 0.2,
                         image_size: int = 64, seed: int = 0, **unknown: Any) -> pd.DataFrame:
    """ISIC-style 7-class dermoscopy images (about 2,000 at the default scale), one row per image.

    Images go to `root/images/`; `mask_root` is not used (classification only). Metadata columns
    `age`, `sex`, `site` are drawn per lesion; `group_id` is the lesion.
    """
    _reject_unknown(unknown, "synthetic_isic", ("scale", "image_size", "seed"))
    _check_classes(classes, isic.CLASSES, "synthetic_isic")
    params = {"generator": "synthetic_isic", "version": GENERATOR_VERSION,
              "scale": _positive_float(scale, "scale"), "image_size": _int_in(image_size, "image_size", 16, 1024),
              "seed": _int_in(seed, "seed", 0, 2**32 - 1)}
    lesions = isic.plan_lesions(params["scale"], params["seed"])
    rows: list[dict[str, Any]] = []
    rows_of: dict[int, list[dict[str, Any]]] = {}  # lesion index -> its rows, one per view
    for lesion in lesions:
        rows_of[lesion.lesion_index] = [_isic_row(lesion, len(rows) + view) for view in range(lesion.n_views)]
        rows += rows_of[lesion.lesion_index]

    def write(images_dir: Path) -> None:
        for lesion in lesions:
            views = isic.render_lesion(lesion, params["image_size"], params["seed"])
            for rendered, row in zip(views, rows_of[lesion.lesion_index]):
                _save_png(rendered.image, images_dir / Path(row["image_path"]).name)

    _materialise(Path(root), params, [row["image_path"] for row in rows], lambda folder: write(folder / IMAGES_DIR))
    return pd.DataFrame(rows)


@ADAPTERS.register("synthetic_acne")
def build_synthetic_acne(root: Path, classes: list[str], mask_root: Path, *, n_images: int = 120,
                         scale: float = 0.2, image_size: int = 128, seed: int = 0,
                         **unknown: Any) -> pd.DataFrame:
    """Face-skin images with acne label maps (label i + 1 = classes[i]), one row per image.

    Images go to `root/images/`, label maps to `mask_root/masks/` (`mask_root` may be `root`).
    Extra columns `n_<type>` count the lesions of each type in the image; `group_id` is the patient.
    Instance maps (one instance per lesion core) go to `mask_root/instances/` (`instance_path`);
    they are derived from the plan alone, so a data set drawn before they existed gets them added
    without redrawing anything. `grade` is left empty here: `pipeline prepare` grades synthetic rows
    from their lesion counts with the dataset's grading thresholds.
    """
    _reject_unknown(unknown, "synthetic_acne", ("n_images", "scale", "image_size", "seed"))
    _check_classes(classes, acne.ACNE_TYPES, "synthetic_acne")
    params = {"generator": "synthetic_acne", "version": GENERATOR_VERSION, "classes": list(classes),
              "n_images": _int_in(n_images, "n_images", acne.MIN_IMAGES_PER_TYPE, 100_000),
              "scale": _positive_float(scale, "scale"), "image_size": _int_in(image_size, "image_size", 48, 2048),
              "seed": _int_in(seed, "seed", 0, 2**32 - 1)}
    try:
        plans = acne.plan_images(params["n_images"], params["scale"], params["image_size"], params["seed"])
    except ValueError as error:
        raise ConfigError(f"synthetic_acne: cannot place the lesions ({error})") from error
    rows = [_acne_row(plan) for plan in plans]
    # Label values follow the configured class order, whatever order the generator uses.
    to_config_label = np.array([0] + [list(classes).index(t) + 1 for t in acne.ACNE_TYPES], dtype=np.uint8)

    def write(images_dir: Path, masks_dir: Path) -> None:
        for plan, row in zip(plans, rows):
            image, label_map = acne.render_image(plan, params["image_size"], params["seed"])
            _save_png(image, images_dir / Path(row["image_path"]).name)
            _save_png(to_config_label[label_map], masks_dir / Path(row["mask_path"]).name)

    root, mask_root = Path(root), Path(mask_root)
    image_files = [row["image_path"] for row in rows]
    mask_files = [row["mask_path"] for row in rows]
    if mask_root.resolve() == root.resolve():
        _materialise(root, params, image_files + mask_files,
                     lambda folder: write(folder / IMAGES_DIR, folder / MASKS_DIR))
    else:
        _check_separate(root, mask_root)
        # Two folders, each complete on its own; a finished one is kept and the other redrawn.
        with tempfile.TemporaryDirectory() as scratch:
            _materialise(mask_root, params, mask_files,
                         lambda folder: write(Path(scratch) / IMAGES_DIR, folder / MASKS_DIR))
        with tempfile.TemporaryDirectory() as scratch:
            _materialise(root, params, image_files,
                         lambda folder: write(folder / IMAGES_DIR, Path(scratch) / MASKS_DIR))
    for plan, row in zip(plans, rows):
        target = mask_root / row["instance_path"]
        if not target.is_file():
            write_instance_map(acne.instance_map(plan, params["image_size"]), target)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- manifest rows


def _isic_row(lesion: isic.LesionPlan, image_number: int) -> dict[str, Any]:
    image_id = f"SYNISIC_{image_number:07d}"
    return {"image_id": image_id, "image_path": f"{IMAGES_DIR}/{image_id}.png", "label": lesion.label,
            "group_id": f"SYNLESION_{lesion.lesion_index:06d}", "split": "", "source": "synthetic",
            "label_origin": "synthetic", "age": lesion.age, "sex": lesion.sex, "site": lesion.site}


def _acne_row(plan: acne.AcneImagePlan) -> dict[str, Any]:
    image_id = f"SYNACNE_{plan.image_index:05d}"
    row = {"image_id": image_id, "image_path": f"{IMAGES_DIR}/{image_id}.png",
           "mask_path": f"{MASKS_DIR}/{image_id}.png", "instance_path": f"{INSTANCES_DIR}/{image_id}.png",
           "group_id": f"SYNPATIENT_{plan.patient_index:04d}",
           "split": "", "source": "synthetic", "label_origin": "synthetic", "grade": ""}
    row.update({f"n_{name}": count for name, count in plan.counts().items()})
    return row


# --------------------------------------------------------------------------- files


def _materialise(folder: Path, params: dict[str, Any], expected: Iterable[str],
                 write: Callable[[Path], None]) -> None:
    """Make `folder` hold the data set drawn with `params`: reuse it, or draw it atomically."""
    if _is_complete(folder, params):
        missing = [name for name in expected if not (folder / name).is_file()]
        if missing:
            raise DataError(f"{folder}: generated data set is incomplete ({len(missing)} files missing, "
                            f"e.g. {missing[0]}); delete the folder to generate it again")
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and unique, beside the target so that the final rename stays on one file system.
    staging = folder.parent / f".{folder.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        write(staging)
        (staging / PARAMS_FILE).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        if folder.exists():
            folder.rmdir()  # empty, checked by _is_complete
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _is_complete(folder: Path, params: dict[str, Any]) -> bool:
    """True for a finished data set drawn with `params`; False for a missing or empty folder.

    Raises DataError for anything else, so a user's files are never overwritten.
    """
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return False
    record = folder / PARAMS_FILE
    if not folder.is_dir() or not record.is_file():
        raise DataError(f"{folder} exists but holds no {PARAMS_FILE}: it is not a generated data set "
                        "(or its generation was interrupted); delete it or choose another root")
    try:
        found = json.loads(record.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{record}: unreadable ({error}); delete {folder} to generate it again") from error
    wanted = json.loads(json.dumps(params))  # same JSON types as the recorded file
    if found != wanted:
        changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        raise DataError(f"{folder} was generated with other parameters ({', '.join(changed)}: recorded "
                        f"{[found.get(k) for k in changed]}, requested {[wanted.get(k) for k in changed]}); "
                        "delete the folder to generate it again, or set the recorded parameters")
    return True


def _check_separate(root: Path, mask_root: Path) -> None:
    a, b = root.resolve(), mask_root.resolve()
    if a in b.parents or b in a.parents:
        raise ConfigError(f"mask_root {mask_root} and root {root} must be the same folder or two "
                          "folders outside each other")


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


# --------------------------------------------------------------------------- parameter checks


def _reject_unknown(unknown: dict[str, Any], adapter: str, known: tuple[str, ...]) -> None:
    if unknown:
        raise ConfigError(f"{adapter}: unknown parameter(s) {sorted(unknown)}; known: {list(known)}")


def _check_classes(classes: list[str], expected: tuple[str, ...], adapter: str) -> None:
    if len(classes) != len(set(classes)) or set(classes) != set(expected):
        missing = sorted(set(expected) - set(classes))
        extra = sorted(set(classes) - set(expected))
        raise ConfigError(f"{adapter}: classes must be {list(expected)} in any order, each once "
                          f"(missing {missing}, unknown {extra}, given {list(classes)})")


def _positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise ConfigError(f"parameter {name} must be a positive number, got {value!r}")
    return float(value)


def _int_in(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ConfigError(f"parameter {name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)
