"""Segmentation: the task-specific parts of training and prediction (SMP model, label maps, patches).

Photos are trained on random patches (rare lesion types oversampled by patch-centre ratios) and
predicted whole by MONAI's sliding-window inference, so 640×640 photos work on a CPU.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from pipeline.data.datasets import PatchDataset, SegmentationImages, patch_ratios
from pipeline.data.io import read_label_map, write_png_atomic
from pipeline.data.transforms import normalise_image
from pipeline.data.manifest import resolve
from pipeline.errors import ConfigError
from pipeline.losses import loss_head
from pipeline.models import build_segmenter
from pipeline.progress import progress
from pipeline.rundir import MASK_DIR
from pipeline.tta import average_maps
from pipeline.tasks import TASKS

log = logging.getLogger("pipeline.train")  # training messages share the trainer's logger


@TASKS.register("segmentation")
class SegmentationTask:
    """A label map per image: an SMP model trained on patches, predicted by sliding window
    (see pipeline.tasks.base.Task)."""

    name = "segmentation"
    score_name = "macro_dice"

    def __init__(self, cfg: dict) -> None:
        loss = (cfg.get("loss") or {}).get("name")
        # LDAM's margins and scale act on cosines (a cosine classifier head); an SMP model ends in a
        # convolution that outputs logits, and scaling those by s = 30 would not be LDAM.
        if loss is not None and loss_head(loss) != "linear":
            raise ConfigError(f"loss {loss!r} assumes a {loss_head(loss)} classifier head, which only the "
                              "classification task builds; segmentation models output logits (use a loss of "
                              "`pipeline list losses` that takes logits, e.g. dice_ce with class weights)")
        if ((cfg.get("model") or {}).get("head") or "linear") != "linear":
            raise ConfigError("model.head is a classification setting; segmentation models output logits per pixel")
        predict = cfg.get("predict") or {}
        if predict.get("count_calibration", "none") != "none" and not predict.get("tune_postprocessing"):
            raise ConfigError("predict.count_calibration is fitted on the validation split by the tuning step: "
                              "set predict.tune_postprocessing: true, or count_calibration: none")
        if predict.get("count_from", "lesions") != "lesions" and predict.get("count_calibration", "none") == "none":
            raise ConfigError(f"predict.count_from: {predict['count_from']} is a probability mass, not a count: it needs "
                              "a count_calibration (linear, huber or isotonic) fitted on validation to read a count from it")
        self.cfg = cfg
        self.types: list[str] = cfg["dataset"]["classes"]
        self.root = Path(cfg["dataset"]["root"])
        self.mask_root = Path(cfg["dataset"]["mask_root"])
        self._cache: dict[tuple, SegmentationImages] = {}
        self.tuned: dict | None = None  # post-processing chosen on validation

    @property
    def num_outputs(self) -> int:
        return len(self.types) + 1  # background is channel 0

    @staticmethod
    def split_strata(frame: pd.DataFrame, dataset: dict) -> pd.DataFrame:
        """What each split keeps in proportion (`split.stratify`). lesion_types (default): lesions per
        type per image, the manifest's n_<type> columns when all are there, else counted from the
        masks. lesion_grades: an image's lesions counted in the column of its severity grade (the
        manifest's `grade`), so every split holds its share of the lesions of mild, moderate, ...
        faces; for data whose types are merged into one class, or whose grade is what is evaluated."""
        types = list(dataset["classes"])
        columns = [f"n_{t}" for t in types]
        if all(c in frame.columns for c in columns):
            per_type = frame[columns].fillna(0).astype(int).set_axis(types, axis=1)
        else:
            rows = []
            for path in frame["mask_path"]:
                mask = read_label_map(resolve(path, Path(dataset["mask_root"])))
                rows.append([ndimage.label(mask == i + 1)[1] for i in range(len(types))])
            per_type = pd.DataFrame(np.asarray(rows), columns=types, index=frame.index)
        if (dataset.get("split") or {}).get("stratify", "lesion_types") == "lesion_types":
            return per_type
        grades = frame["grade"] if "grade" in frame else pd.Series("", index=frame.index)
        ungraded = grades.astype(str).isin(["", "nan", "None"])
        if ungraded.any():
            rows = ", ".join(f"{i + 2} ({frame['image_id'].iloc[i]})" for i in np.flatnonzero(ungraded.to_numpy())[:5])
            raise ConfigError(f"split.stratify: lesion_grades needs a grade for every image; the manifest has none "
                              f"in {int(ungraded.sum())} row(s), e.g. row {rows}")
        grade = grades.astype(float).astype(int)
        lesions = per_type.sum(axis=1)
        by_grade = pd.DataFrame({f"grade {g}": lesions.where(grade == g, 0) for g in sorted(grade.unique())})
        return by_grade.loc[:, by_grade.sum() > 0]  # a grade whose photos hold no lesion is not a stratum

    def build_model(self) -> torch.nn.Module:
        return build_segmenter(self.cfg["model"], self.num_outputs)

    def images(self, frame: pd.DataFrame) -> SegmentationImages:
        key = tuple(frame["image_id"])
        if key not in self._cache:
            self._cache[key] = SegmentationImages(frame, self.root, self.mask_root, len(self.types))
        return self._cache[key]

    def class_counts(self, train_frame: pd.DataFrame) -> list[int]:
        """Pixels per class (background first) in the training label maps."""
        counts = np.zeros(self.num_outputs, dtype=np.int64)
        for mask in self.images(train_frame).masks:
            counts += np.bincount(mask.ravel(), minlength=self.num_outputs)[: self.num_outputs]
        return counts.tolist()

    def train_dataset(self, frame: pd.DataFrame, model: torch.nn.Module, seed: int) -> PatchDataset:
        train = self.cfg["train"]
        images = self.images(frame)
        ratios = patch_ratios(self.cfg["sampler"], self.types, images.masks)
        if ratios is not None:
            log.info(
                "patch-centre ratios: %s", ", ".join(f"{name} {r:.3g}" for name, r in zip(["background", *self.types], ratios)))
        return PatchDataset(images, patch_size=train["patch_size"], patches_per_image=train["patches_per_image"],
                            ratios=ratios, num_classes=self.num_outputs,
                            augment=train["augment"], seed=seed)

    def train_sampler(self, dataset, seed: int, num_replicas: int, rank: int):
        return None  # patches are drawn by PatchDataset; the trainer shards them across ranks

    @torch.no_grad()
    def probabilities(self, model: torch.nn.Module, image: np.ndarray, device: torch.device,
                      amp_dtype: torch.dtype | None = None) -> np.ndarray:
        """Softmax probabilities (C, H, W), float32, of a whole image by MONAI's sliding-window inference."""
        from monai.inferers import sliding_window_inference

        size = self.cfg["train"]["patch_size"]
        predict = self.cfg["predict"]
        x = normalise_image(image)[None].to(device)

        def probability_map(view: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = sliding_window_inference(view, roi_size=(size, size), sw_batch_size=predict["batch_size"],
                                                  predictor=model, overlap=predict["overlap"], mode="gaussian",
                                                  padding_mode="reflect")
            return torch.softmax(logits.float(), dim=1)

        # predict.tta: probabilities averaged over flips / rotations of the photo (pipeline.tta)
        return average_maps(probability_map, x, predict.get("tta", "none"))[0].cpu().numpy()

    def split_rule(self) -> dict:
        """The evaluation's rule for splitting touching lesions (also used by the type vote)."""
        evaluation = self.cfg["evaluation"]
        return {"split_touching": bool(evaluation.get("split_touching", True)),
                "min_peak_distance": int(evaluation.get("min_peak_distance", 3)),
                "min_neck_depth": float(evaluation.get("min_neck_depth", 1.0))}

    def postprocessing(self) -> dict:
        """The lesion threshold, minimum lesion area and type rule in use: threshold and area tuned
        on validation when ``tune_postprocessing`` ran (see :meth:`tune_postprocessing`), else the config's."""
        predict = self.cfg["predict"]
        rule = {"lesion_types": predict.get("lesion_types", "instance_vote"), "split": self.split_rule()}
        if self.tuned is not None:
            return {**{k: self.tuned[k] for k in ("lesion_threshold", "min_lesion_area")}, **rule}
        return {"lesion_threshold": predict.get("lesion_threshold"), "min_lesion_area": predict["min_lesion_area"], **rule}

    def label_map(self, model: torch.nn.Module, image: np.ndarray, device: torch.device,
                  amp_dtype: torch.dtype | None = None) -> np.ndarray:
        return self.label_map_and_mass(model, image, device, amp_dtype)[0]

    def label_map_and_mass(self, model: torch.nn.Module, image: np.ndarray, device: torch.device,
                           amp_dtype: torch.dtype | None = None) -> tuple[np.ndarray, float]:
        """The photo's label map under the post-processing in use, and its :func:`lesion_mass` at that
        lesion threshold (what a ``count_from: lesion_mass`` calibration reads)."""
        probs = self.probabilities(model, image, device, amp_dtype)
        settings = self.postprocessing()
        return lesion_label_map(probs, **settings), lesion_mass(probs, settings["lesion_threshold"])

    def tune_postprocessing(self, model: torch.nn.Module, val_frame: pd.DataFrame, device: torch.device,
                            amp_dtype: torch.dtype | None = None) -> dict:
        """Choose ``lesion_threshold`` and ``min_lesion_area`` on the VALIDATION split, maximising
        lesion detection F1 of any type (the count a grade is read from), and use them from now on;
        with ``predict.count_calibration`` also fit the map from lesions found (``predict.count_from:
        lesions``) or from the lesion mass at the chosen threshold (``lesion_mass``, :func:`lesion_mass`)
        to the annotated count there (:func:`pipeline.evaluation.instances.fit_count_calibration`).

        Post-processing chosen on validation, as nnU-Net v2 does; the test split is never seen. A
        model trained on lesion-centred patches sees lesions far more often than a whole photo holds
        them, so its argmax over-draws lesions; the threshold on P(lesion) = 1 - P(background)
        corrects that prior shift. Returns the chosen values, the validation figures and the grid.
        """
        from pipeline.evaluation.instances import fit_count_calibration

        per_photo, thresholds, areas, masses = self.grid_counts(model, val_frame, device, amp_dtype)
        table = []
        for t, threshold in enumerate(thresholds):
            for area, (matched, n_true, n_pred) in zip(areas, per_photo[:, t].sum(axis=0).tolist()):
                table.append({"lesion_threshold": threshold, "min_lesion_area": area,
                              "f1": 2 * matched / (n_true + n_pred) if n_true + n_pred else 0.0,
                              "recall": matched / n_true if n_true else float("nan"),
                              "precision": matched / n_pred if n_pred else float("nan")})
        t, a = best_grid_cell(per_photo)
        best = table[t * len(areas) + a]
        found, annotated = per_photo[:, t, a, 2], per_photo[:, t, a, 1]
        predict = self.cfg["predict"]
        count_from = predict.get("count_from", "lesions")
        read = found if count_from == "lesions" else masses[:, t]
        self.tuned = {"tuned_on": "val", "objective": "lesion detection F1, any type", "n_images": len(per_photo),
                      "lesion_threshold": best["lesion_threshold"], "min_lesion_area": best["min_lesion_area"],
                      "val_f1": best["f1"], "val_recall": best["recall"], "val_precision": best["precision"],
                      # at the chosen threshold and area: what the grade is read from (see fit_count_calibration)
                      "count_calibration": fit_count_calibration(read, annotated, predict.get("count_calibration", "none"),
                                                                 count_from),
                      "grid": table}
        return self.tuned

    def grid_counts(self, model: torch.nn.Module, val_frame: pd.DataFrame, device: torch.device,
                    amp_dtype: torch.dtype | None = None) -> tuple[np.ndarray, list[float], list[int], np.ndarray]:
        """(matched, annotated, found) lesions of each photo at each lesion threshold and minimum area
        of ``predict.tune_grid``: an int64 array (photo, threshold, area, 3), with the grid's values,
        and each photo's :func:`lesion_mass` at each threshold (float64, (photo, threshold))."""
        from pipeline.evaluation.instances import read_reference
        from pipeline.evaluation.segmentation import lesion_components

        predict, evaluation = self.cfg["predict"], self.cfg["evaluation"]
        grid = predict.get("tune_grid") or {}
        thresholds = [float(t) for t in grid.get("lesion_threshold", DEFAULT_TUNE_THRESHOLDS)]
        areas = [int(a) for a in grid.get("min_lesion_area", DEFAULT_TUNE_AREAS)]
        split = self.split_rule()
        lesion_types = predict.get("lesion_types", "instance_vote")
        iou_threshold = float(evaluation.get("iou_threshold", 0.1))
        model.eval()
        data = self.images(val_frame)
        references = []  # the annotated lesions of each photo, found once for the whole grid
        for row in val_frame.itertuples():
            instance_path = getattr(row, "instance_path", "")
            instance_path = resolve(instance_path, self.mask_root) if isinstance(instance_path, str) and instance_path else None
            references.append(lesion_components(*read_reference(resolve(row.mask_path, self.mask_root), instance_path)))
        # float16 keeps a validation set of 640-px photos in a few hundred MB
        probs = [self.probabilities(model, image, device, amp_dtype).astype(np.float16)
                 for image in progress(data.images, "validation photos for tuning", total=len(val_frame), unit="image")]
        rule = {"thresholds": thresholds, "areas": areas, "lesion_types": lesion_types, "split": split,
                "iou_threshold": iou_threshold}
        # the grid is CPU work (labelling, watershed, matching) per photo: spread the photos over the
        # threads the stage was given (OMP_NUM_THREADS / --threads; one under the default run)
        workers = min(torch.get_num_threads(), len(probs))
        if workers > 1 and len(probs) * len(thresholds) >= PARALLEL_GRID_MIN_CELLS:
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            # spawn, not fork: the parent may hold CUDA and OpenMP threads
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                counts = list(pool.map(photo_grid_counts, probs, references, [rule] * len(probs)))
        else:
            counts = [photo_grid_counts(p, true, rule) for p, true in zip(probs, references)]
        per_photo = np.stack([c for c, _ in counts]) if counts else np.zeros((0, len(thresholds), len(areas), 3), dtype=np.int64)
        masses = np.array([m for _, m in counts], dtype=np.float64).reshape(len(probs), len(thresholds))
        return per_photo, thresholds, areas, masses

    def label_maps(self, model, frame, device, amp_dtype=None):
        model.eval()
        data = self.images(frame)
        for image_id, image, truth in progress(zip(frame["image_id"], data.images, data.masks),
                                               "sliding-window inference", total=len(frame), unit="image"):
            yield (image_id, truth, *self.label_map_and_mass(model, image, device, amp_dtype))

    def validation_score(self, model, frame, device, num_workers=0, amp_dtype=None) -> float:
        """Macro Dice over lesion types, by the same functions as the reported test metric
        (pipeline.evaluation.segmentation.macro_dice): selection and report never disagree."""
        from pipeline.evaluation.segmentation import macro_dice, pixel_scores

        dice = [pixel_scores(truth, pred, len(self.types))[0] for _, truth, pred, _ in self.label_maps(model, frame, device, amp_dtype)]
        score = macro_dice(np.vstack(dice)) if dice else math.nan
        return 0.0 if math.isnan(score) else score

    def predict(self, model, frame, device, run_dir: Path, num_workers=0, amp_dtype=None) -> pd.DataFrame:
        """Writes masks/<image_id>.png; the table lists each image's predicted and true label map and
        its lesion mass (:func:`lesion_mass`)."""
        mask_dir = Path(run_dir) / MASK_DIR
        rows = []
        for (image_id, _, pred, mass), true_path in zip(self.label_maps(model, frame, device, amp_dtype), frame["mask_path"]):
            write_png_atomic(pred, mask_dir / f"{image_id}.png")
            rows.append({"image_id": image_id, "pred_mask_path": f"{MASK_DIR}/{image_id}.png",
                         "true_mask_path": str(resolve(true_path, self.mask_root)), "lesion_mass": mass})
        return pd.DataFrame(rows)


def photo_grid_counts(probs: np.ndarray, true, rule: dict) -> tuple[np.ndarray, list[float]]:
    """(matched, annotated, found) lesions of one photo at each (threshold, area) of the tuning grid,
    shape (thresholds, areas, 3), and its :func:`lesion_mass` at each threshold; ``true`` is the
    photo's annotated lesion_components, ``rule`` the grid and the evaluation's type and split rules
    (see :meth:`SegmentationTask.grid_counts`)."""
    from pipeline.evaluation.instances import predicted_instances
    from pipeline.evaluation.segmentation import match_counts_by_area

    split = rule["split"]
    counts = np.zeros((len(rule["thresholds"]), len(rule["areas"]), 3), dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float32)
    for t, threshold in enumerate(rule["thresholds"]):
        pred = lesion_label_map(probs, lesion_threshold=threshold, min_lesion_area=0,
                                lesion_types=rule["lesion_types"], split=split)
        # Removing small lesions drops whole 8-connected components of the lesion union, and the split
        # of each remaining type component depends on that component only: split once, then count
        # per area (the same lesions as remove_small_lesions followed by a split)
        counts[t] = match_counts_by_area(true, pred, predicted_instances(pred, **split), rule["areas"],
                                         rule["iou_threshold"])
    return counts, [lesion_mass(probs, threshold) for threshold in rule["thresholds"]]


def best_grid_cell(per_photo: np.ndarray) -> tuple[int, int]:
    """(threshold, area) indices of the grid cell with the best lesion detection F1 (any type) over
    all photos of :meth:`SegmentationTask.grid_counts`; first of equals: the lowest threshold, then
    the smallest area."""
    matched, n_true, n_pred = np.moveaxis(per_photo.sum(axis=0), -1, 0)
    f1 = np.divide(2 * matched, n_true + n_pred, out=np.zeros(matched.shape), where=n_true + n_pred > 0)
    t, a = np.unravel_index(int(np.argmax(f1)), f1.shape)
    return int(t), int(a)


# a worker process costs seconds to start (spawn imports torch): worth it from about this many
# (photo, threshold) cells, each a labelling, a watershed split and a matching (ACNE04: 55 x 11)
PARALLEL_GRID_MIN_CELLS = 100
DEFAULT_TUNE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
DEFAULT_TUNE_AREAS = (1, 2, 4, 9, 16, 25, 49, 81, 121, 196, 289, 400)


LESION_TYPE_RULES = ("pixel", "instance_vote")


def lesion_mass(probs: np.ndarray, lesion_threshold: float | None) -> float:
    """The photo's lesion probability mass, in pixels: the sum of P(lesion) = 1 - P(background) over
    the pixels at or above ``lesion_threshold`` (None: the pixels whose most probable class is a
    lesion), before any minimum area, so small lesions count.

    A density count (Lempitsky & Zisserman, NeurIPS 2010, "Learning to count objects in images": the
    number of objects is the integral of a density over the image). A line fitted on the validation
    photos (``predict.count_from: lesion_mass``, :func:`pipeline.evaluation.instances.fit_count_calibration`)
    turns it into a lesion count. Unlike the number of lesions found it still counts touching lesions
    that merge into one component and small ones the minimum area removes: on ACNE04 validation photos
    of very severe faces 16% of the annotated lesions lay merged into another found lesion
    (docs/BENCHMARKS.md §4h).
    """
    lesion = 1.0 - np.asarray(probs[0], dtype=np.float64)
    keep = lesion >= lesion_threshold if lesion_threshold is not None else np.asarray(probs).argmax(axis=0) > 0
    return float(lesion[keep].sum())


def lesion_label_map(probs: np.ndarray, *, lesion_threshold: float | None, min_lesion_area: int,
                     lesion_types: str = "pixel", split: dict | None = None) -> np.ndarray:
    """Label map (uint8) from softmax probabilities (C, H, W), background channel 0.

    ``lesion_threshold`` None: each pixel takes its most probable class. A number t: a pixel is a
    lesion where P(lesion) = 1 - P(background) >= t, of its most probable lesion type. Then lesions
    smaller than ``min_lesion_area`` pixels are removed (:func:`remove_small_lesions`), and with
    ``lesion_types="instance_vote"`` every lesion instance takes one type (:func:`vote_instance_types`,
    ``split``: the arguments of ``predicted_instances``).
    """
    if lesion_types not in LESION_TYPE_RULES:
        raise ConfigError(f"predict.lesion_types must be one of {list(LESION_TYPE_RULES)}, got {lesion_types!r}")
    if lesion_threshold is None:
        labels = probs.argmax(axis=0)
    else:
        lesion = (1.0 - probs[0]) >= lesion_threshold
        labels = np.where(lesion, probs[1:].argmax(axis=0) + 1, 0)
    labels = remove_small_lesions(labels.astype(np.uint8), min_lesion_area)
    if lesion_types == "instance_vote":
        labels = vote_instance_types(labels, probs, **(split or {}))
    return labels


def vote_instance_types(labels: np.ndarray, probs: np.ndarray, **split) -> np.ndarray:
    """One type per lesion instance, as HoVer-Net types its nuclei (Graham et al., Medical Image
    Analysis 2019, section 3.3: the majority type of the instance's pixels), with the vote weighted
    by probability: the type with the largest summed probability over the instance's pixels.

    Instances are found on the union of all lesion pixels, whatever their type, with the
    evaluation's split rule (``predicted_instances``: distance-transform peaks and watershed), so two
    touching lesions with separate centres stay two lesions and keep their own types, while a
    fringe of another type around one lesion (a pustule's ring read as papule at its rim, a few
    nodule pixels on a cyst's edge) no longer counts as a separate small lesion.
    """
    from pipeline.evaluation.instances import predicted_instances

    instances = predicted_instances((labels > 0).astype(np.uint8), **split)
    n = int(instances.max(initial=0))
    if n == 0:
        return labels
    flat = instances.ravel()
    votes = np.stack([np.bincount(flat, weights=probs[c].ravel().astype(np.float64), minlength=n + 1)
                      for c in range(1, probs.shape[0])], axis=1)
    types = (votes.argmax(axis=1) + 1).astype(labels.dtype)
    return np.where(instances > 0, types[instances], 0).astype(labels.dtype)


def remove_small_lesions(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Set connected lesion components smaller than min_area pixels to background (speckle, not lesions)."""
    if min_area <= 1:
        return labels
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3)))
    if count == 0:
        return labels
    areas = np.bincount(components.ravel())
    small = areas < min_area
    small[0] = False
    out = labels.copy()
    out[small[components]] = 0
    return out
