"""Reproduce the oneDNN bf16 finding of docs/BENCHMARKS.md §7 (f): on the CPU, under bf16 autocast,
the weight gradient of a 3x3 stride-2 convolution that receives a 1x1 map sometimes holds non-finite
values in the kernel taps that only meet padding (float32 never does). The bf16 forward skips those
taps, so the loss stays finite; pipeline.training checks the weights after every epoch for this.

    python scripts/bf16_tiny_maps.py --sizes 16 32 64 --models 10

Prints, per input size and memory layout, how many of the fresh models (timm ``test_resnet``, batch 8,
three AdamW steps each) got a non-finite gradient, and in which parameter.
"""

from __future__ import annotations

import argparse

import timm
import torch


def count_bad_models(size: int, channels_last: bool, models: int, dtype: torch.dtype | None) -> tuple[int, set[str]]:
    bad, names = 0, set()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for trial in range(models):
        torch.manual_seed(trial)
        model = timm.create_model("test_resnet", num_classes=3).to(memory_format=layout)
        inputs = torch.randn(8, 3, size, size).to(memory_format=layout)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
        hit = False
        for _ in range(3):
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits.float(), torch.arange(8) % 3)
            optimizer.zero_grad()
            loss.backward()
            for name, param in model.named_parameters():
                if not torch.isfinite(param.grad).all():
                    hit = True
                    names.add(name)
            optimizer.step()
        bad += hit
    return bad, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--models", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("size  layout         precision  models with a non-finite gradient  parameters")
    for size in args.sizes:
        for channels_last in (False, True):
            for dtype in (None, torch.bfloat16):
                bad, names = count_bad_models(size, channels_last, args.models, dtype)
                print(f"{size:4d}  {'channels-last' if channels_last else 'NCHW':13s}  {'bf16' if dtype else 'float32':9s}"
                      f"  {bad:2d} / {args.models}                            {', '.join(sorted(names)) or '-'}")


if __name__ == "__main__":
    main()
