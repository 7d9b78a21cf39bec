"""Optimizers and learning-rate schedules by name (``train.optimizer`` / ``train.scheduler`` blocks)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.errors import ConfigError
from pipeline.registry import Registry

sched = torch.optim.lr_scheduler

# name -> factory(spec, params) -> optimizer
OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
# name -> factory(spec, optimizer, steps_per_epoch, total_steps, warmup_steps) -> per-step schedule.
# ``warmup=True``: the trainer puts a linear warm-up in front; onecycle has its own.
SCHEDULERS: Registry[Callable[..., sched.LRScheduler]] = Registry("scheduler")


@OPTIMIZERS.register("sgd")
def _sgd(spec: dict, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=spec.get("momentum", 0.9), weight_decay=weight_decay,
                           nesterov=spec.get("nesterov", False))


def _fused(spec: dict, params: list) -> bool | None:
    """``fused``: auto = PyTorch's fused (one kernel) Adam/AdamW step when every parameter is on
    CUDA, else its default (foreach on the CPU: results unchanged there)."""
    fused = spec.get("fused", "auto")
    if fused == "auto":
        return True if params and all(p.is_cuda for p in params) else None
    return bool(fused)


@OPTIMIZERS.register("adam")
def _adam(spec: dict, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = list(params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=_fused(spec, params))


@OPTIMIZERS.register("adamw")
def _adamw(spec: dict, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = list(params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=_fused(spec, params))


def build_optimizer(spec: dict, params) -> torch.optim.Optimizer:
    factory = OPTIMIZERS.get(spec["name"])
    return factory(spec, params, lr=spec.get("lr", 1e-3), weight_decay=spec.get("weight_decay", 0.0))


@SCHEDULERS.register("none", warmup=True)
def _constant(spec, optimizer, steps_per_epoch: int, total: int, warmup: int):
    return sched.LambdaLR(optimizer, lambda step: 1.0)


@SCHEDULERS.register("cosine", warmup=True)
def _cosine(spec, optimizer, steps_per_epoch: int, total: int, warmup: int):
    return sched.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1))


@SCHEDULERS.register("step", warmup=True)
def _step(spec, optimizer, steps_per_epoch: int, total: int, warmup: int):
    return sched.StepLR(optimizer, step_size=spec.get("step_size", 10) * steps_per_epoch, gamma=spec.get("gamma", 0.1))


@SCHEDULERS.register("onecycle", warmup=False)
def _onecycle(spec, optimizer, steps_per_epoch: int, total: int, warmup: int):
    return sched.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(total, 1))


@SCHEDULERS.register("geometric", warmup=False)
def _geometric(spec, optimizer, steps_per_epoch: int, total: int, warmup: int):
    """lr(t) = lr * final_factor ** (t / total): geometric decay to ``final_factor`` times the start.

    With the sharpness loss's ``eps_final`` and ``final_factor = eps_final / eps`` this is the learning
    rate proportional to eps(t) that pipeline/losses/sharpness.py derives (the same step, the same
    total, so the two stay locked together on resume). No warm-up: it would shift the two apart.
    """
    if "final_factor" not in spec:
        raise ConfigError("train.scheduler: 'geometric' needs final_factor (the lr at the end / the lr at the start)")
    factor = spec["final_factor"]
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        raise ConfigError(f"train.scheduler.final_factor must lie in (0, 1], got {factor!r}")
    if spec.get("warmup_epochs", 0):
        raise ConfigError("train.scheduler: 'geometric' takes no warmup_epochs (eps and lr must follow the same step)")
    return sched.LambdaLR(optimizer, lambda step: float(factor) ** (min(step, total) / max(total, 1)))


def build_scheduler(spec: dict, optimizer, steps_per_epoch: int, epochs: int):
    """A per-optimizer-step schedule (so it resumes exactly with the step count)."""
    factory = SCHEDULERS.get(spec["name"])
    total = steps_per_epoch * epochs
    warmup = min(spec.get("warmup_epochs", 0) * steps_per_epoch, max(total - 1, 0))
    main = factory(spec, optimizer, steps_per_epoch, total, warmup)
    if warmup == 0 or not SCHEDULERS.info(spec["name"])["warmup"]:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
