"""Classification: the task-specific parts of training and prediction (timm backbone, one label per image)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score
from torch.utils.data import DataLoader

from pipeline.data.datasets import ClassificationDataset
from pipeline.data.manifest import class_counts
from pipeline.data.transforms import classification_transform
from pipeline.models import build_classifier
from pipeline.rundir import classification_predictions
from pipeline.sampling import build_sampler
from pipeline.tasks import TASKS


@TASKS.register("classification")
class ClassificationTask:
    """One label per image: a timm backbone, softmax probabilities (see pipeline.tasks.base.Task)."""

    name = "classification"
    score_name = "balanced_accuracy"

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.classes: list[str] = cfg["dataset"]["classes"]
        self.root = Path(cfg["dataset"]["root"])

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    @staticmethod
    def split_strata(frame: pd.DataFrame, dataset: dict) -> None:
        return None  # the label column is what the splitter stratifies on

    def build_model(self) -> torch.nn.Module:
        return build_classifier(self.cfg["model"], self.num_outputs)

    def _normalisation(self, model: torch.nn.Module) -> dict:
        import timm.data

        data_cfg = timm.data.resolve_model_data_config(model)
        return {"mean": data_cfg["mean"], "std": data_cfg["std"]}

    def class_counts(self, train_frame: pd.DataFrame) -> list[int]:
        return class_counts(train_frame, self.classes)

    def train_dataset(self, frame: pd.DataFrame, model: torch.nn.Module, seed: int) -> ClassificationDataset:
        train = self.cfg["train"]
        transform = classification_transform(train["image_size"], train=True, augment=train["augment"],
                                             **self._normalisation(model))
        return ClassificationDataset(frame, self.root, self.classes, transform)

    def train_sampler(self, dataset: ClassificationDataset, seed: int, num_replicas: int, rank: int):
        return build_sampler(self.cfg["sampler"], dataset.targets, self.classes, seed,
                             num_replicas=num_replicas, rank=rank)

    def eval_dataset(self, frame: pd.DataFrame, model: torch.nn.Module) -> ClassificationDataset:
        transform = classification_transform(self.cfg["train"]["image_size"], train=False, **self._normalisation(model))
        return ClassificationDataset(frame, self.root, self.classes, transform)

    @torch.no_grad()
    def probabilities(self, model: torch.nn.Module, frame: pd.DataFrame, device: torch.device,
                      num_workers: int = 0, amp_dtype: torch.dtype | None = None) -> np.ndarray:
        dataset = self.eval_dataset(frame, model)
        loader = DataLoader(dataset, batch_size=self.cfg["predict"]["batch_size"], shuffle=False, num_workers=num_workers)
        model.eval()
        out = []
        for images, _ in loader:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(images.to(device, non_blocking=True))
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.num_outputs))

    def validation_score(self, model, frame, device, num_workers=0, amp_dtype=None) -> float:
        probs = self.probabilities(model, frame, device, num_workers, amp_dtype)
        truth = frame["label"].map({c: i for i, c in enumerate(self.classes)}).to_numpy()
        return float(balanced_accuracy_score(truth, probs.argmax(axis=1)))

    def predict(self, model, frame, device, run_dir: Path, num_workers=0, amp_dtype=None) -> pd.DataFrame:
        """predictions.csv contract: image_id, label, pred, prob_<CLASS> in class-list order."""
        probs = self.probabilities(model, frame, device, num_workers, amp_dtype)
        return classification_predictions(frame["image_id"], frame["label"], probs, self.classes)
