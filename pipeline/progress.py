"""Progress bars (tqdm) for the long loops: training batches, prediction, sliding-window inference,
evaluation. Shown on an interactive terminal only: under Snakemake, SLURM or a pipe (stderr not a
TTY) they are off, and the per-epoch / per-N-images log lines remain the record."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(desc: str, total: int, unit: str = "it", enabled: bool = True) -> tqdm:
    """A bar advanced by hand (``update()``, ``close()``), for loops whose iterator must not be wrapped."""
    return tqdm(desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, disable=None if enabled else True)


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
             enabled: bool = True) -> Iterable[T]:
    """``iterable`` with a bar on an interactive terminal (``disable=None``: off when not a TTY);
    ``enabled=False`` (e.g. a non-main rank under torchrun) never draws one."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True,
                disable=None if enabled else True)
