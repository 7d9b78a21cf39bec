"""Task-specific parts behind one interface (``pipeline.tasks.base.Task``), registered by name."""

from __future__ import annotations

from pipeline.registry import Registry

# name -> Task class; each task module registers its class with @TASKS.register(name)
TASKS: Registry = Registry("task", modules=["pipeline.tasks.classification", "pipeline.tasks.segmentation"])


def get_task(cfg: dict):
    """The task object of one run config."""
    return TASKS.get(cfg["task"])(cfg)
