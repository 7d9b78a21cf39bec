"""Which test images the report's galleries show: selection only, no metric. One rule, used by
the report (pipeline.reporting.html) and by the predict stage, which draws their Grad-CAM++
overlays (pipeline.saliency)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

GALLERY_SIZE = 8


def boundary_cases(predictions: pd.DataFrame, classes: Sequence[str], n: int = GALLERY_SIZE) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The most confidently wrong images and those nearest a tie between their top two classes.

    Selection only (no metric): confidence is the stored probability of the stored prediction;
    the margin is the gap between the two largest class probabilities.
    """
    probs = predictions[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    index = {c: i for i, c in enumerate(classes)}
    table = predictions[["image_id", "label", "pred"]].copy()
    table["confidence"] = probs[np.arange(len(probs)), predictions["pred"].map(index).to_numpy()]
    table["p_true"] = probs[np.arange(len(probs)), predictions["label"].map(index).to_numpy()]
    top_two = np.sort(probs, axis=1)[:, ::-1][:, :2] if probs.shape[1] > 1 else np.column_stack([probs[:, 0], probs[:, 0]])
    table["margin"] = top_two[:, 0] - top_two[:, 1]
    wrong = table[table["label"] != table["pred"]]
    return (
        wrong.sort_values(["confidence", "image_id"], ascending=[False, True]).head(n),
        table.sort_values(["margin", "image_id"]).head(n),
        len(wrong),
    )
