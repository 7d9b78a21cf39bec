"""Markdown tables of docs/SCIENCE.md, read from the CSVs the toy models wrote (never typed by hand):
``python -m pipeline.lab tables --out results/lab``."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd


def markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _signed(value: float, digits: int) -> str:
    text = f"{value:+.{digits}f}"
    return "+" + text[1:] if float(text) == 0 else text  # no "-0.00"


def _mean_sd(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "diverged"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std():.3f} (n={len(values)})"


def threshold_tables(out: Path) -> str:
    optimum = pd.read_csv(out / "threshold_optimum.csv")
    sgd = pd.read_csv(out / "threshold_sgd.csv")
    m = int(optimum["m"].iloc[0])
    parts = []

    unweighted = optimum[optimum["weighting"] == "none"]
    table = unweighted.pivot(index="eps", columns="ratio", values="theta_flow").sort_index(ascending=False)
    recall = unweighted.pivot(index="eps", columns="ratio", values="minority_recall").sort_index(ascending=False)
    cells = table.apply(lambda col: [f"{_signed(t, 2)} ({r:.2f})" for t, r in zip(col, recall[col.name])])
    cells.insert(0, "ε", [f"{e:g}" for e in table.index])
    cells.columns = ["ε", *[f"M/m = {c}" for c in table.columns]]
    gap = (optimum["theta_flow"] - optimum["theta_continuum"]).abs()
    parts.append(f"**Unweighted optimum, m = {m}: gradient-flow threshold θ (minority recall)**; "
                 f"θ = −{m} is the collapse (no point called minority). Largest |flow − continuum optimum| "
                 f"over all {len(optimum)} rows: {gap.max():.3f}.\n\n" + markdown(cells))

    shown = [eps for eps in (1e3, 1e1) if eps in set(optimum["eps"])] or sorted(optimum["eps"].unique())[-2:]
    for eps in shown:
        rows = []
        at = optimum[optimum["eps"] == eps]
        for ratio, group in at.groupby("ratio"):
            by = group.set_index("weighting")
            rows.append({"M/m": ratio, "w* (balancing)": f"{by.loc['balancing', 'weight']:.3f}",
                         "θ, w = 1": _signed(by.loc['none', 'theta_flow'], 3),
                         "θ, w = w*": _signed(by.loc['balancing', 'theta_flow'], 4),
                         "θ, w = M/m": _signed(by.loc['inverse', 'theta_flow'], 3),
                         "majority recall, w = M/m": f"{by.loc['inverse', 'majority_recall']:.3f}"})
        parts.append(f"**Weightings at ε = {eps:g} (m = {m})**\n\n" + markdown(pd.DataFrame(rows)))

    rows = []
    for eps, group in sgd.groupby("eps", sort=False):
        by = group.set_index("schedule")
        row = {"ε": f"{eps:g}"}
        for schedule in ("fixed", "coupled"):
            r = by.loc[schedule]
            row[f"{schedule}: lr"] = f"{r['lr']:g}"
            row[f"{schedule}: mean θ"] = _signed(r['theta_mean'], 3)
            row[f"{schedule}: SD θ (OU)"] = f"{r['theta_sd']:.3f} ({r['ou_sd']:.3f})"
            row[f"{schedule}: SD/√ε"] = f"{r['sd_over_sqrt_eps']:.3f}"
        rows.append(row)
    first = sgd.iloc[0]
    parts.append(f"**Mini-batch flow around the optimum θ = 0 (m = {m}, M/m = {int(first['ratio'])}, balancing "
                 f"weight; batch {int(first['batch'])}, {int(first['chains'])} chains × {int(first['steps'])} steps, "
                 f"statistics over the second half; OU = the linearised prediction)**\n\n" + markdown(pd.DataFrame(rows)))
    return "\n\n".join(parts)


def spiral_tables(folders: list[Path]) -> str:
    runs = pd.concat([pd.read_csv(folder / "spiral_runs.csv") for folder in folders], ignore_index=True)
    runs = runs.drop_duplicates(subset=["width", "lr", "steps", "period", "loss", "seed"])
    rows = []
    for (width, lr, steps), group in runs.groupby(["width", "lr", "steps"], sort=False):
        by = {name: g for name, g in group.groupby("loss")}
        rows.append({"width": width, "lr": f"{lr:g}", "steps": steps,
                     "periods": int(steps // by["dynamical"]["period"].iloc[0]),
                     "seeds": len(by["ce"]),
                     "val acc, static CE": _mean_sd(by["ce"]["val_accuracy"]),
                     "val acc, dynamical": _mean_sd(by["dynamical"]["val_accuracy"]),
                     "train acc, static CE": _mean_sd(by["ce"]["train_accuracy"]),
                     "train acc, dynamical": _mean_sd(by["dynamical"]["train_accuracy"])})
    per_seed = runs[(runs["width"] == runs["width"].iloc[0]) & (runs["lr"] == runs["lr"].iloc[0])]
    seeds = per_seed.pivot(index="seed", columns="loss", values="val_accuracy").reset_index()
    seeds.columns = ["seed", *[f"val acc, {'static CE' if c == 'ce' else 'dynamical'}" for c in seeds.columns[1:]]]
    cpu = runs["cpu_seconds"].sum()
    return ("**Spiral sweep (A = 70, final period plain CE)**\n\n" + markdown(pd.DataFrame(rows))
            + "\n\n**Reference configuration, per seed**\n\n"
            + markdown(seeds.map(lambda v: f"{v:.3f}" if isinstance(v, float) and not math.isnan(v) else v))
            + f"\n\nTotal training CPU time: {cpu / 60:.1f} min (one thread).")


def run(out: Path, also: list[Path] = ()) -> str:
    """The tables of ``out`` (threshold and spiral); spiral runs of the ``also`` folders are pooled in."""
    out = Path(out)
    parts = []
    if (out / "threshold_optimum.csv").is_file():
        parts.append(threshold_tables(out))
    spiral_folders = [folder for folder in (out, *map(Path, also)) if (folder / "spiral_runs.csv").is_file()]
    if spiral_folders:
        parts.append(spiral_tables(spiral_folders))
    return "\n\n".join(parts)
