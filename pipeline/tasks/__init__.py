"""Task-specific parts behind one small interface used by the single trainer (pipeline.training)."""

from __future__ import annotations

from pipeline.errors import ConfigError


def get_task(cfg: dict):
    from pipeline.tasks.classification import ClassificationTask
    from pipeline.tasks.segmentation import SegmentationTask

    tasks = {"classification": ClassificationTask, "segmentation": SegmentationTask}
    if cfg["task"] not in tasks:
        raise ConfigError(f"unknown task {cfg['task']!r}; tasks are {sorted(tasks)}")
    return tasks[cfg["task"]](cfg)
