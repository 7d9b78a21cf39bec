"""Print a Markdown table of mean ± sample SD over seeds from results/<experiment>/seed<k>/metrics.json.

Used to write docs/BENCHMARKS.md: every figure is read from metrics.json (computed by the evaluate
stage from predictions), never typed.

    python scripts/summarise_runs.py results [--classes DF VASC]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def fmt(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {spread:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--classes", nargs="*", default=None, help="classes / lesion types to show (default: all)")
    args = parser.parse_args()

    runs: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(args.results.glob("*/seed*/metrics.json")):
        runs[path.parent.parent.name].append(json.loads(path.read_text()))
    by_task = defaultdict(dict)
    for experiment, metrics in runs.items():
        by_task[metrics[0]["task"]][experiment] = metrics

    for task, experiments in by_task.items():
        classes = args.classes or next(iter(experiments.values()))[0]["classes"]
        classes = [c for c in classes if c in next(iter(experiments.values()))[0]["classes"]]
        if task == "classification":
            header = ["experiment", "seeds", "balanced accuracy", "macro AUC"] + [f"sens. {c}" for c in classes]
            rows = [[e, str(len(m)), fmt([x["balanced_accuracy"]["value"] for x in m]),
                     fmt([x["macro_auc"]["value"] for x in m])]
                    + [fmt([x["per_class"][c]["sensitivity"]["value"] for x in m]) for c in classes]
                    for e, m in experiments.items()]
        else:
            header = ["experiment", "seeds", "mean Dice", "lesion recall (any type)"]
            for c in classes:
                header += [f"{c} recall", f"{c} precision", f"{c} Dice"]
            rows = []
            for e, m in experiments.items():
                row = [e, str(len(m)), fmt([x["mean_dice"]["value"] for x in m]),
                       fmt([x["lesion_detection"]["sensitivity"]["value"] for x in m])]
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
