"""``pipeline bench``: is the model the limit, or the data path, the loss or the bookkeeping?

    pipeline bench --config configs/config.yaml --experiment cls_ce [--steps 40] [--workers N]
                   [--losses] [--out bench.json]

Measured in one process, side by side, so that ratios hold on a busy machine:

(a) **pipeline**: optimizer steps of the run's real training path: its manifest and split, its
    dataset (decode cache, augmentation), sampler, DataLoader (``--workers``), model, loss and
    optimizer, timed from the first batch request to the step's end; the time spent waiting for
    each batch is timed apart.
(b) **model limit**: the same model, loss and optimizer on random tensors of the batch's shape
    already on the device: what the model alone allows.
    Their ratio (a)/(b) in images per second is the share of the model's speed the pipeline keeps.
(c) ``--losses``: forward+backward time of every registered loss against plain cross-entropy at
    the same shapes: classification 256 x 7 logits, segmentation 8 x 7 x 256 x 256; round-robin with
    all the losses and alternated with CE alone (``loss_timings``).

(a) and (b) are rates over all their timed steps after ``--warmup`` untimed ones (CUDA: synchronised),
with the median step beside them: a loader that cannot keep up serves its prefetched batches at once,
then stalls, and a median step hides the stall an epoch pays. Loss timings (c) are medians.
Nothing is written under the run's results folder: training state goes to a temporary folder.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("pipeline.bench")
LOSS_SHAPES = {"classification": (256, 7), "segmentation": (8, 7, 256, 256)}
# ISIC 2018 training counts (MEL NV BCC AKIEC BKL DF VASC), for losses that weight by class frequency
ISIC_COUNTS = [1113, 6705, 514, 327, 1099, 115, 142]
# parameters a loss requires (no default), at the values of the default config
REQUIRED_PARAMS = {"dynamical": {"amplitude": 5.0, "cycles": 1}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(trainer, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One optimizer step as the trainer takes it (autocast, scaler, clip), without bookkeeping."""
    with torch.autocast(trainer.device.type, dtype=trainer.amp_dtype, enabled=trainer.amp_dtype is not None):
        logits = trainer.net(inputs)
    loss = trainer.criterion(logits.float(), targets)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(loss).backward()
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    return loss


def _batches(loader):
    """Batches forever, epoch after epoch (the sampler's epoch advanced as the trainer does)."""
    epoch = 0
    while True:
        for holder in (loader.sampler, loader.dataset):
            if hasattr(holder, "set_epoch"):
                holder.set_epoch(epoch)
        yield from loader
        epoch += 1


def pipeline_throughput(trainer, steps: int, warmup: int) -> dict[str, Any]:
    """(a): real batches through the real step; per step, the wait for data and the whole step."""
    device, waits, totals, batch_size = trainer.device, [], [], 0
    trainer.net.train()
    batches = _batches(trainer.loader)
    for i in range(warmup + steps):
        started = time.perf_counter()
        inputs, targets = next(batches)
        loader_dtype = (inputs[0] if isinstance(inputs, (list, tuple)) else inputs).dtype  # uint8 on the device path
        inputs = trainer.device_inputs(inputs)
        targets = targets.to(device, non_blocking=True)
        _sync(device)
        got = time.perf_counter()
        _step(trainer, inputs, targets)
        _sync(device)
        if i >= warmup:
            waits.append(got - started)
            totals.append(time.perf_counter() - started)
            batch_size = len(targets)
    # the rate over all timed steps, not the median step: a loader that cannot keep up serves its
    # prefetched batches at once and then stalls, which a median hides (what an epoch sees is the sum)
    return {"images_per_second": batch_size * len(totals) / sum(totals), "step_ms": 1e3 * sum(totals) / len(totals),
            "median_step_ms": 1e3 * statistics.median(totals), "data_wait_ms": 1e3 * sum(waits) / len(waits),
            "median_data_wait_ms": 1e3 * statistics.median(waits), "data_wait_share": sum(waits) / sum(totals),
            "batch_size": batch_size, "input_shape": list(inputs.shape), "loader_dtype": str(loader_dtype).replace("torch.", ""),
            "target_shape": list(targets.shape)}


def model_limit(trainer, input_shape: list[int], target_shape: list[int], steps: int, warmup: int) -> dict[str, Any]:
    """(b): the same model, loss and optimizer on random tensors already on the device."""
    device = trainer.device
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(input_shape, generator=generator).to(device, memory_format=trainer.memory_format)
    high = int(trainer.task.num_outputs)
    targets = torch.randint(0, high, tuple(target_shape), generator=generator).to(device)
    trainer.net.train()
    totals = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        _step(trainer, inputs, targets)
        _sync(device)
        if i >= warmup:
            totals.append(time.perf_counter() - started)
    return {"images_per_second": input_shape[0] * len(totals) / sum(totals), "step_ms": 1e3 * sum(totals) / len(totals),
            "median_step_ms": 1e3 * statistics.median(totals)}


def _aten_calls(loss: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> int:
    """How many ATen operators one forward+backward dispatches (below autograd, so the backward's too):
    at small shapes the time is about this count times the dispatch cost, not arithmetic."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    x = inputs.detach().requires_grad_(True)
    with Count():
        loss(x, targets).backward()
    return Count.calls


def loss_timings(device: torch.device, repeats: int = 20, warmup: int = 3) -> dict[str, Any]:
    """(c): forward+backward of every registered loss, relative to CE at the same shapes, two ways:

    - ``vs_ce``: all losses round-robin (one step of each, then the next round), so that a busy
      machine slows them alike and the ratios hold; each loss then runs after the others, with
      their code and data in the caches;
    - ``vs_ce_paired``: each loss alternated with CE alone (loss, CE, loss, ...), as a run uses one
      loss every step: its own steady state against CE's.
    The two disagree (docs/BENCHMARKS.md §7 (k)): at a classification batch's size, where the time is
    operator dispatch, Python-heavy losses read up to 0.3x higher round-robin than paired; at a
    segmentation batch's size the region losses read up to 0.2x higher paired."""
    from pipeline.errors import ConfigError
    from pipeline.losses import available_losses, build_loss

    out: dict[str, Any] = {}
    for task, shape in LOSS_SHAPES.items():
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn(shape, generator=generator).to(device)
        # a loss on a cosine head (LDAM: head = "cosine") takes cosines: standard normal logits times
        # its scale of 30 would put most probabilities among float32's denormals, slow on x86 CPUs
        cosines = (torch.rand(shape, generator=generator) * 2 - 1).to(device)
        targets = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator).to(device)
        names = available_losses(None if task == "segmentation" else "classification")
        skipped: dict[str, str] = {}
        losses: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}
        for name in names:
            try:
                loss = build_loss(name, num_classes=shape[1], class_counts=ISIC_COUNTS,
                                  **REQUIRED_PARAMS.get(name, {})).to(device)
                if hasattr(loss, "set_step"):
                    loss.set_step(0, 1000, steps_per_epoch=100)
                inputs = cosines if getattr(loss, "head", None) == "cosine" else logits
                loss(inputs.detach().requires_grad_(True), targets).backward()  # refuses wrong shapes here
                losses[name] = (loss, inputs)
            except (ConfigError, ValueError, RuntimeError) as err:  # a loss that does not take this task's shapes
                skipped[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        medians = _median_times(losses, targets, device, repeats, warmup)
        rows: dict[str, dict[str, Any]] = {}
        for name in names:
            if name in skipped:
                rows[name] = {"skipped": skipped[name]}
                continue
            loss, inputs = losses[name]
            rows[name] = {"ms": 1e3 * medians[name], "aten_calls": _aten_calls(loss, inputs, targets)}
            if "ce" in losses:
                rows[name]["vs_ce"] = medians[name] / medians["ce"]
                paired = (_median_times({name: losses[name], "ce": losses["ce"]}, targets, device, repeats, warmup)
                          if name != "ce" else {"ce": 1.0})
                rows[name]["vs_ce_paired"] = paired[name] / paired["ce"]
        out[task] = {"shape": list(shape), "losses": rows}
    return out


def _median_times(losses: dict[str, tuple[torch.nn.Module, torch.Tensor]], targets: torch.Tensor,
                  device: torch.device, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of one forward+backward of each (loss, inputs), the losses taken round-robin."""
    times: dict[str, list[float]] = {name: [] for name in losses}
    for i in range(warmup + repeats):
        for name, (loss, inputs) in losses.items():
            x = inputs.detach().requires_grad_(True)
            _sync(device)
            started = time.perf_counter()
            loss(x, targets).backward()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _augment_on_device(input_transform: Any) -> str | bool:
    from pipeline.data.transforms import BatchAugment, BatchColourJitter

    augment = getattr(input_transform, "augment", None)
    return "all" if isinstance(augment, BatchAugment) else "colour_jitter" if isinstance(augment, BatchColourJitter) else False


def bench(cfg: dict, *, steps: int = 40, warmup: int = 5, workers: int | None = None,
          losses: bool = False, threads: int | None = None) -> dict[str, Any]:
    """(a), (b) and optionally (c) for one resolved run config (see the module docstring)."""
    from pipeline.training import setup

    cfg = copy.deepcopy(cfg)
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        cfg["run_dir"] = str(Path(tmp) / "run")
        if workers is not None:
            cfg["train"]["num_workers"] = workers
        trainer = setup(cfg, threads=threads)
        if hasattr(trainer.criterion, "set_step"):
            trainer.criterion.set_step(0, trainer.steps_per_epoch * trainer.epochs, steps_per_epoch=trainer.steps_per_epoch)
        real = pipeline_throughput(trainer, steps, warmup)
        limit = model_limit(trainer, real["input_shape"], real["target_shape"], steps, warmup)
    result = {
        "experiment": cfg["experiment"], "task": cfg["task"], "model": cfg["model"], "loss": cfg["loss"]["name"],
        "sampler": cfg["sampler"]["name"], "decode_cache": cfg["train"].get("decode_cache"), "device": str(trainer.device), "num_workers": trainer.num_workers,
        "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "off",
        "channels_last": trainer.memory_format == torch.channels_last,
        "normalise_on_device": trainer.input_transform is not None,
        # what of the augmentation the batch gets on the device: False, "colour_jitter" or "all"
        "augment_on_device": _augment_on_device(trainer.input_transform),
        "fused_optimizer": bool(trainer.optimizer.defaults.get("fused")),
        "torch_threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
        "pipeline": real, "model_limit": limit,
        "ratio_pipeline_to_limit": real["images_per_second"] / limit["images_per_second"],
    }
    if losses:
        result["losses"] = loss_timings(trainer.device)
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What a person reads: throughput, ratio, data wait; loss times against CE."""
    real, limit = result["pipeline"], result["model_limit"]
    lines = [f"{result['experiment']} on {result['device']} ({result['num_workers']} loader workers, "
             f"{result['torch_threads']} threads), batch {real['batch_size']}, input {real['input_shape']}",
             f"(a) pipeline:     {real['images_per_second']:8.1f} images/s  mean step {real['step_ms']:.1f} ms "
             f"(median {real['median_step_ms']:.1f}), waiting for data {real['data_wait_ms']:.1f} ms a step "
             f"({real['data_wait_share']:.0%} of the time)",
             f"(b) model limit:  {limit['images_per_second']:8.1f} images/s  mean step {limit['step_ms']:.1f} ms "
             f"(median {limit['median_step_ms']:.1f})",
             f"    ratio (a)/(b): {result['ratio_pipeline_to_limit']:.2f}"]
    for task, block in result.get("losses", {}).items():
        lines.append(f"(c) {task} losses, forward+backward at {block['shape']} (x CE: round-robin, and alternated with CE alone):")
        for name, row in block["losses"].items():
            lines.append(f"    {name:18s} " + (f"{row['ms']:8.2f} ms  {row.get('vs_ce', float('nan')):5.2f}x  "
                                              f"(paired {row.get('vs_ce_paired', float('nan')):4.2f}x)  "
                                              f"{row['aten_calls']:3d} ATen ops"
                                              if "ms" in row else f"skipped ({row['skipped']})"))
    return lines


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    from pipeline.atomic import write_text

    return write_text(path, json.dumps(result, indent=2))
