"""Segmentation: the task-specific parts of training and prediction (SMP model, label maps, patches).

Photos are trained on random patches (rare lesion types oversampled by patch-centre ratios) and
predicted whole by MONAI's sliding-window inference, so 640×640 photos work on a CPU.
"""

from __future__ import annotations

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
from pipeline.models import build_segmenter
from pipeline.rundir import MASK_DIR
from pipeline.tasks import TASKS


@TASKS.register("segmentation")
class SegmentationTask:
    """A label map per image: an SMP model trained on patches, predicted by sliding window
    (see pipeline.tasks.base.Task)."""

    name = "segmentation"
    score_name = "macro_dice"

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.types: list[str] = cfg["dataset"]["classes"]
        self.root = Path(cfg["dataset"]["root"])
        self.mask_root = Path(cfg["dataset"]["mask_root"])
        self._cache: dict[tuple, SegmentationImages] = {}

    @property
    def num_outputs(self) -> int:
        return len(self.types) + 1  # background is channel 0

    @staticmethod
    def split_strata(frame: pd.DataFrame, dataset: dict) -> pd.DataFrame:
        """Lesions per type per image: the manifest's n_<type> columns when all are there, else
        counted from the masks."""
        types = list(dataset["classes"])
        columns = [f"n_{t}" for t in types]
        if all(c in frame.columns for c in columns):
            return frame[columns].fillna(0).astype(int).set_axis(types, axis=1)
        rows = []
        for path in frame["mask_path"]:
            mask = read_label_map(resolve(path, Path(dataset["mask_root"])))
            rows.append([ndimage.label(mask == i + 1)[1] for i in range(len(types))])
        return pd.DataFrame(np.asarray(rows), columns=types, index=frame.index)

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
        return PatchDataset(self.images(frame), patch_size=train["patch_size"], patches_per_image=train["patches_per_image"],
                            ratios=patch_ratios(self.cfg["sampler"], self.types), num_classes=self.num_outputs,
                            augment=train["augment"], seed=seed)

    def train_sampler(self, dataset, seed: int, num_replicas: int, rank: int):
        return None  # patches are drawn by PatchDataset; the trainer shards them across ranks

    @torch.no_grad()
    def label_map(self, model: torch.nn.Module, image: np.ndarray, device: torch.device,
                  amp_dtype: torch.dtype | None = None) -> np.ndarray:
        from monai.inferers import sliding_window_inference

        size = self.cfg["train"]["patch_size"]
        predict = self.cfg["predict"]
        x = normalise_image(image)[None].to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = sliding_window_inference(x, roi_size=(size, size), sw_batch_size=predict["batch_size"],
                                              predictor=model, overlap=predict["overlap"], mode="gaussian",
                                              padding_mode="reflect")
        labels = logits.float().argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
        return remove_small_lesions(labels, predict["min_lesion_area"])

    def label_maps(self, model, frame, device, amp_dtype=None):
        model.eval()
        data = self.images(frame)
        for image_id, image, truth in zip(frame["image_id"], data.images, data.masks):
            yield image_id, truth, self.label_map(model, image, device, amp_dtype)

    def validation_score(self, model, frame, device, num_workers=0, amp_dtype=None) -> float:
        """Macro Dice over lesion types, by the same functions as the reported test metric
        (pipeline.evaluation.segmentation.macro_dice): selection and report never disagree."""
        from pipeline.evaluation.segmentation import macro_dice, pixel_scores

        dice = [pixel_scores(truth, pred, len(self.types))[0] for _, truth, pred in self.label_maps(model, frame, device, amp_dtype)]
        score = macro_dice(np.vstack(dice)) if dice else math.nan
        return 0.0 if math.isnan(score) else score

    def predict(self, model, frame, device, run_dir: Path, num_workers=0, amp_dtype=None) -> pd.DataFrame:
        """Writes masks/<image_id>.png; the table lists each image's predicted and true label map."""
        mask_dir = Path(run_dir) / MASK_DIR
        rows = []
        for (image_id, _, pred), true_path in zip(self.label_maps(model, frame, device, amp_dtype), frame["mask_path"]):
            write_png_atomic(pred, mask_dir / f"{image_id}.png")
            rows.append({"image_id": image_id, "pred_mask_path": f"{MASK_DIR}/{image_id}.png",
                         "true_mask_path": str(resolve(true_path, self.mask_root))})
        return pd.DataFrame(rows)


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
