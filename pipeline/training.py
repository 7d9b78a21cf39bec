"""One trainer for both tasks. The task object (pipeline.tasks) supplies the model, the training
data and the validation score; everything else is shared: seeding, optimiser and schedule, mixed
precision on GPU, torchrun data parallelism, atomic per-epoch checkpoints, resume, model selection
on the validation split (never on test), progress lines and a per-epoch history.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Sampler
from torch.utils.data.distributed import DistributedSampler

from pipeline.atomic import atomic_path
from pipeline.data.manifest import read_manifest, validate_manifest
from pipeline.errors import ConfigError, TrainingError
from pipeline.losses import build_loss
from pipeline.optim import build_optimizer, build_scheduler
from pipeline.progress import progress_bar
from pipeline import rundir
from pipeline.rundir import fingerprint
from pipeline.tasks import get_task
from pipeline.tasks.base import Task

log = logging.getLogger("pipeline.train")


# --------------------------------------------------------------------------------------------- setup
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but no CUDA device is available")
    return device


def auto_flag(value: str | bool, device: torch.device) -> bool:
    """A train setting that is true, false or auto (= on CUDA)."""
    return device.type == "cuda" if value == "auto" else bool(value)


def memory_format_for(train: dict) -> torch.memory_format:
    """The layout ``train.channels_last`` asks for: channels_last (NHWC) under ``auto`` on every
    device. cuDNN's bf16/fp16 convolutions run on tensor cores without layout transposes (PyTorch's
    channels-last tutorial), and oneDNN's CPU convolutions are faster in NHWC too (1.2-1.4x a training step here, docs/BENCHMARKS.md §7)."""
    return torch.contiguous_format if train.get("channels_last", "auto") is False else torch.channels_last


def native_cpu_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). Elsewhere oneDNN emulates
    bf16 and a step is slower than in float32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a PyTorch without these probes: assume emulation
        return False


def amp_dtype_for(device: torch.device, amp: str | bool) -> torch.dtype | None:
    """Mixed precision. CUDA (``auto``/``true``): bf16 where supported (no loss scaling needed), else
    fp16. CPU: bf16 under ``auto`` where the CPU computes it natively (AVX512-BF16, AMX: about 2x a
    training step, docs/BENCHMARKS.md §7), float32 elsewhere; ``true`` forces bf16, ``false`` float32.
    Runs repeat bit for bit in both; only float32 results match from one CPU model to another."""
    if amp is False:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and (amp is True or native_cpu_bf16()):
        return torch.bfloat16
    return None


def distributed_context() -> tuple[int, int]:
    """(world_size, rank); initialises torch.distributed when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    rank = torch.distributed.get_rank() if world_size > 1 else 0
    return world_size, rank


def save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_split(cfg: dict) -> pd.DataFrame:
    dataset = cfg["dataset"]
    frame = read_manifest(dataset["manifest"])
    return validate_manifest(frame, task=cfg["task"], classes=dataset["classes"], require_split=True,
                             root=Path(dataset["root"]), mask_root=Path(dataset["mask_root"]), check_files=True)


# ------------------------------------------------------------------------------------------ training
@dataclass
class Trainer:
    """Everything one run's training loop uses, built once by ``setup``."""

    cfg: dict
    task: Task
    device: torch.device
    amp_dtype: torch.dtype | None
    world_size: int
    rank: int
    model: nn.Module
    net: nn.Module  # the model, wrapped for data parallelism under torchrun
    criterion: nn.Module
    dataset: torch.utils.data.Dataset
    loader: DataLoader
    shuffle_generator: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    val_frame: pd.DataFrame
    class_counts: list[int]
    num_workers: int
    steps_per_epoch: int
    run_id: str
    sync_every: int = 1  # steps between host reads of the loss (every step on CPU; 50 on GPU)
    memory_format: torch.memory_format = torch.contiguous_format  # of the model and its input batches
    input_transform: Callable | None = None  # applied to each input batch on the device (normalise/augment_on_device)

    def device_inputs(self, inputs) -> torch.Tensor:
        """A loader batch on the device, in the model's memory layout (normalised there if asked). A
        (pixels, aspect) pair is the whole photos of ``augment_on_device: all`` with their width / height."""
        aspect = None
        if isinstance(inputs, (list, tuple)):
            inputs, aspect = inputs
        inputs = inputs.to(self.device, non_blocking=True)
        if self.input_transform is not None:
            inputs = self.input_transform(inputs) if aspect is None else self.input_transform(inputs, aspect)
        return inputs.contiguous(memory_format=self.memory_format)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def epochs(self) -> int:
        return self.cfg["train"]["epochs"]

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg["run_dir"])


def setup(cfg: dict, threads: int | None = None) -> Trainer:
    """Seed, device, data, model, loss, loader, optimiser and schedule of one run (no training yet).

    The order of the seeded steps (model initialisation after ``seed_everything``) is part of the
    result: keep it when editing."""
    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(cfg["run_dir"])
    world_size, rank = distributed_context()
    if rank == 0:
        (run_dir / rundir.CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        rundir.write_run_config(cfg, run_dir / rundir.CHECKPOINT_CONFIG)

    seed = cfg["seed"]
    seed_everything(seed)
    device = select_device(cfg["train"]["device"])
    amp_dtype = amp_dtype_for(device, cfg["train"]["amp"])
    task = get_task(cfg)
    frame = load_split(cfg)
    train_frame = frame[frame["split"] == "train"].reset_index(drop=True)
    val_frame = frame[frame["split"] == "val"].reset_index(drop=True)

    memory_format = memory_format_for(cfg["train"])
    model = task.build_model().to(device, memory_format=memory_format)
    counts = task.class_counts(train_frame)
    loss_spec = dict(cfg["loss"])
    criterion = build_loss(loss_spec.pop("name"), num_classes=task.num_outputs, class_counts=counts, **loss_spec).to(device)
    # train.normalise_on_device (auto: on CUDA, for a task that can): uint8 batches cross to the
    # device and are normalised there; on the CPU the same arithmetic in the loader (same numbers).
    # train.augment_on_device (auto: on CUDA): the colour jitter too, per image on the whole batch;
    # the loader's workers keep the crops, flips and turns (ResNet-50 at 224 px on an H200 waited for
    # its loader 83% of the time; the jitter was 3.9 of a worker's 6.3 ms an image, docs/BENCHMARKS.md §7)
    # augment_on_device: all moves the crops, flips and turns too (one resampling of the whole batch,
    # pipeline.data.transforms.BatchAugment): the loader then only serves cached pixels
    can = hasattr(task, "batch_transform")
    on_device_setting = cfg["train"].get("augment_on_device", "auto")
    all_on_device = can and on_device_setting == "all" and task.jitters_colour()
    jitter_on_device = can and not all_on_device and auto_flag(on_device_setting, device) and task.jitters_colour()
    on_device = can and (all_on_device or jitter_on_device or auto_flag(cfg["train"].get("normalise_on_device", "auto"), device))
    dataset = (task.train_dataset(train_frame, model, seed, normalise=False, colour_jitter=not jitter_on_device,
                                  augment=not all_on_device)
               if on_device else task.train_dataset(train_frame, model, seed))
    input_transform = (task.batch_transform(model, seed, colour_jitter=jitter_on_device, rank=rank, augment=all_on_device)
                       if on_device else None)
    sampler = task.train_sampler(dataset, seed, world_size, rank)
    shuffle_generator = torch.Generator()
    if sampler is None and world_size > 1:  # plain shuffling, sharded across torchrun ranks
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    elif sampler is None:
        # plain shuffling from a generator of its own, seeded each epoch (run_epoch). The loader gets
        # another one: a DataLoader draws its workers' base seed from its generator when it creates
        # an iterator, which persistent workers do once and a resumed run again, so a shared
        # generator gave a resumed run other epoch orders than an uninterrupted one.
        sampler = RandomSampler(dataset, generator=shuffle_generator)
    tcfg = cfg["train"]
    num_workers = max((threads or 1) - 1, 0) if tcfg["num_workers"] == "auto" else tcfg["num_workers"]
    batch_size = tcfg["batch_size"]
    loader = DataLoader(dataset, batch_size=batch_size, sampler=RecordedSampler(sampler), num_workers=num_workers,
                        drop_last=len(dataset) > batch_size, generator=torch.Generator().manual_seed(seed),
                        persistent_workers=num_workers > 0, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader) if tcfg["max_train_batches"] is None else min(len(loader), tcfg["max_train_batches"])
    optimizer = build_optimizer(tcfg["optimizer"], model.parameters())
    scheduler = build_scheduler(tcfg["scheduler"], optimizer, steps_per_epoch, tcfg["epochs"])
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    net: nn.Module = model
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Trainer(cfg=cfg, task=task, device=device, amp_dtype=amp_dtype, world_size=world_size, rank=rank,
                   model=model, net=net, criterion=criterion, dataset=dataset, loader=loader,
                   shuffle_generator=shuffle_generator, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                   val_frame=val_frame, class_counts=counts, num_workers=num_workers,
                   steps_per_epoch=steps_per_epoch, run_id=fingerprint(cfg),
                   sync_every=1 if device.type == "cpu" else 50, memory_format=memory_format,
                   input_transform=input_transform)


class RecordedSampler(Sampler):
    """The run's sampler, passed through index by index, keeping this epoch's indices so that an error
    can name the images of a batch (batch b holds positions b*B ... b*B + B - 1). It draws nothing
    itself and forwards every other attribute (set_epoch, state_dict, observe, ...) to the sampler."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.epoch_indices: list[int] = []

    def __iter__(self):
        self.epoch_indices = []
        for index in self.sampler:  # lazily, as the loader asks: the draws happen when they did before
            self.epoch_indices.append(index)
            yield index

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name: str):
        if name == "sampler":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.sampler, name)


def batch_image_ids(trainer: Trainer, batch_index: int) -> list[str]:
    """image_ids of one batch of the current epoch ([] when the dataset cannot name its items)."""
    if not hasattr(trainer.dataset, "image_id"):
        return []
    size = trainer.loader.batch_size
    positions = trainer.loader.sampler.epoch_indices[batch_index * size : (batch_index + 1) * size]
    return list(dict.fromkeys(trainer.dataset.image_id(int(i)) for i in positions))  # a patch data set repeats images


def resume(trainer: Trainer) -> dict:
    """The loop state: from checkpoints/last.pt when it belongs to this run (restoring the model,
    optimiser, schedule and scaler too), else a fresh start."""
    state = {"epoch": 0, "global_step": 0, "best_score": -math.inf, "best_epoch": 0, "history": []}
    last_path = trainer.run_dir / rundir.LAST_CHECKPOINT
    if not last_path.is_file():
        return state
    checkpoint = torch.load(last_path, map_location=trainer.device, weights_only=True)
    if checkpoint.get("fingerprint") != trainer.run_id:
        log.warning("%s belongs to another configuration or code version: training from scratch", last_path)
        return state
    trainer.model.load_state_dict(checkpoint["model"])
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    trainer.scheduler.load_state_dict(checkpoint["scheduler"])
    trainer.scaler.load_state_dict(checkpoint["scaler"])
    if "sampler" in checkpoint:
        trainer.loader.sampler.load_state_dict(checkpoint["sampler"])
    state = {k: checkpoint[k] for k in state}
    log.info("resuming %s from %s: %d/%d epochs done", trainer.cfg["experiment"], last_path, state["epoch"], trainer.epochs)
    return state


def run_epoch(trainer: Trainer, state: dict, epoch: int, track_weights: bool) -> tuple[float, list[str]]:
    """One epoch of optimiser steps; returns the mean training loss and the loss-weight log rows."""
    cfg, seed, epochs = trainer.cfg, trainer.cfg["seed"], trainer.epochs
    steps_per_epoch, criterion, optimizer = trainer.steps_per_epoch, trainer.criterion, trainer.optimizer
    total_steps = steps_per_epoch * epochs
    progress_every = max(steps_per_epoch // 4, 25)  # a progress line about every quarter of a long epoch
    # Per-epoch seeding (global RNGs, the loader's shuffle) and the datasets' per-item augmentation
    # seeds (seed, epoch, item), which reach persistent loader workers through shared memory, make a
    # resumed run match an uninterrupted one whatever the number of workers.
    seed_everything(seed * 10_007 + epoch)
    trainer.shuffle_generator.manual_seed(seed * 10_007 + epoch)
    # one 64-bit draw before the permutation, as when the loader drew its base seed from this
    # generator at every epoch: the epoch orders (and results) of earlier versions are kept
    torch.empty((), dtype=torch.int64).random_(generator=trainer.shuffle_generator)
    if hasattr(trainer.loader.sampler, "set_epoch"):
        trainer.loader.sampler.set_epoch(epoch)
    if hasattr(trainer.dataset, "set_epoch"):
        trainer.dataset.set_epoch(epoch)
    if hasattr(trainer.input_transform, "set_epoch"):  # the colour jitter drawn on the device
        trainer.input_transform.set_epoch(epoch)
    trainer.net.train()
    # Running sums stay on the device: reading a loss (.item(), a finiteness test) makes the host wait
    # for the GPU, so it happens every `sync_every` steps (every step on CPU, where it costs nothing).
    running = torch.zeros((), dtype=torch.float64, device=trainer.device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=trainer.device)  # first non-finite batch
    seen = 0
    weight_rows = []
    sampler = trainer.loader.sampler
    feedback = getattr(sampler, "wants_feedback", False)  # hard_examples: per-image losses go back to it
    batch_size = trainer.loader.batch_size
    first_step = state["global_step"]
    # a bar advanced by hand: wrapping the loader would keep its iterator alive past the epoch's
    # last step, and with persistent workers that shifts the next epoch's draws (exact resume breaks)
    bar = progress_bar(f"epoch {epoch + 1}/{trainer.epochs}", total=steps_per_epoch, unit="batch", enabled=trainer.is_main)
    for batch_index, (inputs, targets) in enumerate(trainer.loader):
        if batch_index >= steps_per_epoch:
            break
        step = state["global_step"]
        if hasattr(criterion, "set_step"):
            criterion.set_step(step, total_steps, steps_per_epoch=steps_per_epoch)
        inputs = trainer.device_inputs(inputs)
        targets = targets.to(trainer.device, non_blocking=True)
        with torch.autocast(trainer.device.type, dtype=trainer.amp_dtype, enabled=trainer.amp_dtype is not None):
            logits = trainer.net(inputs)
        loss = criterion(logits.float(), targets)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), batch_index, first_bad)
        if (batch_index + 1) % trainer.sync_every == 0 or batch_index + 1 == steps_per_epoch:
            _stop_if_non_finite(trainer, int(first_bad), epoch, first_step)
        if feedback:  # batches come in the sampler's order: batch b holds positions b*B … b*B + len - 1
            per_image = nn.functional.cross_entropy(logits.detach().float(), targets, reduction="none")
            first = batch_index * batch_size
            sampler.observe(sampler.last_indices[first : first + len(targets)],
                            per_image.reshape(len(targets), -1).mean(1).cpu().tolist())
        optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        if cfg["train"]["grad_clip"]:
            trainer.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(trainer.model.parameters(), cfg["train"]["grad_clip"])
        trainer.scaler.step(optimizer)
        trainer.scaler.update()
        trainer.scheduler.step()
        state["global_step"] += 1
        running += loss.detach() * len(targets)
        seen += len(targets)
        if track_weights:
            weight_rows.append(f"{step}," + ",".join(f"{w:.5f}" for w in criterion.current_weights().tolist()))
        bar.update()
        if trainer.is_main and (batch_index + 1) % progress_every == 0 and batch_index + 1 < steps_per_epoch:
            log.info("%s seed %d | epoch %d/%d | batch %d/%d | loss %.4f", cfg["experiment"], seed, epoch + 1,
                     epochs, batch_index + 1, steps_per_epoch, running.item() / max(seen, 1))
    bar.close()
    _stop_if_non_finite(trainer, int(first_bad), epoch, first_step)
    if feedback:
        sampler.end_epoch()  # every rank: the epoch's losses become the memory the next epoch draws from
    return running.item() / max(seen, 1), weight_rows


MAX_NAMED_IMAGES = 32  # a training error lists at most this many image ids


def _stop_if_non_finite(trainer: Trainer, bad_batch: int, epoch: int, first_step: int) -> None:
    """Stop with the step and batch of the first non-finite loss of the epoch (-1: none so far)."""
    if bad_batch < 0:
        return
    cfg = trainer.cfg
    ids = batch_image_ids(trainer, bad_batch)
    more = f" and {len(ids) - MAX_NAMED_IMAGES} more" if len(ids) > MAX_NAMED_IMAGES else ""
    images = f" Images of that batch: {', '.join(ids[:MAX_NAMED_IMAGES])}{more}." if ids else ""
    raise TrainingError(
        f"{cfg['experiment']} seed {cfg['seed']}: non-finite loss at epoch {epoch + 1}, batch {bad_batch + 1}, "
        f"optimizer step {first_step + bad_batch}.{images} The last good checkpoint "
        f"({trainer.run_dir / rundir.LAST_CHECKPOINT}) is kept. "
        "Lower the learning rate, check the loss parameters, or check the inputs of this batch."
    )


def _stop_if_weights_non_finite(trainer: Trainer, epoch: int, step: int) -> None:
    """Before an epoch's checkpoint: every weight and buffer finite, or stop naming the first that is
    not. A finite loss does not prove it: oneDNN's bf16 convolution backward on the CPU has been seen
    to write NaN into the weight gradient of kernel taps that only ever meet padding (a stride-2 3x3
    convolution whose input is 1x1 pixel; docs/BENCHMARKS.md §7 (f)); the bf16 forward skips those taps, so
    the loss stays finite while a float32 or ONNX run of the saved model would give NaN."""
    named = [(name, t) for name, t in (*trainer.model.named_parameters(), *trainer.model.named_buffers())
             if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()  # one host sync, not one per tensor
    for (name, tensor), ok in zip(named, finite):
        if not ok:
            cfg = trainer.cfg
            raise TrainingError(
                f"{cfg['experiment']} seed {cfg['seed']}: non-finite values in {name} {tuple(tensor.shape)} after "
                f"epoch {epoch + 1} (optimizer step {step}), with finite losses. The last good checkpoint "
                f"({trainer.run_dir / rundir.LAST_CHECKPOINT}) is kept. "
                + ("With bf16 on the CPU this comes from feature maps of 1x1 pixel: train at a larger image "
                   "size, or set train.amp: false." if trainer.amp_dtype == torch.bfloat16 and trainer.device.type == "cpu"
                   else "Lower the learning rate or set train.grad_clip."))


def save_checkpoint(trainer: Trainer, state: dict, improved: bool, weight_rows: list[str]) -> None:
    """After an epoch (main rank): loss-weight rows, best.pt when the score improved, last.pt, history.csv."""
    run_dir, task = trainer.run_dir, trainer.task
    if weight_rows:
        with (run_dir / rundir.LOSS_WEIGHTS).open("a") as handle:
            handle.write("\n".join(weight_rows) + "\n")
    if improved:
        save_atomic({"model": trainer.model.state_dict(), "epoch": state["epoch"], "score": state["best_score"],
                     "score_name": task.score_name, "fingerprint": fingerprint(trainer.cfg, with_code=False)},
                    run_dir / rundir.BEST_CHECKPOINT)
    checkpoint = {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                  "scheduler": trainer.scheduler.state_dict(), "scaler": trainer.scaler.state_dict(),
                  "fingerprint": trainer.run_id, **state}
    if getattr(trainer.loader.sampler, "wants_feedback", False):
        checkpoint["sampler"] = trainer.loader.sampler.state_dict()
    save_atomic(checkpoint, run_dir / rundir.LAST_CHECKPOINT)  # last, so a crash before it resumes from the previous epoch
    pd.DataFrame(state["history"]).to_csv(run_dir / rundir.HISTORY, index=False)


class TensorBoardLog:
    """``train.tensorboard: true``: each epoch's training loss, validation score, learning rate and
    time, and the loss's class weights at every recorded step, as TensorBoard scalars in
    ``<run>/tensorboard`` (main rank). history.csv and loss_weights.csv remain the record the
    reports read; this is a live view. A resumed run drops events past its checkpoint (purge_step)."""

    def __init__(self, run_dir: Path, output_names: list[str], purge_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard needs the tensorboard package: pip install 'pipeline[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / rundir.TENSORBOARD), purge_step=purge_step or None)
        self.output_names = output_names

    def epoch(self, record: dict, step: int, weight_rows: list[str]) -> None:
        for key, value in record.items():
            if key != "epoch" and value is not None and math.isfinite(value):
                self.writer.add_scalar(f"{'train' if key == 'train_loss' else 'epoch'}/{key}", value, step)
        for row in weight_rows:  # "step,w0,w1,..." as written to loss_weights.csv
            at, *weights = row.split(",")
            for name, weight in zip(self.output_names, weights):
                self.writer.add_scalar(f"loss_weight/{name}", float(weight), int(at))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def output_names(task: Task) -> list[str]:
    """Names of the model's output channels (classes; segmentation: background, then lesion types)."""
    return list(task.classes) if task.name == "classification" else ["background", *task.types]


def train(cfg: dict, *, threads: int | None = None) -> dict:
    """Train one run (experiment × seed); resume from checkpoints/last.pt when it belongs to this run."""
    trainer = setup(cfg, threads)
    state = resume(trainer)
    task, seed, epochs = trainer.task, cfg["seed"], trainer.epochs
    track_weights = hasattr(trainer.criterion, "current_weights") and trainer.is_main
    if track_weights and state["epoch"] == 0:
        (trainer.run_dir / rundir.LOSS_WEIGHTS).write_text(
            "step," + ",".join(f"w{i}" for i in range(task.num_outputs)) + "\n")

    board = (TensorBoardLog(trainer.run_dir, output_names(task), state["global_step"])
             if cfg["train"].get("tensorboard") and trainer.is_main else None)

    for epoch in range(state["epoch"], epochs):
        started = time.perf_counter()
        train_loss, weight_rows = run_epoch(trainer, state, epoch, track_weights)
        _stop_if_weights_non_finite(trainer, epoch, state["global_step"])
        validate_now = trainer.is_main and ((epoch + 1) % cfg["train"]["val_every"] == 0 or epoch + 1 == epochs)
        val_score = (task.validation_score(trainer.model, trainer.val_frame, trainer.device, trainer.num_workers,
                                           trainer.amp_dtype) if validate_now else math.nan)
        state["epoch"] = epoch + 1
        # train.select: "best" keeps the validated epoch with the highest score; "last" (a plain training loop's
        # rule) the final weights, validated as often as val_every says, for the record only
        improved = validate_now and (cfg["train"]["select"] == "last" or val_score > state["best_score"])
        if improved:
            state["best_score"], state["best_epoch"] = val_score, epoch + 1
        record = {"epoch": epoch + 1, "train_loss": train_loss, f"val_{task.score_name}": val_score,
                  "lr": trainer.optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - started, 2)}
        state["history"].append(record)
        if trainer.is_main:
            save_checkpoint(trainer, state, improved, weight_rows)
            if board is not None:
                board.epoch(record, state["global_step"], weight_rows)
            log.info("%s seed %d | epoch %d/%d | loss %.4f | val %s %.4f (best %.4f @ %d) | lr %.2e | %.1fs",
                     cfg["experiment"], seed, epoch + 1, epochs, record["train_loss"], task.score_name, val_score,
                     state["best_score"], state["best_epoch"], record["lr"], record["seconds"])

    summary = {"experiment": cfg["experiment"], "seed": seed, "fingerprint": trainer.run_id, "epochs": epochs,
               "select": cfg["train"]["select"], "best_epoch": state["best_epoch"],
               f"best_val_{task.score_name}": state["best_score"],
               "steps": state["global_step"], "device": str(trainer.device),
               "precision": str(trainer.amp_dtype or torch.float32).removeprefix("torch."), "world_size": trainer.world_size,
               "history": state["history"], "train_class_counts": trainer.class_counts}
    if board is not None:
        board.close()
    if trainer.is_main:
        rundir.write_training_summary(summary, trainer.run_dir)
    if trainer.world_size > 1:
        torch.distributed.destroy_process_group()
    return summary
