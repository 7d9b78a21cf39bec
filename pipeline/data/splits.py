"""Seeded train / val / test splits, stratified by class and grouped by lesion or patient.

scikit-learn's StratifiedGroupKFold only makes equal folds, so the assignment is hand-written with the
same greedy idea (Sechidis et al., "On the stratification of multi-label data", ECML 2011, as used by
iterative stratification): groups are visited in a seeded order, rarest content first, and each goes to
the split whose per-class target it helps most. A split is written once and then frozen.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.data.manifest import SPLITS
from pipeline.errors import DataError


def assign_splits(strata: pd.DataFrame, groups: pd.Series, fractions: dict[str, float], seed: int,
                  fixed: pd.Series | None = None) -> pd.Series:
    """Return a split name per row.

    strata: one row per image, one column per class, counting that class in the image (a one-hot label
    for classification; lesion counts per type for segmentation). groups: group id per row. fixed: split
    already set by the data source ('' where free); free rows are spread over the splits that have no
    fixed rows (an official test set stays the only test set).
    """
    fixed = pd.Series("", index=strata.index) if fixed is None else fixed.fillna("")
    free = fixed == ""
    taken = {s for s in fixed[~free].unique()}
    targets_named = {s: float(fractions.get(s, 0.0)) for s in SPLITS if s not in taken}
    targets_named = {s: f for s, f in targets_named.items() if f > 0}
    if free.any() and not targets_named:
        raise DataError("no split left to fill: every split with a positive fraction is fixed by the data source")
    names = list(targets_named)
    weights = np.array([targets_named[s] for s in names])
    weights = weights / weights.sum()

    free_strata = strata[free].groupby(groups[free], sort=True).sum()
    counts = free_strata.to_numpy(dtype=float)
    totals = counts.sum(axis=0)
    target = np.outer(weights, totals)  # split × class
    current = np.zeros_like(target)
    rarity = np.where(totals > 0, 1.0 / np.maximum(totals, 1), 0.0)

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(counts))
    # Groups holding the rarest classes are placed first, while every split still has room for them.
    key = -(counts[order] * rarity).max(axis=1)
    order = order[np.argsort(key, kind="stable")]

    assignment = np.empty(len(counts), dtype=object)
    for g in order:
        need = np.where(target > 0, (target - current) / np.maximum(target, 1e-9), 0.0)
        score = (need * (counts[g] > 0)).sum(axis=1)
        # Ties: the split furthest below its overall size.
        size_need = (target.sum(axis=1) - current.sum(axis=1)) / np.maximum(target.sum(axis=1), 1e-9)
        best = max(range(len(names)), key=lambda s: (round(score[s], 12), size_need[s]))
        assignment[g] = names[best]
        current[best] += counts[g]

    group_split = pd.Series(assignment, index=free_strata.index)
    result = fixed.copy()
    result[free] = groups[free].map(group_split).to_numpy()
    return result


def check_every_class_in_every_split(strata: pd.DataFrame, splits: pd.Series, source: str) -> None:
    present = strata.groupby(splits).sum() > 0
    for split in [s for s in SPLITS if s in present.index]:
        missing = [c for c in strata.columns if not present.loc[split, c]]
        if missing:
            total = strata.sum()
            detail = ", ".join(f"{c} ({int(total[c])} in the data set)" for c in missing)
            raise DataError(
                f"{source}: split {split!r} has no example of class(es) {detail}. "
                "Every class must appear in train, val and test: add data for it, merge it in the class list, "
                "or change the split fractions."
            )


def strata_for(frame: pd.DataFrame, task: str, classes: list[str], lesion_counts: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-row count matrix the splitter stratifies on: one-hot labels (classification), or the
    segmentation task's strata (`SegmentationTask.split_strata`: lesions per type, or per grade)."""
    if task == "classification":
        return pd.get_dummies(frame["label"]).reindex(columns=classes, fill_value=0).astype(int)
    if lesion_counts is None:
        raise DataError("segmentation split needs lesion counts per type (n_<type> columns or masks)")
    return lesion_counts.fillna(0).astype(int)  # the task's strata: lesions per type, or per grade


def split_manifest(frame: pd.DataFrame, *, task: str, classes: list[str], fractions: dict[str, float], seed: int,
                   lesion_counts: pd.DataFrame | None = None) -> pd.DataFrame:
    """Fill the manifest's empty `split` cells; check no group spans two splits and every class is in every split."""
    source = frame.attrs.get("source", "manifest")
    strata = strata_for(frame, task, classes, lesion_counts)
    fixed = frame["split"].fillna("") if "split" in frame else None
    out = frame.copy()
    out["split"] = assign_splits(strata, frame["group_id"], fractions, seed, fixed=fixed).to_numpy()
    check_every_class_in_every_split(strata, out["split"], source)
    return out
