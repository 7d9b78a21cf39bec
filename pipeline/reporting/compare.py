"""Cross-experiment comparison: results/comparison.csv and results/comparison.html.

One row per experiment (mean and spread over seeds when there are several), the best value of
each column marked, and for every experiment a paired bootstrap over test images against its
task's baseline (computed by ``pipeline.evaluation.paired``): the difference in
balanced accuracy and in each class's sensitivity (segmentation: mean Dice and each type's
lesion sensitivity), with its 95% CI and a plain verdict.

Several seeds: the runs of the two experiments are paired seed by seed (seeds present in both),
and the bootstrap statistic is the seed-averaged difference, every seed's predictions resampled
with the same test images; so the interval reflects test-set sampling of the seed-averaged
models, while the spread across seeds is shown separately (SD and range). Each seed pair's own
bootstrap is listed too.

Training length: each run's optimizer steps are read from its training_summary.json and shown
per experiment; an experiment whose steps differ from its baseline's is flagged, because a
difference in the metrics may then come from training longer, not from the method (an
oversampler with ``epoch_size: expanded`` takes ~2.9x the steps of plain shuffling at equal
``epochs``). A run without a training summary has unknown steps and is not flagged.

Baselines: ``baselines`` maps task -> experiment (the workflow config's ``baselines``). A bare
``baseline`` name is also accepted and applies to the task it belongs to. A task with none
configured uses its first experiment in ``run_dirs`` order, and the report says so.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import rundir
from pipeline.atomic import write_text
from pipeline.errors import ConfigError, DataError
from pipeline.evaluation import paired
from pipeline.evaluation.collapse import collapse_text
from pipeline.reporting import captions, figures
from pipeline.reporting.html import render, scalar

# What the comparison shows per task, in the order the sections appear. ``columns``: (column key,
# heading, getter(metrics), higher is better, shown as a percentage), then one sensitivity column
# per class headed ``per_class``; ``headline``: the name of the paired comparison's first statistic;
# ``lesion_level``: per-class verdicts count lesion types, not classes.
TASK_VIEWS: dict[str, dict[str, Any]] = {
    "classification": {
        "columns": [
            ("balanced_accuracy", "Balanced accuracy", lambda m: m.get("balanced_accuracy"), True, True),
            ("macro_auc", "Macro AUC", lambda m: m.get("macro_auc"), True, False),
            ("ece", "ECE", lambda m: (m.get("calibration") or {}).get("ece"), False, False),
        ],
        "per_class": "Sensitivity",
        "headline": "Balanced accuracy",
        "lesion_level": False,
    },
    "segmentation": {
        "columns": [
            ("mean_dice", "Mean Dice", lambda m: m.get("mean_dice"), True, False),
            ("macro_dice", "Macro Dice", lambda m: m.get("macro_dice"), True, False),
            ("mean_iou", "Mean IoU", lambda m: m.get("mean_iou"), True, False),
            ("lesion_sensitivity", "Lesions found (any type)",
             lambda m: (m.get("lesion_detection") or {}).get("sensitivity"), True, True),
        ],
        "per_class": "Lesion sensitivity",
        "headline": "Mean Dice",
        "lesion_level": True,
    },
}


@dataclass
class Run:
    """One results/<experiment>/seed<k>/ directory."""

    run_dir: Path
    experiment: str
    seed: int
    task: str
    metrics: dict[str, Any]
    steps: int | None = None  # optimizer steps (training_summary.json), None when unknown


@dataclass
class Experiment:
    name: str
    task: str
    runs: dict[int, Run] = field(default_factory=dict)  # seed -> run

    @property
    def seeds(self) -> list[int]:
        return sorted(self.runs)

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in next(iter(self.runs.values())).metrics["classes"]]

    @property
    def steps(self) -> list[int]:
        """The distinct optimizer-step counts of its runs that are known, sorted."""
        return sorted({run.steps for run in self.runs.values() if run.steps is not None})

    @property
    def class_names(self) -> dict[str, str]:
        names = next(iter(self.runs.values())).metrics.get("class_names") or {}
        if isinstance(names, list):
            names = dict(zip(self.classes, names))
        return {c: captions.display_name(c, names.get(c)) for c in self.classes}


# ---------------------------------------------------------------------------------------------
# Loading and grouping
# ---------------------------------------------------------------------------------------------
def load_runs(run_dirs: Sequence[Path]) -> dict[str, dict[str, Experiment]]:
    """task -> experiment name -> Experiment, in the order the run directories were given."""
    if not run_dirs:
        raise ConfigError("compare: no run directories given")
    tasks: dict[str, dict[str, Experiment]] = {}
    for run_dir in map(Path, run_dirs):
        metrics = rundir.read_metrics(run_dir / rundir.METRICS)
        name = str(metrics.get("experiment") or run_dir.parent.name)
        seed = _seed_of(metrics, run_dir)
        task = metrics["task"]
        experiment = tasks.setdefault(task, {}).setdefault(name, Experiment(name, task))
        if seed in experiment.runs:
            raise DataError(f"{run_dir}: experiment {name!r} seed {seed} is also in {experiment.runs[seed].run_dir}")
        if experiment.runs and experiment.classes != [str(c) for c in metrics["classes"]]:
            raise DataError(f"{run_dir}: classes {metrics['classes']} differ from the other seeds of {name!r}")
        experiment.runs[seed] = Run(run_dir, name, seed, task, metrics, _steps_of(run_dir))
    for task, experiments in tasks.items():
        class_lists = {tuple(e.classes) for e in experiments.values()}
        if len(class_lists) > 1:
            raise DataError(f"{task} experiments use different class lists {sorted(class_lists)}: they cannot be compared")
    return tasks


def _steps_of(run_dir: Path) -> int | None:
    """Optimizer steps of a run from its training_summary.json; None without one."""
    summary = rundir.read_training_summary(run_dir)
    if summary is None or summary.get("steps") is None:
        return None
    steps = summary["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise DataError(f"{run_dir / rundir.TRAINING_SUMMARY}: 'steps' must be a non-negative integer, got {steps!r}")
    return steps


def steps_note(experiment: Experiment, baseline: Experiment) -> str:
    """A warning when the experiment's optimizer steps differ from the baseline's ('' otherwise,
    or when either is unknown)."""
    ours, theirs = experiment.steps, baseline.steps
    if not ours or not theirs or ours == theirs:
        return ""
    return (f"{experiment.name} took {_steps_text(ours)} optimizer steps, {baseline.name} {_steps_text(theirs)}: "
            "a difference in the figures may come from training length, not from the method "
            "(same epochs, batch size and sampler epoch_size: nominal give equal steps).")


def collapse_note(experiment: Experiment) -> str:
    """Which seeds of ``experiment`` gave up on a class (evaluation.collapse), and how; "" if none."""
    notes = []
    for seed in experiment.seeds:
        text = collapse_text(experiment.runs[seed].metrics.get("collapse"), experiment.class_names)
        if text:
            notes.append(f"seed {seed}: {text[len('This model '):]}")
    return "; ".join(notes)


def _steps_text(steps: Sequence[int]) -> str:
    return " / ".join(f"{s:,}" for s in steps) if steps else "n/a"


def _seed_of(metrics: Mapping[str, Any], run_dir: Path) -> int:
    if captions.is_number(metrics.get("seed")):
        return int(metrics["seed"])
    match = re.fullmatch(r"seed(\d+)", run_dir.name)
    if not match:
        raise DataError(f"{run_dir}: metrics.json has no seed and the folder is not named seed<k>")
    return int(match.group(1))


def resolve_baselines(
    tasks: Mapping[str, Mapping[str, Experiment]],
    baselines: Mapping[str, str] | None,
    baseline: str | None,
) -> dict[str, tuple[str, str]]:
    """task -> (baseline experiment, why it is the baseline)."""
    chosen: dict[str, tuple[str, str]] = {}
    for task, name in (baselines or {}).items():
        if task not in tasks:
            continue  # a configured baseline for a task with no runs here
        if name not in tasks[task]:
            raise ConfigError(f"baseline for {task} is {name!r}, which is not among its runs: {list(tasks[task])}")
        chosen[task] = (name, "configured")
    if baseline is not None:
        owners = [task for task, experiments in tasks.items() if baseline in experiments]
        if not owners:
            raise ConfigError(f"baseline {baseline!r} is not among the compared experiments: "
                              f"{[n for e in tasks.values() for n in e]}")
        chosen.setdefault(owners[0], (baseline, "configured"))
    for task, experiments in tasks.items():
        chosen.setdefault(task, (next(iter(experiments)), "first experiment listed (no baseline configured)"))
    return chosen


# ---------------------------------------------------------------------------------------------
# Summary rows (figures read from metrics.json)
# ---------------------------------------------------------------------------------------------
def _metric_columns(task: str, classes: Sequence[str], names: Mapping[str, str]) -> list[tuple[str, str, Callable, bool, bool]]:
    """(column key, heading, getter(metrics), higher is better, shown as a percentage)."""
    columns = list(TASK_VIEWS[task]["columns"])
    heading = TASK_VIEWS[task]["per_class"]
    for code in classes:
        columns.append((f"sensitivity_{code}", f"{heading}: {names[code]}",
                        lambda m, c=code: (m["per_class"].get(c) or {}).get("sensitivity"), True, True))
    return columns


def summarize(experiment: Experiment, getter: Callable) -> dict[str, Any]:
    """Mean, SD and range of one stored figure over seeds; with one seed, its stored 95% CI."""
    entries = [getter(run.metrics) for run in experiment.runs.values()]
    values = np.array([v for v in (scalar(e) for e in entries) if v is not None], dtype=float)
    summary: dict[str, Any] = {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan,
                               "ci95": None, "n": int(values.size)}
    if values.size:
        summary.update(mean=float(values.mean()), min=float(values.min()), max=float(values.max()))
    if values.size > 1:
        summary["sd"] = float(values.std(ddof=1))
    if len(entries) == 1 and isinstance(entries[0], Mapping):
        ci = entries[0].get("ci95")
        if ci and all(captions.is_number(v) for v in ci):
            summary["ci95"] = [float(ci[0]), float(ci[1])]
    return summary


def _summary_text(summary: Mapping[str, Any], percent: bool) -> tuple[str, str]:
    """(main figure, detail line): the mean, then the seed spread or the stored 95% CI."""
    if not captions.is_number(summary["mean"]):
        return "n/a", ""
    show = (lambda v: captions.pct(v, 1)) if percent else (lambda v: f"{v:.3f}")
    if summary["n"] > 1:
        sd = f"{100 * summary['sd']:.1f}" if percent else f"{summary['sd']:.3f}"
        return show(summary["mean"]), f"\u00b1 {sd}; {show(summary['min'])}\u2013{show(summary['max'])} over {summary['n']} seeds"
    if summary["ci95"]:
        return show(summary["mean"]), captions.ci_text(summary["ci95"], percent=percent, digits=1 if percent else 3)
    return show(summary["mean"]), ""


def _mark_best(rows: list[dict[str, Any]], columns: Sequence[tuple]) -> None:
    """Flag the best mean in each column (all of them on a tie)."""
    for key, _, _, higher, _ in columns:
        means = [row["cells"][key]["mean"] for row in rows]
        finite = [m for m in means if captions.is_number(m)]
        if len(finite) < 2:
            continue
        best = max(finite) if higher else min(finite)
        for row in rows:
            row["cells"][key]["best"] = captions.is_number(row["cells"][key]["mean"]) and math.isclose(
                row["cells"][key]["mean"], best, rel_tol=0, abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------
# Paired bootstrap against the baseline (computed by pipeline.evaluation.paired)
# ---------------------------------------------------------------------------------------------
def paired_differences(
    experiment: Experiment,
    baseline: Experiment,
    n_bootstrap: int,
    bootstrap_seed: int,
) -> dict[str, Any]:
    """Differences experiment - baseline over the seeds both have, with per-seed-pair detail."""
    common = sorted(set(experiment.seeds) & set(baseline.seeds))
    if not common:
        return {"seeds": [], "rows": [], "per_seed": [], "n_images": 0, "headline_caption": "", "per_class_caption": "", "note":
                f"no seed in common with the baseline ({experiment.seeds} vs {baseline.seeds}): not compared"}
    computed = paired.paired_differences(
        experiment.task, experiment.classes, {s: r.run_dir for s, r in experiment.runs.items()},
        {s: r.run_dir for s, r in baseline.runs.items()}, n_bootstrap=n_bootstrap, bootstrap_seed=bootstrap_seed)
    name_of = lambda result: _statistic_name(experiment, result["code"])  # noqa: E731
    rows = [_difference_row(r["key"], name_of(r), r, experiment.name, baseline.name) for r in computed["results"]]
    per_seed = [{"seed": r["seed"], **_difference_row(r["key"], name_of(r), r, experiment.name, baseline.name)}
                for r in computed["per_seed"]]
    summary = captions.per_class_verdict_caption(
        [(r["name"].split(": ", 1)[-1], r["verdict"]) for r in rows[1:]], TASK_VIEWS[experiment.task]["lesion_level"]
    )
    return {"seeds": computed["seeds"], "rows": rows, "per_seed": per_seed, "n_images": computed["n_images"], "note": "",
            "headline_caption": rows[0]["caption"], "per_class_caption": summary}


def _statistic_name(experiment: Experiment, code: str | None) -> str:
    """Display name of a compared statistic: the task's headline figure, or one class's sensitivity."""
    view = TASK_VIEWS[experiment.task]
    return view["headline"] if code is None else f"{view['per_class']}: {experiment.class_names[code]}"


def _difference_row(key: str, name: str, result: Mapping[str, Any], experiment: str, baseline: str) -> dict[str, Any]:
    noise = captions.within_noise(result)
    diff = result["difference"]
    verdict = "n/a" if noise is None else ("within noise" if noise else ("better" if diff > 0 else "worse"))
    ci = result.get("ci95") or [math.nan, math.nan]
    shown = captions.is_number(diff) and all(captions.is_number(v) for v in ci)
    points = lambda v: captions.signed_points(v).replace(" points", "")  # noqa: E731
    p_holm = result.get("p_holm")
    return {
        "key": key,
        "name": name,
        "difference": diff,
        "ci95": ci,
        "p_value": result.get("p_value"),
        "p_holm": p_holm,
        "n": result.get("n"),
        "verdict": verdict,
        "text": f"{points(diff)} ({points(ci[0])} to {points(ci[1])})" if shown else "n/a",
        "p_text": _p_text(result.get("p_value")),
        "p_holm_text": _p_text(p_holm) if p_holm is not None else "",
        "caption": captions.difference_caption(name, experiment, baseline, result),
    }


def _p_text(p: Any) -> str:
    return f"{p:.3f}" if captions.is_number(p) else "n/a"


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def write_comparison(
    *,
    run_dirs: Sequence[Path],
    out_csv: Path,
    out_html: Path,
    baselines: Mapping[str, str] | None = None,
    baseline: str | None = None,
    n_bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    figures_dir: Path | None = None,
) -> None:
    """Compare the runs in ``run_dirs`` (each results/<experiment>/seed<k>/); write the CSV (one
    row per experiment) and the self-contained HTML report. See the module docstring for the
    baseline rule and how seeds are handled."""
    from pipeline.reporting.html import FigureSink

    tasks = load_runs(run_dirs)
    chosen = resolve_baselines(tasks, baselines, baseline)
    if figures_dir is not None:  # a declared output even when nothing is compared (one experiment)
        Path(figures_dir).mkdir(parents=True, exist_ok=True)
    sink = FigureSink(figures_dir)
    sections, csv_rows = [], []
    for task in [t for t in TASK_VIEWS if t in tasks]:
        section, rows = _task_section(task, tasks[task], chosen[task], n_bootstrap, bootstrap_seed, sink)
        sections.append(section)
        csv_rows.extend(rows)
    html = render("comparison.html", title="Experiment comparison", sections=sections,
                  generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                  n_bootstrap=n_bootstrap, run_dirs=[str(p) for p in run_dirs])
    # Both files are complete before either is replaced, so a failure leaves the old pair intact.
    csv_text = pd.DataFrame(csv_rows).to_csv(index=False)
    write_text(out_csv, csv_text)
    write_text(out_html, html)


def _task_section(task: str, experiments: Mapping[str, Experiment], baseline: tuple[str, str],
                  n_bootstrap: int, bootstrap_seed: int, sink: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    base_name, base_reason = baseline
    first = next(iter(experiments.values()))
    columns = _metric_columns(task, first.classes, first.class_names)
    rows, comparisons = [], []
    for experiment in experiments.values():
        cells = {}
        for key, _, getter, _, percent in columns:
            summary = summarize(experiment, getter)
            main, detail = _summary_text(summary, percent)
            cells[key] = {**summary, "text": main, "detail": detail, "best": False}
        row = {"experiment": experiment.name, "seeds": experiment.seeds, "is_baseline": experiment.name == base_name,
               "cells": cells, "steps": experiment.steps, "steps_text": _steps_text(experiment.steps),
               "steps_note": steps_note(experiment, experiments[base_name]),
               "collapse": collapse_note(experiment)}
        if experiment.name != base_name:
            comparison = paired_differences(experiment, experiments[base_name], n_bootstrap, bootstrap_seed)
            comparisons.append({"experiment": experiment.name, "steps_note": row["steps_note"], **comparison})
            row["vs_baseline"] = comparison["rows"][0] if comparison["rows"] else None
        else:
            row["vs_baseline"] = None
        rows.append(row)
    _mark_best(rows, columns)
    by_name = {c["experiment"]: c for c in comparisons}
    csv_rows = [_csv_row(task, experiments[row["experiment"]], row, columns, base_name, by_name.get(row["experiment"]))
                for row in rows]
    forest = None
    headline = [(c["experiment"], c["rows"][0]) for c in comparisons if c["rows"]]
    if headline:
        forest = sink.add(
            figures.plot_differences([(name, r["difference"], r["ci95"]) for name, r in headline],
                                     f"{headline[0][1]['name']} minus {base_name}", None),
            f"{task}_differences", f"{headline[0][1]['name']}: difference to the baseline",
            f"Paired bootstrap over test images ({n_bootstrap} resamples), 95% intervals. An interval crossing "
            f"the dashed line at 0 means the test set cannot tell the experiment from {base_name}.",
        )
    section = {
        "task": task,
        "id": task,
        "baseline": base_name,
        "baseline_reason": base_reason,
        "columns": [(key, heading) for key, heading, _, _, _ in columns],
        "rows": rows,
        "comparisons": comparisons,
        "forest": forest,
        "multi_seed": any(len(e.seeds) > 1 for e in experiments.values()),
    }
    return section, csv_rows


def _csv_row(task: str, experiment: Experiment, row: Mapping[str, Any], columns: Sequence[tuple],
             baseline: str, comparison: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"task": task, "experiment": experiment.name, "baseline": baseline,
                           "is_baseline": experiment.name == baseline,
                           "seeds": " ".join(map(str, experiment.seeds)), "n_seeds": len(experiment.seeds),
                           "steps": " ".join(map(str, experiment.steps)),
                           "steps_differ_from_baseline": bool(row["steps_note"]),
                           "lazy": row["collapse"]}
    for key, *_ in columns:
        cell = row["cells"][key]
        ci = cell["ci95"] or [math.nan, math.nan]
        out.update({key: cell["mean"], f"{key}_sd": cell["sd"], f"{key}_min": cell["min"], f"{key}_max": cell["max"],
                    f"{key}_ci_lo": ci[0], f"{key}_ci_hi": ci[1], f"{key}_best": cell.get("best", False)})
    for diff in (comparison or {}).get("rows", []):
        key = diff["key"]
        out.update({f"diff_{key}": diff["difference"], f"diff_{key}_ci_lo": diff["ci95"][0],
                    f"diff_{key}_ci_hi": diff["ci95"][1], f"diff_{key}_p": diff["p_value"],
                    f"diff_{key}_verdict": diff["verdict"]})
    return out
