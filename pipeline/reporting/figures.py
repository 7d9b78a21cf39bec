"""Report figures (matplotlib, Agg backend), drawn from numbers stored by ``pipeline.evaluation``.

Nothing here computes a metric: ROC curves are drawn from the stored ``roc`` points, the
reliability diagram from the stored calibration bins, the confusion matrices from the stored
counts (row normalisation is display arithmetic only). Every ``plot_*`` function takes a ``path``:
``None`` returns the open :class:`~matplotlib.figure.Figure` (the caller closes it, e.g. via
:func:`to_data_uri`); a path saves a PNG atomically, closes the figure and returns the path.
"""

from __future__ import annotations

import base64
import io
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from pipeline.atomic import atomic_path  # noqa: E402

DPI = 110
HIGHLIGHT_COLOR = "#c0392b"
# Colour-blind-safe qualitative palette (Okabe & Ito) for lesion types.
TYPE_COLORS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999"]


# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------
def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a PNG atomically (temp file in the same folder, then os.replace) and close the figure."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes; closes it."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI, so the report is one self-contained file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def to_data_uri(fig: Figure) -> str:
    """A figure as a PNG ``data:`` URI; closes it."""
    return data_uri(png_bytes(fig))


def _finish(fig: Figure, path: str | Path | None) -> Figure | Path:
    return fig if path is None else save_figure(fig, path)


def _wrap(label: str, width: int = 18) -> str:
    return "\n".join(textwrap.wrap(str(label), width)) or str(label)


# ---------------------------------------------------------------------------------------------
# Confusion matrices
# ---------------------------------------------------------------------------------------------
def row_normalize(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (NaN for an empty row): the diagonal becomes per-class recall."""
    counts = np.asarray(counts, dtype=float)
    sums = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums > 0, counts / np.where(sums > 0, sums, 1), np.nan)


def plot_confusion_matrix(
    counts: Sequence[Sequence[int]],
    labels: Sequence[str],
    path: str | Path | None = None,
    normalize: bool = False,
    *,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    xlabel: str = "Model's call",
    ylabel: str = "True diagnosis",
) -> Figure | Path:
    """Heatmap of a square confusion matrix (rows true, columns predicted), as counts or row-normalised.

    ``labels`` are clinician-facing row labels ("Melanoma (MEL)"); ``col_labels`` may differ from
    them for the lesion-level matrix (last row "false lesion", last column "missed").
    """
    matrix = np.asarray(counts, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(labels):
        raise ValueError(f"confusion matrix of shape {matrix.shape} does not match {len(labels)} labels")
    if col_labels is not None and len(col_labels) != len(labels):
        raise ValueError(f"{len(col_labels)} column labels for a {len(labels)}x{len(labels)} matrix")
    shown = row_normalize(matrix) if normalize else matrix
    n = len(labels)
    size = max(4.5, 0.8 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    display = ConfusionMatrixDisplay(shown, display_labels=[_wrap(x) for x in labels])
    display.plot(
        ax=ax, cmap="Blues", values_format=".0%" if normalize else ".0f", colorbar=True,
        xticks_rotation=45, im_kw={"vmin": 0, "vmax": 1} if normalize else None,
    )
    for text, value in zip(display.text_.ravel(), shown.ravel()):
        if np.isnan(value):
            text.set_text("\u2013")  # an empty row has no proportions
            text.set_color("grey")
    if col_labels is not None:
        ax.set_xticks(range(n), [_wrap(x) for x in col_labels], rotation=45, ha="right")
    else:
        plt.setp(ax.get_xticklabels(), ha="right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or ("Row-normalised (share of each true class)" if normalize else "Counts"))
    fig.tight_layout()
    return _finish(fig, path)


# ---------------------------------------------------------------------------------------------
# ROC
# ---------------------------------------------------------------------------------------------
def _fmt_auc(auc: Mapping[str, Any] | None) -> str:
    if not auc or auc.get("value") is None:
        return "AUC n/a"
    ci = auc.get("ci95")
    text = f"AUC {auc['value']:.2f}"
    if ci and None not in ci:
        text += f" ({ci[0]:.2f}\u2013{ci[1]:.2f})"
    return text


def _value(entry: Any) -> float | None:
    """An operating point is stored as a number or as {'value': x, ...}."""
    if isinstance(entry, Mapping):
        entry = entry.get("value")
    return None if entry is None or (isinstance(entry, float) and np.isnan(entry)) else float(entry)


def plot_roc_curves(
    roc: Mapping[str, Mapping[str, Sequence[float]]],
    per_class: Mapping[str, Mapping[str, Any]],
    labels: Mapping[str, str],
    path: str | Path | None = None,
    *,
    highlight: str | None = "MEL",
) -> Figure | Path:
    """One-vs-rest ROC curve per class, one panel each, from the stored (fpr, tpr) points.

    Legend: AUC with its 95% CI. Markers: sensitivity at 95% specificity (circle) and specificity
    at 95% sensitivity (square), read from ``per_class``. The ``highlight`` class (melanoma by
    default) comes first and is drawn in red.
    """
    codes = [c for c in labels if roc.get(c)]  # a class absent from the test set has no curve
    if highlight in codes:
        codes.remove(highlight)
        codes.insert(0, highlight)
    if not codes:
        raise ValueError("no ROC curves to draw: metrics.json has no 'roc' points for the classes")
    n_cols = min(4, len(codes))
    n_rows = int(np.ceil(len(codes) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.4 * n_cols, 3.4 * n_rows), squeeze=False)
    for ax in axes.ravel()[len(codes):]:
        ax.set_visible(False)
    for ax, code in zip(axes.ravel(), codes):
        stats = per_class.get(code, {})
        color = HIGHLIGHT_COLOR if code == highlight else "C0"
        RocCurveDisplay(fpr=np.asarray(roc[code]["fpr"]), tpr=np.asarray(roc[code]["tpr"])).plot(
            ax=ax, name=_fmt_auc(stats.get("auc")), plot_chance_level=True,
            curve_kwargs={"color": color, "lw": 2.5 if code == highlight else 1.5},
        )
        # Each point sits where it was read off the curve: the achieved other rate is stored with it
        # (it can exceed 95% on a step of the curve); plain numbers fall back to the target 95%.
        sens_point, spec_point = stats.get("sens_at_95_spec"), stats.get("spec_at_95_sens")
        sens, spec = _value(sens_point), _value(spec_point)
        if sens is not None:
            at_spec = _value(sens_point.get("specificity")) if isinstance(sens_point, Mapping) else None
            ax.plot(1 - (at_spec if at_spec is not None else 0.95), sens, "o", color="black", ms=7, mfc="white",
                    label=f"Sens. {sens:.0%} at 95% spec.")
        if spec is not None:
            at_sens = _value(spec_point.get("sensitivity")) if isinstance(spec_point, Mapping) else None
            ax.plot(1 - spec, at_sens if at_sens is not None else 0.95, "s", color="black", ms=7, mfc="white",
                    label=f"Spec. {spec:.0%} at 95% sens.")
        ax.set_title(_wrap(labels[code], 32), fontsize=10, color=color, fontweight="bold" if code == highlight else None)
        ax.set_xlabel("1 \u2212 specificity")
        ax.set_ylabel("Sensitivity")
        ax.legend(loc="lower right", fontsize=7)
        if code == highlight:
            for spine in ax.spines.values():
                spine.set_edgecolor(HIGHLIGHT_COLOR)
                spine.set_linewidth(2)
    fig.tight_layout()
    return _finish(fig, path)


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------
def plot_reliability_diagram(
    bins: Sequence[Mapping[str, Any]],
    ece: float,
    path: str | Path | None = None,
) -> Figure | Path:
    """Reliability diagram (Guo et al., ICML 2017) of the top-class confidence from stored bins:
    bars = observed accuracy per confidence bin, red = gap to the diagonal; below, images per bin."""
    lo = np.array([b["lo"] for b in bins], dtype=float)
    hi = np.array([b["hi"] for b in bins], dtype=float)
    n = np.array([b["count"] for b in bins], dtype=float)
    filled = n > 0
    accuracy = np.array([b["accuracy"] if b["count"] else np.nan for b in bins], dtype=float)
    confidence = np.array([b["confidence"] if b["count"] else np.nan for b in bins], dtype=float)
    width = hi - lo
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.bar(lo[filled], accuracy[filled], width=width[filled], align="edge", color="#4a78b5",
            edgecolor="black", label="Observed accuracy")
    top.bar(lo[filled], confidence[filled] - accuracy[filled], bottom=accuracy[filled], width=width[filled],
            align="edge", color=HIGHLIGHT_COLOR, alpha=0.35, edgecolor=HIGHLIGHT_COLOR, hatch="//",
            label="Gap to stated confidence")
    top.plot([0, 1], [0, 1], "k--", lw=1, label="Perfect calibration")
    top.set_ylim(0, 1)
    top.set_xlim(0, 1)
    top.set_ylabel("Accuracy")
    top.set_title(f"Reliability diagram (ECE = {ece:.3f})")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(lo, n, width=width, align="edge", color="#999999", edgecolor="black")
    bottom.set_xlabel("Confidence of the top class")
    bottom.set_ylabel("Images")
    fig.tight_layout()
    return _finish(fig, path)


# ---------------------------------------------------------------------------------------------
# Boundary-case gallery
# ---------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One test image in a gallery: its pixels (None when unreadable) and what the model said.

    ``true_label`` / ``pred_label`` are the clinician names shown in the title; ``probabilities``
    is keyed by a short class key (the code), and ``true_key`` / ``pred_key`` name the true and
    predicted keys among them (green and red bars)."""

    image_id: str
    image: np.ndarray | None
    true_label: str
    pred_label: str
    probabilities: dict[str, float] = field(default_factory=dict)
    true_key: str = ""
    pred_key: str = ""


def plot_case_gallery(
    cases: Sequence[Case],
    path: str | Path | None = None,
    *,
    top_k: int = 3,
    n_cols: int = 4,
) -> Figure | Path:
    """Grid of thumbnails, each titled with true / predicted class, its top-k probabilities below."""
    if not cases:
        raise ValueError("no cases to draw")
    n_cols = min(n_cols, len(cases))
    n_rows = int(np.ceil(len(cases) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.9 * n_cols, 3.7 * n_rows), squeeze=False,
                             gridspec_kw={"hspace": 0.9, "wspace": 0.35})
    for ax in axes.ravel()[len(cases):]:
        ax.set_visible(False)
    for ax, case in zip(axes.ravel(), cases):
        if case.image is None:
            ax.text(0.5, 0.5, "image not\nreadable", ha="center", va="center", color="grey", transform=ax.transAxes)
        else:
            ax.imshow(case.image)
        ax.set_xticks([])
        ax.set_yticks([])
        wrong = case.true_key != case.pred_key if case.true_key else case.true_label != case.pred_label
        ax.set_title(
            f"{_wrap(case.image_id, 30)}\nTrue: {_wrap(case.true_label, 30)}\nModel: {_wrap(case.pred_label, 30)}",
            fontsize=7.5, color=HIGHLIGHT_COLOR if wrong else "black",
        )
        # Probability bars under the image, each labelled "KEY 0.70" to the right of its bar.
        bars = ax.inset_axes([0.0, -0.42, 1.0, 0.34])
        ranked = sorted(case.probabilities.items(), key=lambda item: -item[1])
        top = ranked[:top_k]
        if case.true_key in case.probabilities and case.true_key not in dict(top):
            top[-1] = (case.true_key, case.probabilities[case.true_key])  # always show the true class
        top = top[::-1]
        colors = [HIGHLIGHT_COLOR if key == case.pred_key and wrong else ("#2e8b57" if key == case.true_key else "#888888")
                  for key, _ in top]
        bars.barh(range(len(top)), [p for _, p in top], color=colors)
        for i, (key, p) in enumerate(top):
            bars.text(p + 0.03, i, f"{key} {p:.2f}", va="center", fontsize=7)
        bars.set_xlim(0, 1.6)
        bars.set_ylim(-0.6, top_k - 0.4)
        bars.axis("off")
    return _finish(fig, path)


# ---------------------------------------------------------------------------------------------
# Segmentation overlays
# ---------------------------------------------------------------------------------------------
@dataclass
class OverlayCase:
    """One segmentation test image with its annotated and predicted label maps (0 = background)."""

    title: str
    image: np.ndarray
    true_mask: np.ndarray
    pred_mask: np.ndarray


def _draw_label_map(ax: Any, image: np.ndarray, mask: np.ndarray, n_types: int, linestyle: str) -> None:
    """Image with each lesion type filled (translucent) and outlined in its colour."""
    ax.imshow(image)
    colors = [to_rgba(TYPE_COLORS[i % len(TYPE_COLORS)]) for i in range(n_types)]
    fill = ListedColormap([(0, 0, 0, 0)] + [(r, g, b, 0.35) for r, g, b, _ in colors])
    ax.imshow(np.clip(mask, 0, n_types), cmap=fill, vmin=0, vmax=n_types, interpolation="nearest")
    for value in range(1, n_types + 1):
        region = (mask == value).astype(float)
        if region.any():
            ax.contour(region, levels=[0.5], colors=[colors[value - 1]], linewidths=1.4, linestyles=linestyle)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_segmentation_overlays(
    cases: Sequence[OverlayCase],
    type_labels: Sequence[str],
    path: str | Path | None = None,
) -> Figure | Path:
    """One row per case: the image, the annotation (solid outlines) and the model (dashed outlines),
    lesion types coloured consistently; a shared legend names the types."""
    if not cases:
        raise ValueError("no segmentation cases to draw")
    n_types = len(type_labels)
    fig, axes = plt.subplots(len(cases), 3, figsize=(10, 3.4 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        if case.true_mask.shape != case.pred_mask.shape or case.true_mask.shape != case.image.shape[:2]:
            raise ValueError(
                f"{case.title}: image {case.image.shape[:2]}, annotation {case.true_mask.shape} and "
                f"prediction {case.pred_mask.shape} differ in size"
            )
        row[0].imshow(case.image)
        row[0].set_xticks([])
        row[0].set_yticks([])
        row[0].set_title(_wrap(case.title, 40), fontsize=9)
        _draw_label_map(row[1], case.image, case.true_mask, n_types, "solid")
        row[1].set_title("Annotation", fontsize=9)
        _draw_label_map(row[2], case.image, case.pred_mask, n_types, "dashed")
        row[2].set_title("Model", fontsize=9)
    handles = [Line2D([], [], color=TYPE_COLORS[i % len(TYPE_COLORS)], lw=3, label=label) for i, label in enumerate(type_labels)]
    fig.legend(handles=handles, loc="lower center", ncol=min(n_types, 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _finish(fig, path)


def plot_class_counts(
    counts_by_split: Mapping[str, Mapping[str, int]],
    labels: Mapping[str, str],
    path: str | Path | None = None,
    *,
    ylabel: str = "Images",
) -> Figure | Path:
    """Grouped bars: images (or lesions) per class in each split, log scale when very imbalanced."""
    splits = [s for s in counts_by_split if sum(counts_by_split[s].values()) > 0]
    codes = list(labels)
    x = np.arange(len(codes))
    width = 0.8 / max(1, len(splits))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(codes) + 2), 3.6))
    peak = 1
    for i, split in enumerate(splits):
        values = [counts_by_split[split].get(c, 0) for c in codes]
        peak = max(peak, *values)
        ax.bar(x + (i - (len(splits) - 1) / 2) * width, values, width, label=split)
    positive = [v for s in splits for v in counts_by_split[s].values() if v > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
    ax.set_xticks(x, [_wrap(labels[c], 14) for c in codes], fontsize=8, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _finish(fig, path)


def plot_learning_curves(
    history: Mapping[str, Sequence[float]],
    score_name: str,
    best_epoch: int | None,
    weights: Mapping[str, Sequence[float]] | None = None,
    labels: Mapping[str, str] | None = None,
    path: str | Path | None = None,
) -> Figure | Path:
    """Training loss and validation score per epoch (the selected epoch marked); with ``weights``
    (step -> per-class loss weights, e.g. the dynamical loss), a second panel of the weights over steps."""
    panels = 2 if weights else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.4), squeeze=False)
    ax = axes[0, 0]
    epochs = np.asarray(history["epoch"], dtype=float)
    ax.plot(epochs, history["train_loss"], color="tab:blue", marker="o", ms=3, label="training loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("training loss", color="tab:blue")
    score = np.asarray(history["val_score"], dtype=float)
    twin = ax.twinx()
    shown = np.isfinite(score)
    twin.plot(epochs[shown], score[shown], color="tab:orange", marker="s", ms=3, label=f"validation {score_name}")
    twin.set_ylabel(f"validation {score_name}", color="tab:orange")
    if best_epoch is not None and best_epoch in epochs:
        twin.axvline(best_epoch, color="grey", ls="--", lw=1)
        twin.annotate("selected", (best_epoch, np.nanmax(score) if shown.any() else 0), fontsize=8,
                      xytext=(3, -10), textcoords="offset points", color="grey")
    if weights:
        wax = axes[0, 1]
        steps = np.asarray(weights["step"], dtype=float)
        for key, values in weights.items():
            if key != "step":
                wax.plot(steps, values, lw=1, label=_wrap((labels or {}).get(key, key), 16))
        wax.set_xlabel("optimizer step")
        wax.set_ylabel("class weight in the loss")
        wax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _finish(fig, path)


def plot_differences(
    items: Sequence[tuple[str, float, Sequence[float]]],
    xlabel: str,
    path: str | Path | None = None,
) -> Figure | Path:
    """Forest plot: one experiment per row, its difference to the baseline with a 95% interval.

    Intervals crossing 0 (within noise) are grey; better is green, worse red. Differences of
    proportions are shown in percentage points."""
    if not items:
        raise ValueError("no differences to draw")
    fig, ax = plt.subplots(figsize=(6.5, 0.55 * len(items) + 1.4))
    for row, (name, difference, ci) in enumerate(items):
        lo, hi = (float(v) if v is not None else np.nan for v in ci)
        if np.isnan(lo) or np.isnan(hi):
            color = "#999999"
        else:
            color = "#999999" if lo <= 0 <= hi else ("#2e7d32" if difference > 0 else HIGHLIGHT_COLOR)
        ax.errorbar(100 * difference, row, xerr=[[100 * (difference - lo)], [100 * (hi - difference)]],
                    fmt="o", color=color, capsize=4, ms=6)
    ax.axvline(0, color="black", ls="--", lw=1)
    ax.set_yticks(range(len(items)), [_wrap(name, 30) for name, _, _ in items])
    ax.invert_yaxis()
    ax.set_xlabel(f"{xlabel} (percentage points)")
    fig.tight_layout()
    return _finish(fig, path)
