"""Writing the lab's tables and figures (atomically, like every output of the pipeline)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.atomic import atomic_path, write_text  # noqa: E402


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    return write_text(path, frame.to_csv(index=False, float_format="%.6g"))


def save_png(fig: plt.Figure, path: Path, dpi: int = 90) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
