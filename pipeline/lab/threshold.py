"""The one-threshold model of Le Bich Phuong and Nguyen Tien Zung, "Gradient flows of loss functions"
(talk, 2018; seed 000), trained on the project's sharpness-controlled loss (pipeline/losses/sharpness.py).

Data: m minority points ("yes", class 0) at x = -1/2, -3/2, ..., -(m - 1/2) and M majority points
("no", class 1) at x = 1/2, ..., M - 1/2: unit spacing, the true boundary at 0. The classifier is one
threshold theta: class 0 when x < theta. As a two-class model its logits are (theta - x, 0), so the
multi-class margin of a point is theta - x for the minority and x - theta for the majority, and the
loss is L(theta) = sum_i w_{y_i} (1 + phi_eps(margin_i)), minority weight w, majority weight 1.
theta lives on the data range [-m, M], the talk's Omega = [a, b] (gradient steps are projected onto it).

Continuum limit (density 1, minority on [-m, 0], majority on [0, M]); with
integral x / sqrt(x^2 + eps) dx = sqrt(x^2 + eps) and r(u) = sqrt(u^2 + eps):

    L(theta) = w m + M - w [r(theta + m) - r(theta)] - [r(M - theta) - r(theta)]
    L'(0)    = -w m / r(m) + M / r(M)

so the optimum sits exactly on the boundary (L'(0) = 0) for the minority weight

    w* = (M / m) * sqrt((m^2 + eps) / (M^2 + eps)),

which runs from 1 (eps -> 0: no reweighting needed) to the inverse frequency M / m (eps -> infinity).
With w = 1 and M > m, L'(0) > 0: the optimum moves into the minority (the talk's bias against the
minority); inverse frequency w = M / m > w* overshoots into the majority (the talk: "a discrimination
against the majority"). ``run`` measures all three, the gradient flow on the discrete points against the
continuum optimum, and the spread of the mini-batch (stochastic) flow as eps shrinks.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize_scalar

from pipeline.lab._output import plt, save_png, write_csv
from pipeline.losses.sharpness import sharpness_loss


def points(m: int, M: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (float64) and labels (0 = minority left of 0, 1 = majority right of 0), unit spacing."""
    x = torch.cat([-(torch.arange(m, dtype=torch.float64) + 0.5), torch.arange(M, dtype=torch.float64) + 0.5])
    y = torch.cat([torch.zeros(m, dtype=torch.long), torch.ones(M, dtype=torch.long)])
    return x, y


def threshold_logits(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Two-class logits (theta - x, 0): margin theta - x for class 0, x - theta for class 1."""
    return torch.stack([theta - x, torch.zeros_like(x)], dim=-1)


def balancing_weight(m: float, M: float, eps: float) -> float:
    """The minority weight that puts the continuum optimum exactly on the boundary (module docstring)."""
    return (M / m) * math.sqrt((m * m + eps) / (M * M + eps))


def continuum_loss(theta: np.ndarray | float, m: float, M: float, eps: float, w: float) -> np.ndarray:
    """L(theta) of the continuum model, closed form (module docstring)."""
    r = lambda u: np.sqrt(np.square(u) + eps)  # noqa: E731
    return w * m + M - w * (r(theta + m) - r(theta)) - (r(M - theta) - r(theta))


def continuum_optimum(m: float, M: float, eps: float, w: float) -> float:
    """argmin of the continuum loss over [-m, M]: a grid search refined by a bounded scalar search."""
    grid = np.linspace(-m, M, 40_001)
    best = int(np.argmin(continuum_loss(grid, m, M, eps, w)))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    result = minimize_scalar(lambda t: float(continuum_loss(t, m, M, eps, w)), bounds=(low, high), method="bounded",
                             options={"xatol": 1e-10})
    return float(result.x) if result.fun <= continuum_loss(grid[best], m, M, eps, w) else float(grid[best])


def empirical_loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float, w: float) -> torch.Tensor:
    """sum_i w_{y_i} (1 + phi_eps(margin_i)) over the points, through the project's loss."""
    weight = torch.tensor([w, 1.0], dtype=torch.float64)
    return sharpness_loss(threshold_logits(theta, x), y, eps, weight).sum()


def gradient_flow(m: int, M: int, eps: float, w: float, *, theta0: float = 0.0, max_steps: int = 20_000,
                  tol: float = 1e-10) -> float:
    """Full-batch gradient descent on the discrete points, projected onto [-m, M], from ``theta0``.

    The step is half the inverse of a bound on the curvature, (w + 1) (1/sqrt(eps) + 1/eps), so the
    discrete flow follows the continuous one without oscillating.
    """
    x, y = points(m, M)
    lr = 0.5 / ((w + 1.0) * (1.0 / math.sqrt(eps) + 1.0 / eps))
    theta = torch.tensor(float(theta0), dtype=torch.float64, requires_grad=True)
    for _ in range(max_steps):
        (grad,) = torch.autograd.grad(empirical_loss(theta, x, y, eps, w), theta)
        new = (theta.detach() - lr * grad).clamp(-m, M)
        moved = abs(float(new - theta.detach()))
        theta = new.requires_grad_(True)
        if moved < tol:
            break
    return float(theta.detach())


def sgd_chains(m: int, M: int, eps: float, w: float, *, lr: float, batch: int, steps: int, chains: int,
               seed: int) -> np.ndarray:
    """Mini-batch SGD of ``chains`` independent thresholds, each from theta = 0 (the optimum when w is
    the balancing weight), each step on the mean loss of ``batch`` points drawn with replacement.
    Returns the thresholds of the second half of the run, shape (steps - steps // 2, chains)."""
    x, y = points(m, M)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.tensor([w, 1.0], dtype=torch.float64)
    theta = torch.zeros(chains, dtype=torch.float64)
    kept = []
    for step in range(steps):
        index = torch.randint(0, x.numel(), (chains, batch), generator=generator)
        theta.requires_grad_(True)
        logits = threshold_logits(theta.unsqueeze(1).expand(chains, batch), x[index]).reshape(-1, 2)
        loss = sharpness_loss(logits, y[index].reshape(-1), eps, weight).view(chains, batch).mean(dim=1).sum()
        (grad,) = torch.autograd.grad(loss, theta)
        theta = (theta.detach() - lr * grad).clamp(-m, M)
        if step >= steps // 2:
            kept.append(theta.numpy().copy())
    return np.stack(kept)


def ou_spread(lr: float, batch: int, w: float) -> float:
    """Stationary SD of the threshold predicted by the linearised (Ornstein-Uhlenbeck) SGD:
    Var = lr sigma^2 / (2 h B) with h = (w + 1) rho / sqrt(eps) and sigma^2 = (w^2 + 1) rho (3 pi / 16) / sqrt(eps),
    i.e. (3 pi / 32) lr (w^2 + 1) / ((w + 1) B), independent of eps (valid while it is << sqrt(eps))."""
    return math.sqrt(3 * math.pi / 32 * lr * (w * w + 1) / ((w + 1) * batch))


# ---------------------------------------------------------------------------------------------
# The experiments of docs/SCIENCE.md
# ---------------------------------------------------------------------------------------------
FULL = {"m": 20, "ratios": [1, 2, 5, 10, 20, 50], "eps": [1e4, 1e3, 1e2, 1e1, 1.0],
        "sgd": {"ratio": 10, "eps": [1e3, 1e2, 1e1, 1.0, 0.1], "lr": 20.0, "batch": 8, "steps": 40_000,
                "chains": 16}}
QUICK = {"m": 5, "ratios": [1, 4, 10], "eps": [1e3, 1e1],
         "sgd": {"ratio": 4, "eps": [1e2, 1.0], "lr": 4.0, "batch": 4, "steps": 3_000, "chains": 8}}


def weight_of(weighting: str, m: int, M: int, eps: float) -> float:
    return {"none": 1.0, "balancing": balancing_weight(m, M, eps), "inverse": M / m}[weighting]


def optimum_table(m: int, ratios: list[int], eps_values: list[float]) -> pd.DataFrame:
    """Per imbalance ratio M/m, eps and weighting: the continuum optimum, the gradient-flow end point on
    the discrete points, and the recall of each class at that threshold."""
    rows = []
    for ratio in ratios:
        M = m * ratio
        x, y = points(m, M)
        for eps in eps_values:
            for weighting in ("none", "balancing", "inverse"):
                w = weight_of(weighting, m, M, eps)
                theta = gradient_flow(m, M, eps, w)
                predicted_minority = x < theta
                rows.append({"ratio": ratio, "m": m, "M": M, "eps": eps, "weighting": weighting, "weight": w,
                             "theta_continuum": continuum_optimum(m, M, eps, w), "theta_flow": theta,
                             "minority_recall": float(predicted_minority[y == 0].double().mean()),
                             "majority_recall": float((~predicted_minority[y == 1]).double().mean())})
    return pd.DataFrame(rows)


def sgd_table(m: int, ratio: int, eps: list[float], lr: float, batch: int, steps: int, chains: int,
              seed: int = 0) -> pd.DataFrame:
    """Stationary mean and SD of the mini-batch flow's threshold (balancing weight, optimum at 0), with a
    fixed learning rate and with the learning rate coupled to eps (lr * eps / eps_max)."""
    M, eps_max, rows = m * ratio, max(eps), []
    for schedule in ("fixed", "coupled"):
        for value in eps:
            w = balancing_weight(m, M, value)
            step_lr = lr if schedule == "fixed" else lr * value / eps_max
            thetas = sgd_chains(m, M, value, w, lr=step_lr, batch=batch, steps=steps, chains=chains, seed=seed)
            sd = float(thetas.std())
            rows.append({"schedule": schedule, "ratio": ratio, "m": m, "eps": value, "lr": step_lr, "weight": w, "batch": batch, "steps": steps,
                         "chains": chains, "theta_mean": float(thetas.mean()), "theta_sd": sd,
                         "sd_over_sqrt_eps": sd / math.sqrt(value), "ou_sd": ou_spread(step_lr, batch, w)})
    return pd.DataFrame(rows)


def plot_optimum(table: pd.DataFrame, path: Path) -> Path:
    eps_values = sorted(table["eps"].unique(), reverse=True)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(eps_values)))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharex=True)
    for ax, weighting, title in zip(axes, ("none", "balancing", "inverse"),
                                    ("w = 1 (unweighted)", "w = (M/m) sqrt((m²+ε)/(M²+ε))", "w = M/m (inverse frequency)")):
        for color, eps in zip(colors, eps_values):
            rows = table[(table["weighting"] == weighting) & (table["eps"] == eps)]
            ax.plot(rows["ratio"], rows["theta_continuum"], "-", color=color, label=f"ε = {eps:g}")
            ax.plot(rows["ratio"], rows["theta_flow"], "o", color=color, ms=4)
        ax.axhline(0, color="k", lw=0.8)
        if weighting == "balancing":
            ax.set_ylim(-1, 1)
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("imbalance M/m")
    axes[0].set_ylabel("optimal threshold θ* (0 = true boundary; < 0: into the minority)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"One-threshold model, m = {int(table['m'].iloc[0])}: lines = continuum optimum, dots = gradient flow")
    return save_png(fig, path)


def plot_sgd(table: pd.DataFrame, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"wspace": 0.3})
    for schedule, marker in (("fixed", "o-"), ("coupled", "s-")):
        rows = table[table["schedule"] == schedule]
        label = "fixed lr" if schedule == "fixed" else "lr ∝ ε"
        axes[0].loglog(rows["eps"], rows["theta_sd"], marker, label=label)
        axes[0].loglog(rows["eps"], rows["ou_sd"], ":", color=axes[0].lines[-1].get_color(), label=f"{label}: OU theory")
        axes[1].loglog(rows["eps"], rows["sd_over_sqrt_eps"], marker, label=label)
    axes[0].set_ylabel("SD of the threshold")
    axes[1].set_ylabel("SD / sqrt(ε) (spread in units of the transition width)")
    for ax in axes:
        ax.set_xlabel("ε")
        ax.invert_xaxis()
        ax.legend(fontsize=8)
    fig.suptitle("Mini-batch gradient flow around the optimum as ε shrinks (balancing weight)")
    return save_png(fig, path)


def run(out: Path, *, quick: bool = False) -> dict[str, pd.DataFrame]:
    """Write threshold_optimum.csv/.png and threshold_sgd.csv/.png under ``out``."""
    torch.set_num_threads(1)
    settings = QUICK if quick else FULL
    optimum = optimum_table(settings["m"], settings["ratios"], settings["eps"])
    sgd = sgd_table(settings["m"], **settings["sgd"])
    out = Path(out)
    write_csv(optimum, out / "threshold_optimum.csv")
    write_csv(sgd, out / "threshold_sgd.csv")
    plot_optimum(optimum, out / "threshold_optimum.png")
    plot_sgd(sgd, out / "threshold_sgd.png")
    return {"optimum": optimum, "sgd": sgd}
