"""``python -m pipeline.lab {threshold,spiral} [--out results/lab] [--quick]``: run a toy model of
docs/SCIENCE.md and write its CSV tables and PNG figures under ``--out``;
``python -m pipeline.lab spiral --width 1000 --lr 1 --steps 20000 --seeds 1 2 --out DIR`` runs one spiral
configuration (A = 70, T = 5000) instead of the sweep; ``python -m pipeline.lab tables [--out results/lab]
[--also DIR ...]`` prints the Markdown tables of docs/SCIENCE.md from those CSVs (spiral runs of every
folder pooled)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.lab", description=__doc__)
    parser.add_argument("model", choices=["threshold", "spiral", "tables"])
    parser.add_argument("--out", type=Path, default=Path("results/lab"), help="output folder (default results/lab)")
    parser.add_argument("--quick", action="store_true", help="a tiny version (seconds), for smoke tests")
    one = parser.add_argument_group("spiral: one configuration instead of the sweep (all four needed)")
    one.add_argument("--width", type=int)
    one.add_argument("--lr", type=float)
    one.add_argument("--steps", type=int)
    one.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--also", type=Path, nargs="*", default=[], help="tables: more result folders to pool")
    args = parser.parse_args(argv)
    single = [args.width, args.lr, args.steps, args.seeds]
    if args.model == "tables":
        from pipeline.lab import tables

        print(tables.run(args.out, also=args.also))
        return 0
    if args.model == "threshold":
        from pipeline.lab import threshold

        threshold.run(args.out, quick=args.quick)
    elif any(value is not None for value in single):
        if None in single or args.quick:
            parser.error("one spiral configuration needs --width, --lr, --steps and --seeds (and no --quick)")
        from pipeline.lab import spiral

        spiral.run(args.out, settings={**spiral.FULL, "runs": [(args.width, args.lr, args.steps, 5000, tuple(args.seeds))]})
    else:
        from pipeline.lab import spiral

        spiral.run(args.out, quick=args.quick)
    print(f"wrote {args.model} results to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
