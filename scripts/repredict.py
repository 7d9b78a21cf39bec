"""Re-predict and re-evaluate a trained run with changed predict / evaluation settings, without
retraining: a post-processing study on fixed checkpoints (the model is the same, only what is made
of its outputs changes).

    python scripts/repredict.py results/seg_dice_ce/seed0 --out /tmp/vote/instance_vote \
        --set predict.lesion_types=instance_vote

copies the run's checkpoints/best.pt (and its training_summary.json) into OUT/<experiment>/seed<k>/, writes its run.yaml with the
overrides (values are read as YAML: numbers, null, true) and that run_dir, then runs the predict and
evaluate stages there (`pipeline predict` / `pipeline evaluate`). The experiment name and every
training setting stay the same, so best.pt's fingerprint still matches; an override of a training
setting is refused by the predict stage ("trained with another configuration"). Summarise with
`python scripts/summarise_runs.py OUT --compact`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


def override(cfg: dict, dotted: str) -> None:
    key, sep, value = dotted.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set needs KEY.PATH=VALUE, got {dotted!r}")
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise SystemExit(f"--set {key}: {part!r} is not a section of the run config")
        node = node[part]
    node[leaf] = yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a trained run folder (holding run.yaml and checkpoints/best.pt)")
    parser.add_argument("--out", type=Path, required=True, help="results folder for the re-predicted run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override, e.g. predict.lesion_types=instance_vote (repeatable)")
    args = parser.parse_args()

    cfg = yaml.safe_load((args.run / "run.yaml").read_text())
    best = args.run / "checkpoints" / "best.pt"
    if not best.is_file():
        raise SystemExit(f"{best} does not exist: train the run first")
    for dotted in args.set:
        override(cfg, dotted)
    run_dir = args.out / cfg["experiment"] / f"seed{cfg['seed']}"
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copy2(best, run_dir / "checkpoints" / "best.pt")
    for record in ("training_summary.json", "history.csv"):  # the training record goes with its model
        if (args.run / record).is_file():
            shutil.copy2(args.run / record, run_dir / record)
    cfg["run_dir"] = str(run_dir)
    (run_dir / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for stage in ("predict", "evaluate"):
        with (run_dir / f"{stage}.log").open("w") as log:
            done = subprocess.run(["pipeline", stage, "--run-config", str(run_dir / "run.yaml")],
                                  stdout=log, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            sys.exit(f"pipeline {stage} failed for {run_dir}: see {run_dir / f'{stage}.log'}")
    print(run_dir)


if __name__ == "__main__":
    main()
