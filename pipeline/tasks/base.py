"""The Task protocol: everything the train and predict stages need to know about a task.

A task object is made from one run config (``TASKS.get(cfg["task"])(cfg)``); the single trainer
(pipeline.training) and the predict stage (pipeline.predict) call only these methods, so a new
task (say, lesion instances) is one new module registered in ``pipeline.tasks``.
Evaluation and reporting never import tasks: they read what a task wrote (predictions.csv and
metrics.json's ``task`` field, docs/ARCHITECTURE.md).

Optional: ``fit_post_hoc(model, val_frame, device, run_dir, num_workers=0, amp_dtype=None)``. The
predict stage calls it, when a task has it, with the validation split only, before ``predict``;
classification fits its post-hoc logit offsets there (``predict.logit_offsets``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from pipeline.rundir import DatasetSettings, RunConfig


class Task(Protocol):
    name: str
    """The task's name in configs and in metrics.json (``classification``, ``segmentation``)."""

    score_name: str
    """The validation score used for model selection, as named in history.csv and best.pt
    (``balanced_accuracy``, ``mean_dice``); the same figure is the headline of metrics.json."""

    def __init__(self, cfg: RunConfig) -> None: ...

    @property
    def num_outputs(self) -> int:
        """Channels of the model's logits (classes; segmentation: lesion types + background)."""
        ...

    @staticmethod
    def split_strata(frame: pd.DataFrame, dataset: DatasetSettings) -> pd.DataFrame | None:
        """Extra per-image counts the splitter stratifies on (segmentation: lesions per type), or
        None when the labels in the manifest suffice. Called by `pipeline split`, before any run."""
        ...

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model (or from the config's local pretrained weights)."""
        ...

    def class_counts(self, train_frame: pd.DataFrame) -> list[int]:
        """Training examples per output class (pixels for segmentation), for the loss's weights."""
        ...

    def train_dataset(self, frame: pd.DataFrame, model: torch.nn.Module, seed: int) -> Dataset:
        """The training split as (input, target) pairs, augmented; may use the model's normalisation.
        A task whose inputs can be finished on the device also takes ``normalise=False`` (uint8
        inputs) and ``colour_jitter=False``, and has ``batch_transform(model, seed, colour_jitter)``,
        the batch function the trainer then applies after the transfer (``train.normalise_on_device``,
        ``train.augment_on_device``; classification)."""
        ...

    def train_sampler(self, dataset: Dataset, seed: int, num_replicas: int, rank: int) -> Sampler | None:
        """The config's sampler over ``dataset`` (sharded across ranks), or None for plain shuffling."""
        ...

    def validation_score(self, model: torch.nn.Module, frame: pd.DataFrame, device: torch.device,
                         num_workers: int = 0, amp_dtype: torch.dtype | None = None) -> float:
        """``score_name`` of ``model`` on ``frame`` (the validation split); higher is better."""
        ...

    def predict(self, model: torch.nn.Module, frame: pd.DataFrame, device: torch.device, run_dir: Path,
                num_workers: int = 0, amp_dtype: torch.dtype | None = None) -> pd.DataFrame:
        """The predictions.csv table of ``frame`` (columns: ``rundir.prediction_columns``); files it
        refers to (segmentation: masks/<image_id>.png) are written under ``run_dir``."""
        ...
