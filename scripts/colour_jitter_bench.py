"""Time the training augmentation's colour jitter both ways, side by side in one process (docs/BENCHMARKS.md §7 (g)):
per image on uint8 images, as the loader's workers do it (torchvision's ColorJitter), against per image
draws applied to the whole float batch at once (``train.augment_on_device``, pipeline.data.transforms).

    python scripts/colour_jitter_bench.py --sizes 64 224 --batch 128 --rounds 5 [--device cuda]

Prints milliseconds per image for each, the median of ``rounds`` alternated rounds, one thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.transforms import v2

from pipeline.data.transforms import COLOUR_JITTER, BatchColourJitter


def per_image_ms(images: torch.Tensor) -> float:
    jitter = v2.ColorJitter(**COLOUR_JITTER)
    started = time.perf_counter()
    for image in images:
        jitter(image)
    return 1e3 * (time.perf_counter() - started) / len(images)


def batched_ms(images: torch.Tensor, device: torch.device) -> float:
    jitter = BatchColourJitter(seed=0)
    batch = v2.functional.to_dtype(images.to(device), torch.float32, scale=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    jitter(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - started) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="where the batched jitter runs (the per-image one: always the CPU)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    for size in args.sizes:
        images = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        batched_ms(images, device)  # warm-up
        rows = [(per_image_ms(images), batched_ms(images, device)) for _ in range(args.rounds)]
        one, batch = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        print(f"{size} px, batch {args.batch}: per image (uint8, loader) {one:.3f} ms an image; "
              f"batched on {device} {batch:.3f} ms an image ({one / batch:.1f}x)")


if __name__ == "__main__":
    main()
