"""Where a classifier looked: Grad-CAM++ overlays for the report's boundary cases and ``infer --explain``.

Grad-CAM++ (Chattopadhay, Sarkar, Howlader and Balasubramanian, "Grad-CAM++: Improved Visual
Explanations for Deep Convolutional Networks", WACV 2018) as implemented by MONAI
(``monai.visualize.GradCAMpp``), on the last feature stage of the timm backbone
(``feature_info[-1]``), for the class the model predicted. Each map is drawn over the image the
model saw (the evaluation crop), so a clinician can tell a model that looked at the lesion from one
that looked at a ruler, a hair or the vignette. A saliency map is a hint, not a proof: it shows
what moved the score, not why.

The predict stage writes ``saliency/<image_id>.png`` for the report's two galleries (the most
confidently wrong test images, and those nearest a tie), selected by ``pipeline.evaluation.cases.boundary_cases``,
the one selection rule the report also uses. ``predict.saliency: none`` turns it off.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import rundir
from pipeline.evaluation.cases import boundary_cases

log = logging.getLogger("pipeline.saliency")
METHODS = ("gradcam_pp", "none")
SALIENCY_DIR = rundir.SALIENCY_DIR


MIN_MAP_SIDE = 7  # the Grad-CAM papers' setting: ResNet's last stage on 224-px images is 7 x 7


def target_layer(model, image_side: int | None = None) -> str | None:
    """Name of the module whose activations Grad-CAM++ weighs, or None for a model without a
    feature stage (then no maps are drawn). The last feature stage of the timm backbone
    (``feature_info``), as in the papers, unless on ``image_side``-px inputs its map would be
    smaller than 7 x 7 (a 64-px image gives ResNet's last stage a 2 x 2 map, four blocks of
    colour): then the deepest stage with a map of at least 7 x 7."""
    backbone, prefix = (model.backbone, "backbone.") if hasattr(model, "backbone") else (model, "")
    info = getattr(backbone, "feature_info", None)
    if not info:
        return None
    stages = [stage for stage in (info if isinstance(info, list) else info.get_dicts()) if stage.get("module")]
    if not stages:
        return None
    fine = [stage for stage in stages if not image_side or image_side // int(stage.get("reduction", 1)) >= MIN_MAP_SIDE]
    return prefix + (fine[-1] if fine else stages[0])["module"]


def saliency_maps(model, images, class_indices: Sequence[int]) -> np.ndarray | None:
    """Grad-CAM++ maps (N, H, W) in [0, 1] of normalised ``images`` (N, 3, H, W) for one class
    each; None when the model has no convolutional stage to explain."""
    import torch
    from monai.visualize import GradCAMpp

    layer = target_layer(model, min(images.shape[-2:]))
    if layer is None:
        return None
    # MONAI registers hooks it never removes (and turns in-place activations off): a copy carries
    # them, so the caller's model is left as it was
    model = copy.deepcopy(model).eval()
    # MONAI's default post-processing maps (min, max) to (1, 0); a heat map wants max -> 1
    cam = GradCAMpp(nn_module=model, target_layers=layer, postprocessing=_min_max)
    maps = []
    for image, class_index in zip(images, class_indices):
        with torch.enable_grad(), warnings.catch_warnings():
            # the hook sees gradients of the layer's output only (the image needs none): intended
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            maps.append(cam(x=image[None], class_idx=int(class_index))[0, 0].detach().float().cpu().numpy())
    return np.stack(maps)


def _min_max(maps):
    """Each map scaled to [0, 1] (min -> 0, max -> 1); a constant map (no evidence) becomes 0."""
    import torch

    low = maps.amin(dim=tuple(range(1, maps.ndim)), keepdim=True)
    span = maps.amax(dim=tuple(range(1, maps.ndim)), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``image`` (H, W, 3 uint8) with ``heat`` (H, W, in [0, 1]) blended in as a 'jet' colour map."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * colours, 0, 255).astype(np.uint8)


def explain(task, model, frame: pd.DataFrame, class_indices: Sequence[int], out_dir: Path, device) -> list[Path]:
    """Write ``out_dir/<image_id>.png``: the Grad-CAM++ map of ``class_indices[i]`` over the
    evaluation crop of image i of ``frame``; returns the paths ([] when the model cannot be explained)."""
    import torch

    from pipeline.data.io import write_png_atomic

    if frame.empty:
        return []
    dataset = task.eval_dataset(frame, model, cache=False)  # a few images, read once
    norm = task._normalisation(model)
    mean = torch.tensor(norm["mean"]).view(3, 1, 1)
    std = torch.tensor(norm["std"]).view(3, 1, 1)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    maps = saliency_maps(model, images.to(device), class_indices)
    if maps is None:
        log.warning("%s has no convolutional feature stage (timm feature_info): no saliency maps",
                    task.cfg["model"]["name"])
        return []
    paths = []
    for image_id, image, heat in zip(frame["image_id"], images, maps):
        crop = ((image * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        paths.append(write_png_atomic(overlay_heatmap(crop, heat), Path(out_dir) / f"{image_id}.png"))
    return paths


def explain_boundary_cases(task, model, frame: pd.DataFrame, predictions: pd.DataFrame, run_dir: Path, device) -> list[Path]:
    """The predict stage's saliency: maps of the predicted class for the report's two galleries,
    written to ``run_dir/saliency`` (emptied first, so no map of an earlier model survives)."""
    out = Path(run_dir) / SALIENCY_DIR
    for old in out.glob("*.png") if out.is_dir() else []:
        old.unlink()
    wrong, ties, _ = boundary_cases(predictions, task.classes)
    chosen = pd.concat([wrong, ties])["image_id"].drop_duplicates().tolist()
    if not chosen:
        return []
    rows = frame.set_index("image_id").loc[chosen].reset_index()
    index = {c: i for i, c in enumerate(task.classes)}
    predicted = predictions.set_index("image_id").loc[chosen, "pred"].map(index).tolist()
    return explain(task, model, rows, predicted, out, device)
