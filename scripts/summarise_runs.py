"""Print a Markdown table of mean ± sample SD over seeds from results/<experiment>/seed<k>/metrics.json.

Used to write docs/BENCHMARKS.md: every figure is read from metrics.json (computed by the evaluate
stage from predictions), never typed.

    python scripts/summarise_runs.py results [--classes DF VASC]
    python scripts/summarise_runs.py results/studies/small_lesions --compact   (segmentation: recall / Dice per type)
    python scripts/summarise_runs.py results/reference      (scripts/reference_timm_loop.py's reference.json files)

Classification rows also give the accuracy and the training time of a run in minutes (the sum of
its epochs' seconds in training_summary.json; the logistic-regression baseline's total seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def fmt(values: list[float]) -> str:
    values = list(values)
    defined = [v for v in values if v is not None and v == v]  # None / NaN: undefined on that seed
    if not defined:
        return "n/a"
    mean = statistics.fmean(defined)
    if len(values) == 1:
        return f"{mean:.3f}"  # one seed: no spread to show
    spread = statistics.stdev(defined) if len(defined) > 1 else 0.0
    fewer = f" (n={len(defined)})" if len(defined) < len(values) else ""
    return f"{mean:.3f} ± {spread:.3f}{fewer}"


def training_minutes(summary: dict) -> float | None:
    """A run's training time: the baseline's total seconds, else the sum of its epochs' seconds."""
    if "seconds" in summary:
        return summary["seconds"] / 60
    epochs = [row.get("seconds") for row in summary.get("history", [])]
    return sum(epochs) / 60 if epochs and None not in epochs else None


def detection_f1(detection: dict) -> float | None:
    """Lesion detection F1 (any type) = 2 x matched / (annotated + found), from metrics.json's counts."""
    matched, annotated, found = detection["sensitivity"].get("k"), detection["sensitivity"].get("n"), detection["ppv"].get("n")
    if None in (matched, annotated, found) or annotated + found == 0:
        return None
    return 2 * matched / (annotated + found)


def reference_metrics(result: dict) -> dict:
    """scripts/reference_timm_loop.py's reference.json in the shape of metrics.json (no AUC)."""
    recall = result["recall"]
    return {"task": "classification", "classes": list(recall),
            "balanced_accuracy": {"value": result["balanced_accuracy"]}, "accuracy": {"value": result["accuracy"]},
            "per_class": {c: {"sensitivity": {"value": r}} for c, r in recall.items()},
            "_training": {"seconds": result["seconds"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--classes", nargs="*", default=None, help="classes / lesion types to show (default: all)")
    parser.add_argument("--compact", action="store_true",
                        help="segmentation: optimizer steps, the validation score that selected the model, and "
                             "'lesion recall / Dice' per type; classification: the validation score column added")
    args = parser.parse_args()

    runs: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(args.results.glob("*/seed*/metrics.json")):
        metrics = json.loads(path.read_text())
        summary = path.parent / "training_summary.json"
        metrics["_training"] = json.loads(summary.read_text()) if summary.is_file() else {}
        tuned = path.parent / "postprocessing.json"  # segmentation: the validation F1 that chose it
        metrics["_postprocessing"] = json.loads(tuned.read_text()) if tuned.is_file() else {}
        runs[path.parent.parent.name].append(metrics)
    for path in sorted(args.results.glob("*/seed*/reference.json")):
        runs[path.parent.parent.name].append(reference_metrics(json.loads(path.read_text())))
    by_task = defaultdict(dict)
    for experiment, metrics in runs.items():
        by_task[metrics[0]["task"]][experiment] = metrics

    for task, experiments in by_task.items():
        classes = args.classes or next(iter(experiments.values()))[0]["classes"]
        classes = [c for c in classes if c in next(iter(experiments.values()))[0]["classes"]]
        if task == "classification":
            header = (["experiment", "seeds", "balanced accuracy", "accuracy", "macro AUC"]
                      + [f"sens. {c}" for c in classes] + ["train min"])
            rows = [[e, str(len(m)), fmt([x["balanced_accuracy"]["value"] for x in m]),
                     fmt([x["accuracy"]["value"] for x in m]), fmt([(x.get("macro_auc") or {}).get("value") for x in m])]
                    + [fmt([x["per_class"][c]["sensitivity"]["value"] for x in m]) for c in classes]
                    + [fmt([training_minutes(x["_training"]) for x in m])]
                    for e, m in experiments.items()]
            if args.compact:  # the validation score that selected each model: choose settings by it, not by test
                header[2:2] = ["val. balanced accuracy (selection)"]
                for row, m in zip(rows, experiments.values()):
                    row[2:2] = [fmt([x["_training"].get("best_val_balanced_accuracy") for x in m])]
        elif args.compact:
            header = ["experiment", "seeds", "steps", "val. macro Dice (selection)", "test mean Dice",
                      "test macro Dice"] + [f"{c}: recall / Dice" for c in classes]
            rows = []
            for e, m in experiments.items():
                training = [x["_training"] for x in m]
                row = [e, str(len(m)), "/".join(sorted({str(t.get("steps", "?")) for t in training})),
                       fmt([t.get("best_val_macro_dice") for t in training]),
                       fmt([x["mean_dice"]["value"] for x in m]), fmt([(x.get("macro_dice") or {}).get("value") for x in m])]
                row += [fmt([x["per_class"][c]["sensitivity"]["value"] for x in m]) + " / "
                        + fmt([x["per_class"][c]["dice"]["value"] for x in m]) for c in classes]
                rows.append(row)
        else:
            header = ["experiment", "seeds", "mean Dice", "macro Dice", "val. lesion F1 (post-processing choice)",
                      "lesion F1 (any type)", "lesion recall (any type)", "count MAE / image (the count graded)", "grading accuracy",
                      "grading kappa"]
            for c in classes:
                header += [f"{c} recall", f"{c} precision", f"{c} Dice"]
            rows = []
            for e, m in experiments.items():
                grading = [x.get("grading") or {} for x in m]
                row = [e, str(len(m)), fmt([x["mean_dice"]["value"] for x in m]),
                       fmt([(x.get("macro_dice") or {}).get("value") for x in m]),
                       fmt([x["_postprocessing"].get("val_f1") for x in m]),
                       fmt([detection_f1(x["lesion_detection"]) for x in m]),
                       fmt([x["lesion_detection"]["sensitivity"]["value"] for x in m]),
                       fmt([(g.get("count_mae") if g.get("count_mae") is not None else x["lesion_count_error"]["mae"])
                            for x, g in zip(m, grading)]),
                       fmt([(g.get("accuracy") or {}).get("value") for g in grading]),
                       fmt([(g.get("kappa") or {}).get("value") for g in grading])]
                for c in classes:
                    row += [fmt([x["per_class"][c]["sensitivity"]["value"] for x in m]),
                            fmt([x["per_class"][c]["ppv"]["value"] for x in m]),
                            fmt([x["per_class"][c]["dice"]["value"] for x in m])]
                rows.append(row)
        print(f"\n**{task}**\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
