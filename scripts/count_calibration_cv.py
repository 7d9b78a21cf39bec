"""Choose `predict.count_calibration` on the VALIDATION photos of trained segmentation runs, by
cross-validation: which count a grade should be read from (the lesions found, or the annotated
count a line / isotonic map fitted on other validation photos expects from them).

    python scripts/count_calibration_cv.py results/acne04/acne04_dice_ce/seed0 [more runs] \
        [--out counts.npz] [--folds 5] [--repeats 5]
    python scripts/count_calibration_cv.py --counts counts.npz      (the cross-validation again, no prediction)
    python scripts/count_calibration_cv.py --counts counts.npz --count-cell   (+ the count read at its own grid cell)

For each run: its best checkpoint predicts the validation photos once (`SegmentationTask.grid_counts`,
the tuning step's own counting); at the post-processing the tuning step chooses (lesion threshold and minimum area by lesion detection F1, the run's grid) each
photo gives (lesions found, lesions annotated, annotated grade) and its lesion mass at the chosen
threshold (`pipeline.tasks.segmentation.lesion_mass`). Then, for each method of
`pipeline.evaluation.instances.COUNT_CALIBRATIONS`, read from the lesions found and (`predict.count_from:
lesion_mass`) from the lesion mass, k-fold cross-validation over the validation
photos (fit on k-1 folds, grade the held-out fold; repeated with reshuffled folds) gives grading
accuracy, quadratic kappa and count MAE. The test split is never read. `--out` keeps the per-photo
counts of the whole grid of each run (photo, threshold, area, [matched, annotated, found]) and the
lesion masses (photo, threshold), with the grid, the annotated grades and the grading thresholds;
`--counts` reads them back (files written before the masses were kept give the lesion-count rows only).

`--count-cell` asks whether the grade should be read at another post-processing cell than the
detection one (a stricter threshold or area that over-counts mild faces less): nested
cross-validation, where inside each outer fit set the cell is chosen by an inner 4-fold
cross-validation (by grading accuracy, or by count MAE) and a Huber line fitted there grades the
held-out photos.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.metrics import cohen_kappa_score
from sklearn.model_selection import KFold

from pipeline.data.instances import HAYASHI_THRESHOLDS, grade_from_count
from pipeline.evaluation.instances import COUNT_CALIBRATIONS, calibrated_counts, fit_count_calibration
from pipeline.predict import load_best_model
from pipeline.tasks.segmentation import best_grid_cell
from pipeline.training import load_split, select_device


def validation_counts(run: Path) -> tuple[np.ndarray, list[float], list[int], np.ndarray, list[float], np.ndarray]:
    """Per photo, threshold and area: (matched, annotated, found) lesions, counted as the tuning step
    counts them; the annotated grades and grading thresholds; the lesion masses (photo, threshold)."""
    cfg = yaml.safe_load((run / "run.yaml").read_text())
    device = select_device(cfg["train"]["device"])
    task, model = load_best_model(cfg, device)
    frame = load_split(cfg)
    val = frame[frame["split"] == "val"].reset_index(drop=True)
    with torch.no_grad():
        counts, thresholds, areas, masses = task.grid_counts(model, val, device)
    grades = [float(g) if str(g).strip() not in ("", "nan", "None") else math.nan for g in val.get("grade", [math.nan] * len(val))]
    thresholds_grading = list(cfg["dataset"].get("grading", {}).get("thresholds", HAYASHI_THRESHOLDS))
    return counts, thresholds, areas, np.array(grades), thresholds_grading, masses


def grading_scores(estimate: np.ndarray, annotated: np.ndarray, reference: np.ndarray,
                   thresholds: list[float]) -> tuple[float, float, float]:
    """Grading accuracy, quadratic kappa and count MAE of held-out count estimates."""
    graded = grade_from_count(estimate, thresholds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = float(cohen_kappa_score(reference, graded, weights="quadratic"))
    return float(np.mean(graded == reference)), kappa, float(np.mean(np.abs(estimate - annotated)))


def cross_validate(found: np.ndarray, annotated: np.ndarray, reference: np.ndarray, thresholds: list[float],
                   method: str, folds: int, repeats: int, count_from: str = "lesions") -> tuple[float, float, float]:
    results = []
    estimate = np.zeros_like(found, dtype=float)
    for repeat in range(repeats):
        for fit_rows, held_out in KFold(folds, shuffle=True, random_state=repeat).split(found):
            calibration = fit_count_calibration(found[fit_rows], annotated[fit_rows], method, count_from)
            estimate[held_out] = calibrated_counts(found[held_out], calibration)
        results.append(grading_scores(estimate, annotated, reference, thresholds))
    return tuple(float(x) for x in np.mean(results, axis=0))


def nested_count_cell(counts: np.ndarray, reference: np.ndarray, thresholds: list[float], criterion: str,
                      folds: int, repeats: int) -> tuple[float, float, float]:
    """Grading when the cell a count is read at is chosen on each outer fit set (inner 4-fold CV by
    ``criterion``: "accuracy" or "mae"), with a Huber line fitted there; mean over repeats."""
    n_photos, n_t, n_a, _ = counts.shape
    annotated_all = counts[:, 0, 0, 1].astype(float)

    def inner(rows: np.ndarray, t: int, a: int) -> float:
        found, annotated = counts[rows, t, a, 2].astype(float), counts[rows, t, a, 1].astype(float)
        estimate = np.zeros(len(rows))
        for fit, held in KFold(4, shuffle=True, random_state=0).split(rows):
            if np.ptp(found[fit]) == 0:
                return -math.inf
            estimate[held] = calibrated_counts(found[held], fit_count_calibration(found[fit], annotated[fit], "huber"))
        mae = float(np.mean(np.abs(estimate - annotated)))
        if criterion == "mae":
            return -mae
        return float(np.mean(grade_from_count(estimate, thresholds) == reference[rows])) - 1e-3 * mae  # ties: MAE

    results = []
    for repeat in range(repeats):
        estimate = np.zeros(n_photos)
        for fit_rows, held_out in KFold(folds, shuffle=True, random_state=repeat).split(np.arange(n_photos)):
            scores = np.array([[inner(fit_rows, t, a) for a in range(n_a)] for t in range(n_t)])
            t, a = np.unravel_index(int(np.argmax(scores)), scores.shape)
            found = counts[:, t, a, 2].astype(float)
            calibration = fit_count_calibration(found[fit_rows], counts[fit_rows, t, a, 1].astype(float), "huber")
            estimate[held_out] = calibrated_counts(found[held_out], calibration)
        results.append(grading_scores(estimate, annotated_all, reference, thresholds))
    return tuple(float(x) for x in np.mean(results, axis=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="trained segmentation run folders (run.yaml, checkpoints/best.pt)")
    parser.add_argument("--out", type=Path, help="write the per-photo validation counts of every run here (.npz)")
    parser.add_argument("--counts", type=Path, help="cross-validate the counts an earlier --out wrote, predicting nothing")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--count-cell", action="store_true",
                        help="also grade at a grid cell chosen for counting by nested cross-validation (slow: minutes a run)")
    args = parser.parse_args()
    if bool(args.runs) == bool(args.counts):
        parser.error("give run folders or --counts, not both")
    if args.counts:
        stored = np.load(args.counts, allow_pickle=False)
        names = [str(name) for name in stored["runs"]]
        runs = {name: tuple(stored[f"{key}{i}"] for key in ("counts", "thresholds", "areas", "grades", "grading"))
                + (stored[f"masses{i}"] if f"masses{i}" in stored else None,) for i, name in enumerate(names)}
    else:
        runs = {str(run): validation_counts(run) for run in args.runs}
    table = {}
    for run, (counts, thresholds, areas, grades, grading, masses) in runs.items():
        thresholds, areas, grading = list(map(float, thresholds)), list(map(int, areas)), list(map(float, grading))
        t, a = best_grid_cell(counts)  # the cell the tuning step chooses
        total = counts[:, t, a].sum(axis=0)
        f1 = 2 * total[0] / max(total[1] + total[2], 1)
        found, annotated = counts[:, t, a, 2].astype(float), counts[:, t, a, 1].astype(float)
        from_counts = grade_from_count(annotated, grading)
        reference = np.where(np.isnan(grades), from_counts, grades).astype(np.int64)
        print(f"{run}: {len(found)} validation photos; threshold {thresholds[t]}, area {areas[a]} px, "
              f"validation F1 {f1:.3f}; mean found - annotated {np.mean(found - annotated):+.1f}")
        for method in COUNT_CALIBRATIONS:
            result = cross_validate(found, annotated, reference, grading, method, args.folds, args.repeats)
            table.setdefault(method, []).append(result)
            print(f"  {method:9s} grading {result[0]:.3f}  kappa {result[1]:.3f}  count MAE {result[2]:.2f}")
        for method in COUNT_CALIBRATIONS[1:] if masses is not None else ():
            # the same lines read from the lesion mass at the chosen threshold (predict.count_from: lesion_mass)
            result = cross_validate(masses[:, t].astype(float), annotated, reference, grading, method, args.folds,
                                    args.repeats, count_from="lesion_mass")
            table.setdefault(f"{method}, from the lesion mass", []).append(result)
            print(f"  {method:9s} from the lesion mass: grading {result[0]:.3f}  kappa {result[1]:.3f}  count MAE {result[2]:.2f}")
        if args.count_cell:
            for criterion in ("accuracy", "mae"):
                method = f"huber, count cell by {criterion}"
                result = nested_count_cell(counts, reference, grading, criterion, args.folds, args.repeats)
                table.setdefault(method, []).append(result)
                print(f"  {method}: grading {result[0]:.3f}  kappa {result[1]:.3f}  count MAE {result[2]:.2f}")
    if len(runs) > 1:
        print(f"mean ± SD over {len(runs)} runs ({args.folds}-fold cross-validation on validation, {args.repeats} repeats):")
        print("| count_calibration | grading accuracy | quadratic kappa | count MAE |\n|---|---|---|---|")
        for method, rows in table.items():
            rows = np.array(rows)
            mean, sd = rows.mean(axis=0), rows.std(axis=0, ddof=1)
            print(f"| {method} | {mean[0]:.3f} ± {sd[0]:.3f} | {mean[1]:.3f} ± {sd[1]:.3f} | {mean[2]:.2f} ± {sd[2]:.2f} |")
    if args.out:
        arrays = {f"{key}{i}": np.asarray(value) for i, record in enumerate(runs.values())
                  for key, value in zip(("counts", "thresholds", "areas", "grades", "grading", "masses"), record)
                  if value is not None}
        np.savez(args.out, runs=np.array(list(runs)), **arrays)


if __name__ == "__main__":
    main()
