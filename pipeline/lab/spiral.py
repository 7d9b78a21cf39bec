"""The three-arm spiral of Ruiz-Garcia, Zhang, Schoenholz and Liu, "Tilting the playing field: Dynamical
loss functions for machine learning", ICML 2021 (seed 001), trained with the project's ``DynamicalLoss``
(pipeline/losses/dynamical.py) against static cross-entropy.

Set-up as in the authors' notebook (github.com/miguel-rg/dynamical-loss-functions): 100 points per
class, radius linspace(0, 1), angle linspace(2 pi c / 3, 2 pi c / 3 + 4 pi) plus N(0, 0.2^2) noise;
one hidden ReLU layer, Glorot-normal weights and N(0, 0.01^2) biases (stax's ``Dense`` defaults);
full-batch gradient descent (no momentum) on the mean loss; the dynamical weights are the project's
triangle schedule (amplitude A, period T, classes in turn, the last period plain CE with
``final_plain_ce``). The training set uses noise seed 0 (as the notebook); the validation set is a
second draw of the same spirals with noise seed 1.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.lab._output import plt, save_png, write_csv
from pipeline.losses import build_loss

CLASSES = 3


def make_spiral(points_per_class: int = 100, *, revolutions: float = 4.0, noise: float = 0.2,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (N, 2) float32 and labels (N,) of the three-arm spiral."""
    rng = np.random.RandomState(seed)
    xs, ys = [], []
    for arm in range(CLASSES):
        radius = np.linspace(0.0, 1.0, points_per_class)
        start = 2 * np.pi * arm / CLASSES
        angle = np.linspace(start, start + revolutions * np.pi, points_per_class) + rng.randn(points_per_class) * noise
        xs.append(np.c_[radius * np.cos(angle), radius * np.sin(angle)])
        ys.append(np.full(points_per_class, arm))
    return torch.tensor(np.concatenate(xs), dtype=torch.float32), torch.tensor(np.concatenate(ys), dtype=torch.long)


def make_network(width: int, seed: int) -> nn.Sequential:
    """Linear(2, width) - ReLU - Linear(width, 3), Glorot-normal weights, N(0, 0.01^2) biases."""
    generator = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, CLASSES))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            fan_out, fan_in = layer.weight.shape
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * math.sqrt(2.0 / (fan_in + fan_out)))
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.01)
    return net


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(dim=1) == y).double().mean())


def train(width: int, lr: float, loss_name: str, *, steps: int, amplitude: float = 70.0, period: int = 5000,
          seed: int = 0, record_every: int = 500, data: tuple | None = None) -> tuple[dict, pd.DataFrame, nn.Module]:
    """Full-batch gradient descent; ``loss_name`` 'ce' (static) or 'dynamical'.

    Returns the summary (final training / validation accuracy, diverged), the trace every
    ``record_every`` steps (step, training loss of plain CE, training and validation accuracy, share of
    the training points predicted as each class) and the network."""
    (x_train, y_train), (x_val, y_val) = data or (make_spiral(seed=0), make_spiral(seed=1))
    net = make_network(width, seed)
    criterion = (build_loss("ce", num_classes=CLASSES) if loss_name == "ce" else
                 build_loss("dynamical", num_classes=CLASSES, amplitude=amplitude, period=period, final_plain_ce=True))
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    trace, diverged, started = [], False, time.process_time()
    for step in range(steps):
        if hasattr(criterion, "set_step"):
            criterion.set_step(step, steps)
        loss = criterion(net(x_train), y_train)
        if not torch.isfinite(loss):
            diverged = True
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % record_every == 0 or step + 1 == steps:
            with torch.no_grad():
                logits = net(x_train)
            shares = torch.bincount(logits.argmax(dim=1), minlength=CLASSES).double() / len(y_train)
            trace.append({"step": step + 1, "train_ce": float(nn.functional.cross_entropy(logits, y_train)),
                          "train_accuracy": accuracy(net, x_train, y_train), "val_accuracy": accuracy(net, x_val, y_val),
                          **{f"predicted_share_{c}": float(shares[c]) for c in range(CLASSES)}})
    summary = {"width": width, "lr": lr, "loss": loss_name, "seed": seed, "steps": steps,
               "amplitude": amplitude if loss_name == "dynamical" else None,
               "period": period if loss_name == "dynamical" else None, "diverged": diverged,
               "train_accuracy": math.nan if diverged else accuracy(net, x_train, y_train),
               "val_accuracy": math.nan if diverged else accuracy(net, x_val, y_val),
               "cpu_seconds": round(time.process_time() - started, 1)}
    return summary, pd.DataFrame(trace), net


# ---------------------------------------------------------------------------------------------
# The sweep of docs/SCIENCE.md
# ---------------------------------------------------------------------------------------------
# (width, lr, steps, period T, seeds), amplitude A = 70 and T = 5000 throughout (the notebook's values):
# the team's reference (width 30, lr 1, 70k steps = 14 periods) with three seeds; the rest of the
# width x learning-rate grid with fewer periods (7 for width 100 and the larger rates, 4 for width
# 1000, whose steps cost ~4x more) to keep the sweep within ~15 CPU-minutes.
FULL = {"amplitude": 70.0,
        "runs": [(30, 1.0, 70_000, 5000, (0, 1, 2)),
                 (30, 3.0, 35_000, 5000, (0,)), (30, 10.0, 35_000, 5000, (0,)),
                 (100, 1.0, 35_000, 5000, (0, 1, 2)), (100, 3.0, 35_000, 5000, (0,)), (100, 10.0, 35_000, 5000, (0,)),
                 (1000, 1.0, 20_000, 5000, (0,)), (1000, 3.0, 20_000, 5000, (0,)), (1000, 10.0, 20_000, 5000, (0,))]}
QUICK = {"amplitude": 70.0, "runs": [(30, 1.0, 3_000, 500, (0,))]}


def sweep(settings: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, nn.Module]]:
    """Every run of ``settings``; also returns the first configuration's seed-0 networks (for the figure)."""
    data = (make_spiral(seed=0), make_spiral(seed=1))
    summaries, traces, reference = [], [], {}
    for number, (width, lr, steps, period, seeds) in enumerate(settings["runs"]):
        for seed in seeds:
            for loss_name in ("ce", "dynamical"):
                summary, trace, net = train(width, lr, loss_name, steps=steps, amplitude=settings["amplitude"],
                                       period=period, seed=seed, data=data, record_every=max(steps // 140, 1))
                summaries.append(summary)
                traces.append(trace.assign(width=width, lr=lr, loss=loss_name, seed=seed))
                if number == 0 and seed == seeds[0]:
                    reference[f"{'static CE' if loss_name == 'ce' else 'dynamical'}: "
                              f"validation accuracy {summary['val_accuracy']:.2f}"] = net
                print(f"spiral width {width} lr {lr:g} {loss_name:9s} seed {seed}: val {summary['val_accuracy']:.3f} "
                      f"train {summary['train_accuracy']:.3f} ({summary['cpu_seconds']} CPU s)", flush=True)
    return pd.DataFrame(summaries), pd.concat(traces, ignore_index=True), reference


def plot_traces(traces: pd.DataFrame, path: Path) -> Path:
    configs = traces[["width", "lr"]].drop_duplicates().sort_values(["width", "lr"]).values.tolist()
    columns = min(3, len(configs))
    rows = math.ceil(len(configs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.9 * rows), squeeze=False, layout="constrained")
    for ax, (width, lr) in zip(axes.flat, configs):
        labelled = set()
        for (loss_name, _), run in traces[(traces["width"] == width) & (traces["lr"] == lr)].groupby(["loss", "seed"]):
            label = "static CE" if loss_name == "ce" else "dynamical"
            ax.plot(run["step"] / 1000, run["val_accuracy"], color="tab:blue" if loss_name == "ce" else "tab:red",
                    lw=0.9, label=None if label in labelled else label)
            labelled.add(label)
        ax.set_title(f"width {int(width)}, lr {lr:g}", fontsize=10)
        ax.set_ylim(0, 1)
        ax.set_xlabel("step (thousands)")
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(configs):]:
        ax.axis("off")
    return save_png(fig, path, dpi=70)


def plot_decision(nets: dict[str, nn.Module], title: str, path: Path) -> Path:
    """Predicted class over the plane for each trained network, training points on top."""
    x_train, y_train = make_spiral(seed=0)
    axis = torch.linspace(-1.1, 1.1, 200)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
    fig, axes = plt.subplots(1, len(nets), figsize=(4.5 * len(nets), 4.3), squeeze=False)
    for ax, (label, net) in zip(axes.flat, nets.items()):
        with torch.no_grad():
            regions = net(grid).argmax(dim=1).reshape(200, 200)
        ax.imshow(regions, origin="lower", extent=(-1.1, 1.1, -1.1, 1.1), cmap="Pastel1", vmin=0, vmax=8)
        ax.scatter(x_train[:, 0], x_train[:, 1], c=y_train, cmap="Set1", vmin=0, vmax=8, s=8)
        ax.set_title(label)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    return save_png(fig, path)


def run(out: Path, *, quick: bool = False, settings: dict | None = None) -> dict[str, pd.DataFrame]:
    """Write spiral_runs.csv, spiral_traces.csv, spiral_validation.png and spiral_regions.png under ``out``
    for ``settings`` (default: the full sweep, or the quick one)."""
    torch.set_num_threads(1)
    settings = settings or (QUICK if quick else FULL)
    summaries, traces, reference = sweep(settings)
    out = Path(out)
    write_csv(summaries, out / "spiral_runs.csv")
    write_csv(traces, out / "spiral_traces.csv")
    plot_traces(traces, out / "spiral_validation.png")
    width, lr, steps, period, _ = settings["runs"][0]
    plot_decision(reference, f"width {width}, lr {lr:g}, {steps} full-batch steps, A = {settings['amplitude']:g}, "
                             f"T = {period}, seed 0", out / "spiral_regions.png")
    return {"runs": summaries, "traces": traces}
