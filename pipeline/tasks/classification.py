"""Classification: the task-specific parts of training and prediction (timm backbone, one label per image),
and the post-hoc logit offsets the predict stage may fit on the validation split (``fit_logit_offsets``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax
from sklearn.metrics import balanced_accuracy_score
from torch.utils.data import DataLoader

from pipeline import rundir
from pipeline.data.datasets import ClassificationDataset
from pipeline.data.manifest import class_counts
from pipeline.data.transforms import BatchAugment, BatchColourJitter, BatchTransform, classification_transform
from pipeline.errors import ConfigError, DataError, TrainingError
from pipeline.losses import loss_head, loss_parameters
from pipeline.models import HEADS, build_classifier
from pipeline.progress import progress
from pipeline.tta import average_logits
from pipeline.rundir import classification_predictions
from pipeline.sampling import build_sampler
from pipeline.tasks import TASKS

log = logging.getLogger("pipeline.tasks.classification")


def classifier_head(cfg: dict) -> str:
    """The head the model gets: ``model.head`` when the config sets it, else the one the loss
    declares (``pipeline.losses.loss_head``: ``cosine`` for LDAM, ``linear`` otherwise). A pure
    function of the run config, so training and the predict stage build the same model.

    A cosine head outputs cosines in [-1, 1]; only a loss that declares it applies the scale that
    makes logits of them, so ``cosine`` under any other loss is a ConfigError. ``linear`` under a
    cosine loss is allowed (LDAM on raw logits, the setting before cosine heads existed) and logged.
    """
    loss = cfg["loss"]["name"]
    needed = loss_head(loss)
    head = cfg["model"].get("head") or needed
    if head not in HEADS:
        raise ConfigError(f"model.head must be one of {list(HEADS)}, got {head!r}")
    if head == "cosine" and needed != "cosine":
        raise ConfigError(f"model.head is 'cosine' but loss {loss!r} expects logits from a linear head; "
                          "a cosine head outputs cosines in [-1, 1], which only a loss that scales them (ldam) can use")
    if head != needed:
        log.warning("loss %r assumes a %s head; model.head makes it %s", loss, needed, head)
    return head


def output_scale(cfg: dict) -> float:
    """What the model's outputs are multiplied by before the predict stage's softmax: the loss's
    ``scale`` when it has one (LDAM's s: the loss trained the softmax of s times the outputs, cosines
    or logits), else 1."""
    scale = cfg["loss"].get("scale", loss_parameters(cfg["loss"]["name"]).get("scale", 1.0))
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        raise ConfigError(f"loss {cfg['loss']['name']!r}: scale must be a positive number, got {scale!r}")
    return float(scale)

LOGIT_OFFSET_METHODS = ("none", "fit_val")


def fit_logit_offsets(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class logit offsets b (shape (C,), mean 0) fitted on held-out data, for argmax(f + b).

    They minimise the class-balanced cross-entropy of the shifted logits (every class weighs the
    same, whatever its number of images):

        b* = argmin_b  1/C sum_c  1/n_c sum_{i: y_i = c}  -log softmax(f_i + b)_c

    a smooth convex problem (unique up to a constant, fixed by mean(b) = 0), solved by L-BFGS.
    At the optimum, sum_i w_i (softmax(f_i + b)_c - [y_i = c]) = 0 for every c (w_i = 1/(C n_{y_i})):
    the class-balanced mean predicted probability of every class is 1/C.

    Why this target. The balanced error (1 - balanced accuracy, the project's headline and
    selection metric) is minimised by argmax_y p(y|x) / pi_y, i.e. by logits shifted by -log pi_y
    (Menon, Jayasumana, Rawat, Jain, Veit and Kumar, "Long-tail learning via logit adjustment",
    ICLR 2021, post-hoc logit adjustment; threshold moving in the older literature), and the
    class-balanced cross-entropy is a consistent surrogate of the balanced error (the population
    form of their logit-adjusted loss). Menon et al. take the offsets from the training priors, which holds for a model trained
    with plain CE; after class weights, re-sampling or focal terms the model's implicit prior is
    no longer pi_train, so here the offsets are estimated on the validation split instead. A direct
    search for the offsets that maximise validation balanced accuracy (or equalise recall) would
    optimise a piecewise-constant function, with flat optima and overfitting on the ~10-20
    validation images of the rarest classes; the convex surrogate has a unique optimum that moves
    smoothly with the data. It is the bias-only form of vector scaling (Guo et al., ICML 2017)
    with class-balanced weights.

    Args:
        logits: (N, C) raw model outputs on held-out (validation) images.
        labels: (N,) class indices; every class must occur (an absent class's offset is unbounded).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[1] != num_classes or len(labels) != len(logits):
        raise ValueError(f"logits must be (N, {num_classes}) with N labels, got {logits.shape} and {labels.shape}")
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise DataError(f"class(es) {np.flatnonzero(counts == 0).tolist()} have no validation images: "
                        "logit offsets cannot be fitted (use predict.logit_offsets: none)")
    sample_weight = 1.0 / (num_classes * counts[labels])
    one_hot = np.eye(num_classes)[labels]

    def objective(offsets: np.ndarray) -> tuple[float, np.ndarray]:
        log_p = log_softmax(logits + offsets, axis=1)
        loss = -(sample_weight * log_p[np.arange(len(labels)), labels]).sum()
        gradient = (sample_weight[:, None] * (np.exp(log_p) - one_hot)).sum(axis=0)
        return float(loss), gradient

    result = minimize(objective, np.zeros(num_classes), jac=True, method="L-BFGS-B",
                      options={"gtol": 1e-10, "ftol": 1e-14, "maxiter": 1000})
    if not np.all(np.isfinite(result.x)):
        raise TrainingError(f"fitting the logit offsets failed: {result.message}")
    return result.x - result.x.mean()


@TASKS.register("classification")
class ClassificationTask:
    """One label per image: a timm backbone, softmax probabilities (see pipeline.tasks.base.Task)."""

    name = "classification"
    score_name = "balanced_accuracy"

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.classes: list[str] = cfg["dataset"]["classes"]
        self.root = Path(cfg["dataset"]["root"])
        self.head = classifier_head(cfg)
        self.output_scale = output_scale(cfg)
        self.offsets: np.ndarray | None = None  # post-hoc logit offsets (fit_post_hoc), added in predict

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    @staticmethod
    def split_strata(frame: pd.DataFrame, dataset: dict) -> None:
        return None  # the label column is what the splitter stratifies on

    def build_model(self) -> torch.nn.Module:
        return build_classifier(self.cfg["model"], self.num_outputs, head=self.head)

    @property
    def _cache_dir(self) -> str | None:
        """train.decode_cache: the folder of the decode-once cache (pipeline.data.cache), or None."""
        return self.cfg["train"].get("decode_cache") or None

    def _normalisation(self, model: torch.nn.Module) -> dict:
        import timm.data

        data_cfg = timm.data.resolve_model_data_config(model)
        return {"mean": data_cfg["mean"], "std": data_cfg["std"]}

    def class_counts(self, train_frame: pd.DataFrame) -> list[int]:
        return class_counts(train_frame, self.classes)

    def train_dataset(self, frame: pd.DataFrame, model: torch.nn.Module, seed: int, normalise: bool = True,
                      colour_jitter: bool = True, augment: bool = True) -> ClassificationDataset:
        """``normalise=False``: uint8 inputs, finished on the device by :meth:`batch_transform`
        (``colour_jitter=False``: its colour jitter there too; ``augment=False``: the whole augmentation
        there, the loader serving each whole photo squashed to a square with its aspect, from which
        :class:`BatchAugment` crops in the photo's proportions)."""
        train = self.cfg["train"]
        transform = classification_transform(train["image_size"], train=augment, augment=train["augment"],
                                             crop_pct=train["crop_pct"], normalise=normalise, colour_jitter=colour_jitter,
                                             whole_image=not augment, **self._normalisation(model))
        return ClassificationDataset(frame, self.root, self.classes, transform, seed=seed, cache_dir=self._cache_dir,
                                     with_aspect=not augment)

    def jitters_colour(self) -> bool:
        """Whether the training augmentation holds a colour jitter (``train.augment: true``)."""
        return self.cfg["train"]["augment"] is True

    def batch_transform(self, model: torch.nn.Module, seed: int, colour_jitter: bool = False, rank: int = 0,
                        augment: bool = False) -> BatchTransform:
        """What the training dataset leaves out with ``normalise=False`` (and ``colour_jitter=False``, or
        ``augment=False``: :class:`BatchAugment`), for a batch; the draws are this rank's own."""
        jitter = (BatchAugment(seed, stream=rank) if augment else
                  BatchColourJitter(seed, stream=rank) if colour_jitter else None)
        return BatchTransform(**self._normalisation(model), augment=jitter)

    def train_sampler(self, dataset: ClassificationDataset, seed: int, num_replicas: int, rank: int):
        return build_sampler(self.cfg["sampler"], dataset.targets, self.classes, seed,
                             num_replicas=num_replicas, rank=rank, epochs=self.cfg["train"]["epochs"])

    def eval_dataset(self, frame: pd.DataFrame, model: torch.nn.Module, cache: bool = True) -> ClassificationDataset:
        """The evaluation geometry of ``frame``'s images; ``cache=False`` for a one-off handful
        (a decode cache of every such subset would be written once and never read again)."""
        train = self.cfg["train"]
        transform = classification_transform(train["image_size"], train=False, crop_pct=train["crop_pct"],
                                             **self._normalisation(model))
        return ClassificationDataset(frame, self.root, self.classes, transform,
                                     cache_dir=self._cache_dir if cache else None)

    @torch.no_grad()
    def logits(self, model: torch.nn.Module, frame: pd.DataFrame, device: torch.device,
               num_workers: int = 0, amp_dtype: torch.dtype | None = None) -> np.ndarray:
        """Logits (N, C) of the images of ``frame``, in its row order: the model's outputs times the
        loss's ``scale`` (1 for every loss but LDAM, see ``output_scale``)."""
        dataset = self.eval_dataset(frame, model)
        loader = DataLoader(dataset, batch_size=self.cfg["predict"]["batch_size"], shuffle=False, num_workers=num_workers)
        model.eval()
        out = []
        for images, _ in progress(loader, f"predicting {len(frame)} images", unit="batch"):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                # predict.tta: logits averaged over flips / rotations of the image (pipeline.tta)
                logits = average_logits(model, images.to(device, non_blocking=True), self.cfg["predict"].get("tta", "none"))
            # LDAM trained the softmax of scale x outputs: the logits are scaled outputs
            out.append((self.output_scale * logits.float()).cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, self.num_outputs))

    def probabilities(self, model: torch.nn.Module, frame: pd.DataFrame, device: torch.device,
                      num_workers: int = 0, amp_dtype: torch.dtype | None = None) -> np.ndarray:
        return softmax(self.logits(model, frame, device, num_workers, amp_dtype), axis=1)

    def _truth(self, frame: pd.DataFrame) -> np.ndarray:
        return frame["label"].map({c: i for i, c in enumerate(self.classes)}).to_numpy()

    def validation_score(self, model, frame, device, num_workers=0, amp_dtype=None) -> float:
        probs = self.probabilities(model, frame, device, num_workers, amp_dtype)
        return float(balanced_accuracy_score(self._truth(frame), probs.argmax(axis=1)))

    @property
    def logit_offset_method(self) -> str:
        method = self.cfg["predict"].get("logit_offsets", "none")
        if method not in LOGIT_OFFSET_METHODS:
            raise ConfigError(f"predict.logit_offsets must be one of {list(LOGIT_OFFSET_METHODS)}, got {method!r}")
        return method

    def fit_post_hoc(self, model, val_frame: pd.DataFrame, device, run_dir: Path, num_workers=0,
                     amp_dtype=None) -> np.ndarray | None:
        """With ``predict.logit_offsets: fit_val``: fit the offsets on ``val_frame`` (validation
        images only: any other split is refused), write them to logit_offsets.json and keep them
        for ``predict``. Otherwise remove a logit_offsets.json left by an earlier setting."""
        path = Path(run_dir) / rundir.LOGIT_OFFSETS
        self.offsets = None
        if self.logit_offset_method == "none":
            path.unlink(missing_ok=True)
            return None
        if val_frame.empty:
            raise DataError("predict.logit_offsets is fit_val but the split has no validation images")
        splits = sorted(set(val_frame["split"])) if "split" in val_frame else []
        if splits != ["val"]:
            raise DataError(f"logit offsets are fitted on the validation split only; got split(s) {splits}")
        logits, truth = self.logits(model, val_frame, device, num_workers, amp_dtype), self._truth(val_frame)
        offsets = fit_logit_offsets(logits, truth, self.num_outputs)
        before = balanced_accuracy_score(truth, logits.argmax(axis=1))
        after = balanced_accuracy_score(truth, (logits + offsets).argmax(axis=1))
        rundir.write_logit_offsets({
            "method": "fit_val", "split": "val", "n_images": len(val_frame),
            "objective": "class-balanced cross-entropy of the shifted validation logits",
            "classes": self.classes, "offsets": offsets,
            "val_balanced_accuracy": {"before": before, "after": after},
        }, run_dir)
        self.offsets = offsets
        return offsets

    def predict(self, model, frame, device, run_dir: Path, num_workers=0, amp_dtype=None) -> pd.DataFrame:
        """predictions.csv contract: image_id, label, pred, prob_<CLASS> in class-list order; with
        fitted logit offsets the probabilities are softmax(logits + offsets)."""
        logits = self.logits(model, frame, device, num_workers, amp_dtype)
        if self.logit_offset_method != "none":
            if self.offsets is None:
                raise TrainingError("predict.logit_offsets is fit_val but fit_post_hoc was not called first")
            logits = logits + self.offsets
        probs = softmax(logits, axis=1)
        return classification_predictions(frame["image_id"], frame["label"], probs, self.classes)
