"""How much a loss's ratio to cross-entropy depends on how it is timed (docs/BENCHMARKS.md §7 (i)).

``pipeline bench --losses`` times the losses round-robin and reports medians; this times a few of them
at the segmentation shape (8 x 7 x 256 x 256) either round-robin or each in its own block, and prints
both the median and the fastest step, each divided by CE's. On a small shared CPU box the spread between
these is the resolution of the ratios (fresh large tensors cost page faults or not, depending on what
ran before).

    python scripts/loss_bench_statistics.py --order round-robin --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.bench import ISIC_COUNTS, REQUIRED_PARAMS
from pipeline.losses import build_loss

NAMES = ["ce", "balanced_softmax", "logit_adjusted", "weighted_ce", "dynamical", "dice_ce", "dice_focal", "sharpness", "ldam"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", choices=["round-robin", "block"], default="round-robin")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    shape = (8, 7, 256, 256)
    logits = torch.randn(shape, generator=generator)
    cosines = torch.rand(shape, generator=generator) * 2 - 1
    target = torch.randint(0, 7, (8, 256, 256), generator=generator)
    losses = {}
    for name in NAMES:
        loss = build_loss(name, num_classes=7, class_counts=ISIC_COUNTS, **REQUIRED_PARAMS.get(name, {}))
        if hasattr(loss, "set_step"):
            loss.set_step(0, 1000, steps_per_epoch=100)
        losses[name] = (loss, cosines if getattr(loss, "head", None) == "cosine" else logits)
    times: dict[str, list[float]] = {name: [] for name in NAMES}

    def step(name: str) -> float:
        loss, inputs = losses[name]
        x = inputs.detach().requires_grad_(True)
        started = time.perf_counter()
        loss(x, target).backward()
        return time.perf_counter() - started

    rounds = range(args.warmup + args.steps)
    order = [(i, n) for i in rounds for n in NAMES] if args.order == "round-robin" else [(i, n) for n in NAMES for i in rounds]
    for i, name in order:
        elapsed = step(name)
        if i >= args.warmup:
            times[name].append(elapsed)
    for label, pick in (("median", statistics.median), ("fastest", min)):
        reference = pick(times["ce"])
        ratios = " ".join(f"{name}={pick(times[name]) / reference:.2f}" for name in NAMES[1:])
        print(f"{args.order} {label}: ce={1e3 * reference:.1f} ms {ratios}")


if __name__ == "__main__":
    main()
