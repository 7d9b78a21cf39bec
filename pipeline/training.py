"""One trainer for both tasks. The task object (pipeline.tasks) supplies the model, the training
data and the validation score; everything else is shared: seeding, optimiser and schedule, mixed
precision on GPU, torchrun data parallelism, atomic per-epoch checkpoints, resume, model selection
on the validation split (never on test), progress lines and a per-epoch history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from pipeline.atomic import atomic_path, write_text
from pipeline.config import write_yaml_atomic
from pipeline.data.manifest import read_manifest, validate_manifest
from pipeline.errors import ConfigError, TrainingError
from pipeline.losses import build_loss
from pipeline.tasks import get_task

log = logging.getLogger("pipeline.train")
SUMMARY_FILE = "training_summary.json"


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


def amp_dtype_for(device: torch.device, amp: str | bool) -> torch.dtype | None:
    """Mixed precision on GPU only: bf16 where supported (no loss scaling needed), else fp16."""
    if device.type != "cuda" or amp is False:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def distributed_context() -> tuple[int, int]:
    """(world_size, rank); initialises torch.distributed when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    rank = torch.distributed.get_rank() if world_size > 1 else 0
    return world_size, rank


def build_optimizer(spec: dict, params) -> torch.optim.Optimizer:
    name, lr = spec["name"], spec.get("lr", 1e-3)
    weight_decay = spec.get("weight_decay", 0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=spec.get("momentum", 0.9), weight_decay=weight_decay,
                               nesterov=spec.get("nesterov", False))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; use sgd, adam or adamw")


def build_scheduler(spec: dict, optimizer, steps_per_epoch: int, epochs: int):
    """A per-optimizer-step schedule (so it resumes exactly with the step count)."""
    name = spec["name"]
    total = steps_per_epoch * epochs
    warmup = min(spec.get("warmup_epochs", 0) * steps_per_epoch, max(total - 1, 0))
    sched = torch.optim.lr_scheduler
    if name == "none":
        main = sched.LambdaLR(optimizer, lambda step: 1.0)
    elif name == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1))
    elif name == "step":
        main = sched.StepLR(optimizer, step_size=spec.get("step_size", 10) * steps_per_epoch, gamma=spec.get("gamma", 0.1))
    elif name == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(total, 1))
    else:
        raise ConfigError(f"unknown scheduler {name!r}")
    if warmup == 0:
        return main
    ramp = sched.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def fingerprint(cfg: dict, *, with_code: bool = True) -> str:
    """What makes two runs the same training: everything but where it is written. Resuming also
    requires the same code version; using a finished checkpoint does not."""
    keys = ("experiment", "seed", "task", "dataset", "model", "loss", "sampler", "train")
    keys += ("code_version",) if with_code else ()
    blob = json.dumps({k: cfg[k] for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_split(cfg: dict) -> pd.DataFrame:
    dataset = cfg["dataset"]
    frame = read_manifest(dataset["manifest"])
    return validate_manifest(frame, task=cfg["task"], classes=dataset["classes"], require_split=True,
                             root=Path(dataset["root"]), mask_root=Path(dataset["mask_root"]), check_files=True)


# ------------------------------------------------------------------------------------------ training
def train(cfg: dict, *, threads: int | None = None) -> dict:
    """Train one run (experiment × seed); resume from checkpoints/last.pt when it belongs to this run."""
    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(cfg["run_dir"])
    ckpt_dir = run_dir / "checkpoints"
    world_size, rank = distributed_context()
    is_main = rank == 0
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_yaml_atomic(cfg, ckpt_dir / "config.yaml")

    seed = cfg["seed"]
    seed_everything(seed)
    device = select_device(cfg["train"]["device"])
    amp_dtype = amp_dtype_for(device, cfg["train"]["amp"])
    task = get_task(cfg)
    frame = load_split(cfg)
    train_frame = frame[frame["split"] == "train"].reset_index(drop=True)
    val_frame = frame[frame["split"] == "val"].reset_index(drop=True)

    model = task.build_model().to(device)
    counts = task.class_counts(train_frame)
    loss_spec = dict(cfg["loss"])
    criterion = build_loss(loss_spec.pop("name"), num_classes=task.num_outputs, class_counts=counts, **loss_spec).to(device)
    dataset = task.train_dataset(train_frame, model, seed)
    sampler = task.train_sampler(dataset, seed, world_size, rank)
    if sampler is None and world_size > 1:  # plain shuffling, sharded across torchrun ranks
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    tcfg = dict(cfg["train"])
    if tcfg["num_workers"] == "auto":
        tcfg["num_workers"] = max((threads or 1) - 1, 0)
    batch_size = tcfg["batch_size"]
    shuffle_generator = torch.Generator()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=sampler is None,
                        num_workers=tcfg["num_workers"], drop_last=len(dataset) > batch_size,
                        generator=shuffle_generator, persistent_workers=tcfg["num_workers"] > 0,
                        pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader) if tcfg["max_train_batches"] is None else min(len(loader), tcfg["max_train_batches"])
    epochs = tcfg["epochs"]
    total_steps = steps_per_epoch * epochs
    optimizer = build_optimizer(tcfg["optimizer"], model.parameters())
    scheduler = build_scheduler(tcfg["scheduler"], optimizer, steps_per_epoch, epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    net: nn.Module = model
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    state = {"epoch": 0, "global_step": 0, "best_score": -math.inf, "best_epoch": 0, "history": []}
    run_id = fingerprint(cfg)
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if last_path.is_file():
        checkpoint = torch.load(last_path, map_location=device, weights_only=True)
        if checkpoint.get("fingerprint") == run_id:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            scaler.load_state_dict(checkpoint["scaler"])
            state = {k: checkpoint[k] for k in state}
            log.info("resuming %s from %s: %d/%d epochs done", cfg["experiment"], last_path, state["epoch"], epochs)
        else:
            log.warning("%s belongs to another configuration or code version: training from scratch", last_path)

    weights_log = run_dir / "loss_weights.csv"
    track_weights = hasattr(criterion, "current_weights") and is_main
    if track_weights and state["epoch"] == 0:
        weights_log.write_text("step," + ",".join(f"w{i}" for i in range(task.num_outputs)) + "\n")

    progress_every = max(steps_per_epoch // 4, 25)  # a progress line about every quarter of a long epoch
    for epoch in range(state["epoch"], epochs):
        started = time.perf_counter()
        # Per-epoch seeding (global RNGs for augmentation, the loader's shuffle and worker seeds) makes a
        # resumed run match an uninterrupted one.
        seed_everything(seed * 10_007 + epoch)
        shuffle_generator.manual_seed(seed * 10_007 + epoch)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        net.train()
        running, seen = 0.0, 0
        weight_rows = []
        for batch_index, (inputs, targets) in enumerate(loader):
            if batch_index >= steps_per_epoch:
                break
            step = state["global_step"]
            if hasattr(criterion, "set_step"):
                criterion.set_step(step, total_steps)
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = net(inputs)
            loss = criterion(logits.float(), targets)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{cfg['experiment']} seed {seed}: non-finite loss ({loss.item()}) at epoch {epoch + 1}, batch "
                    f"{batch_index + 1}, optimizer step {step}. The last good checkpoint ({last_path}) is kept. "
                    "Lower the learning rate, check the loss parameters, or check the inputs of this batch."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tcfg["grad_clip"]:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            state["global_step"] += 1
            running += loss.item() * len(targets)
            seen += len(targets)
            if track_weights:
                weight_rows.append(f"{step}," + ",".join(f"{w:.5f}" for w in criterion.current_weights().tolist()))
            if is_main and (batch_index + 1) % progress_every == 0 and batch_index + 1 < steps_per_epoch:
                log.info("%s seed %d | epoch %d/%d | batch %d/%d | loss %.4f", cfg["experiment"], seed, epoch + 1,
                         epochs, batch_index + 1, steps_per_epoch, running / max(seen, 1))

        validate_now = is_main and ((epoch + 1) % tcfg["val_every"] == 0 or epoch + 1 == epochs)
        val_score = task.validation_score(model, val_frame, device, tcfg["num_workers"], amp_dtype) if validate_now else math.nan
        state["epoch"] = epoch + 1
        improved = validate_now and val_score > state["best_score"]
        if improved:
            state["best_score"], state["best_epoch"] = val_score, epoch + 1
        record = {"epoch": epoch + 1, "train_loss": running / max(seen, 1), f"val_{task.score_name}": val_score,
                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - started, 2)}
        state["history"].append(record)
        if is_main:
            checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                          "fingerprint": run_id, **state}
            if weight_rows:
                with weights_log.open("a") as handle:
                    handle.write("\n".join(weight_rows) + "\n")
            if improved:
                save_atomic({"model": model.state_dict(), "epoch": epoch + 1, "score": val_score,
                             "score_name": task.score_name, "fingerprint": fingerprint(cfg, with_code=False)}, best_path)
            save_atomic(checkpoint, last_path)  # last, so a crash before it resumes from the previous epoch
            pd.DataFrame(state["history"]).to_csv(run_dir / "history.csv", index=False)
            log.info("%s seed %d | epoch %d/%d | loss %.4f | val %s %.4f (best %.4f @ %d) | lr %.2e | %.1fs",
                     cfg["experiment"], seed, epoch + 1, epochs, record["train_loss"], task.score_name, val_score,
                     state["best_score"], state["best_epoch"], record["lr"], record["seconds"])

    summary = {"experiment": cfg["experiment"], "seed": seed, "fingerprint": run_id, "epochs": epochs,
               "best_epoch": state["best_epoch"], f"best_val_{task.score_name}": state["best_score"],
               "steps": state["global_step"], "device": str(device), "world_size": world_size,
               "history": state["history"], "train_class_counts": counts}
    if is_main:
        write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return summary


def load_best_model(cfg: dict, device: torch.device):
    """The model selected on the validation split, with its task object."""
    task = get_task(cfg)
    path = Path(cfg["run_dir"]) / "checkpoints" / "best.pt"
    if not path.is_file():
        raise TrainingError(f"{path} does not exist: run `pipeline train` for {cfg['experiment']} seed {cfg['seed']} first")
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    if checkpoint.get("fingerprint") != fingerprint(cfg, with_code=False):
        raise TrainingError(f"{path} was trained with another configuration; retrain this run")
    model = task.build_model()
    model.load_state_dict(checkpoint["model"])
    return task, model.to(device).eval()
