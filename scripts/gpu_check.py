"""One short, prepared run on a GPU machine: check the GPU code paths and measure what only a GPU can.

    python3 scripts/gpu_check.py --data DATA --out OUT [--budget 560] [--smoke]

DATA holds `acne04_voc/` and `ham10000_sample70/` (copies of ../shared/data, which a GPU machine
may not have); the ACNE04 manifest, frozen split and box-derived masks are read from where
configs/acne04.yaml writes them (data_manifests/, data/derived/acne04_lesion), so the split is the one
the CPU figures use. Stages, in order of value; each is logged to OUT/logs/<stage>.log, a failing stage
does not stop the next, and the whole run keeps to --budget seconds:

1. `test_cuda`: tests/test_cuda.py (every loss on CUDA against float64 on the CPU, bf16 autocast,
   channels-last and the fused optimizer, training and prediction on the GPU).
2. `bench_cls`: `pipeline bench` of HAM10000 JPEGs on a ResNet-50 at 224 px, batch 128 (issue 8's
   ISIC-sized input). The 70 sample JPEGs give 42 training rows; `--ham-manifests` names a folder whose
   ham10000.split.csv lists them 25 times (1,050 rows, decoded into the decode cache before the timing).
3. `bench_seg`: `pipeline bench` of configs/acne04_gpu.yaml (pipeline against model limit).
4. ACNE04 at full resolution, configs/acne04_gpu.yaml's Dice+CE, its seeds trained side by side on
   the one GPU, then predicted (post-processing chosen on validation) and evaluated on the held-out
   test photos. `--epochs` asks for a longer schedule than the config's; if the bench's step rate says
   the epochs cannot finish inside the budget, fewer are trained and the summary says so (`epochs_run`).
5. `tests_on_gpu`: the training, prediction, saliency, export, task and loss tests, with the GPU
   visible (train.device "auto" then trains on it), when time is left.

OUT/summary.json holds every stage's exit code and seconds and the figures; OUT/gpu_check.tar.gz the
logs, bench files and each run's metrics.json, postprocessing.json, history.csv and
training_summary.json. `--smoke` shrinks everything to seconds (to try the script on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "acne04_dice_ce"
# time kept for the ACNE04 predict and evaluate stages: on an H200 machine (16 cores) choosing the
# post-processing on validation took about 165 s a seed in one process each, three side by side, and
# the test photos 9 s; the grid now spreads its photos over the stage's threads (5 processes a seed)
PREDICT_S, EVALUATE_S = 100, 45


class Stages:
    def __init__(self, out: Path, budget: float):
        self.out, self.start, self.budget = out, time.monotonic(), budget
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.summary: dict = {"stages": {}, "figures": {}}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def record(self, name: str, **values) -> None:
        self.summary["stages"].setdefault(name, {}).update(values)
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1, default=str))

    def run(self, name: str, commands: list[list[str]], timeout: float, env: dict | None = None) -> list[int]:
        """Run commands side by side (one log each); kill what outlasts the timeout."""
        timeout = max(min(timeout, self.left() - 5), 1)
        began = time.monotonic()
        procs = []
        for i, command in enumerate(commands):
            log = open(self.out / "logs" / (f"{name}.log" if len(commands) == 1 else f"{name}_{i}.log"), "w")
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            procs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                           env={**os.environ, **(env or {})}), log))
        codes = []
        for proc, log in procs:
            try:
                codes.append(proc.wait(timeout=max(timeout - (time.monotonic() - began), 1)))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
                log.write(f"\n[gpu_check] killed after {timeout:.0f} s\n")
            log.close()
        seconds = round(time.monotonic() - began, 1)
        self.record(name, returncodes=codes, seconds=seconds)
        print(f"[{time.monotonic() - self.start:6.0f} s] {name}: rc {codes} in {seconds} s", flush=True)
        return codes


def pipeline_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def write_config(source: Path, target: Path, data: Path, smoke: bool, edit=None) -> dict:
    config = yaml.safe_load(source.read_text())
    config["results_dir"] = str(target.parent / "results" / target.stem)
    for spec in config["datasets"].values():
        spec["root"] = str(data / Path(spec["root"]).name)
    if smoke:
        config["seeds"] = config["seeds"][:2]
        for defaults in config["defaults"].values():
            defaults["train"].update(epochs=1, max_train_batches=2, val_every=1)
            defaults.get("predict", {}).pop("tune_grid", None)
    if edit:
        edit(config)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def acne_figures(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    post = json.loads((run_dir / "postprocessing.json").read_text()) if (run_dir / "postprocessing.json").exists() else {}
    summary = json.loads((run_dir / "training_summary.json").read_text())
    recall = metrics["lesion_detection"]["sensitivity"]["value"]
    precision = metrics["lesion_detection"]["ppv"]["value"]
    grading = metrics["grading"]
    return {
        "lesion_recall": recall, "lesion_precision": precision,
        "lesion_f1": 2 * recall * precision / (recall + precision) if recall + precision else 0.0,
        "f1_per_type": {c: metrics["per_class"][c]["f1"].get("value") for c in metrics["classes"]},
        "grading_accuracy": grading["accuracy"]["value"], "grading_kappa": grading["kappa"]["value"],
        "count_mae": metrics["lesion_count_error"]["mae"], "count_spearman": metrics["lesion_count_error"]["spearman"]["value"],
        "mean_dice": metrics["mean_dice"]["value"], "lesion_threshold": post.get("lesion_threshold"),
        "min_lesion_area": post.get("min_lesion_area"), "epochs": summary["epochs"], "steps": summary["steps"],
        "train_seconds": round(sum(row.get("seconds", 0) for row in summary["history"]), 1), "device": summary["device"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=560.0, help="seconds for the whole run")
    parser.add_argument("--epochs", type=int, default=None,
                        help="ACNE04 epochs to aim for (default: the config's); fewer when the budget says so")
    parser.add_argument("--ham-manifests", type=Path, default=None,
                        help="folder holding ham10000.csv / ham10000.split.csv for the classification bench "
                             "(default: prepared and split here)")
    parser.add_argument("--stages", default="all",
                        help="comma-separated subset of env,test_cuda,bench_cls,bench_seg,acne04,tests_on_gpu")
    parser.add_argument("--layout-ab", type=int, default=0, metavar="ROUNDS",
                        help="each bench also as the 'off' variant (--ab-off; by default the layout, optimizer step "
                             "and normalisation before issue 8's GPU work), alternated with the default for ROUNDS rounds")
    parser.add_argument("--ab-off", default="train.channels_last=false,train.optimizer.fused=false,train.normalise_on_device=false",
                        help="comma-separated KEY=VALUE settings of the 'off' variant of --layout-ab")
    parser.add_argument("--bench-steps", type=int, default=25, help="timed steps of each bench")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    wanted = set(args.stages.split(",")) if args.stages != "all" else None

    def want(stage: str) -> bool:
        return wanted is None or stage in wanted
    data, out = args.data.resolve(), args.out.resolve()
    work = REPO / ".gpuwork"
    work.mkdir(exist_ok=True)
    stages = Stages(out, args.budget)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p), "PYTHONUNBUFFERED": "1"}
    smoke = args.smoke
    cores = os.cpu_count() or 2
    steps, warmup = ("3", "1") if smoke else (str(args.bench_steps), "8")

    def bench_stage(name: str, command: list[str], out_json: Path, timeout: float) -> None:
        """The bench, or with --layout-ab the 'before' variant and the default alternated (side by side)."""
        if not args.layout_ab:
            stages.run(name, [command + ["--out", str(out_json)]], timeout, env)
            return
        off = [item for setting in args.ab_off.split(",") for item in ("--set", setting)]
        for round_ in range(args.layout_ab):
            for variant, extra in (("off", off), ("on", [])):
                target = out_json.with_name(f"{out_json.stem}_{variant}{round_}.json")
                stages.run(f"{name}_{variant}{round_}", [command + extra + ["--out", str(target)]], timeout, env)
                if target.exists():
                    stages.summary["figures"][target.stem] = json.loads(target.read_text())

    if want("env"):
        stages.run("env", [[sys.executable, "-c", "import torch, timm, segmentation_models_pytorch as smp, monai; "
                            "print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), "
                            "torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', "
                            "timm.__version__, smp.__version__, monai.__version__)"]], 60, env)
    if want("test_cuda"):
        stages.run("test_cuda", [[sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]], 120, env)

    # --- (issue 8) classification at an ISIC-sized input: ResNet-50, 224 px, batch 128, bf16 autocast,
    # channels-last and the fused AdamW step (train.channels_last / optimizer.fused: auto on CUDA)
    def ham_gpu(config: dict) -> None:
        if args.ham_manifests:
            config["manifests_dir"] = str(args.ham_manifests.resolve())
        config["defaults"]["classification"].update(model={"name": "resnet50" if not smoke else "resnet10t"})
        config["defaults"]["classification"]["train"].update(image_size=224 if not smoke else 32, batch_size=128,
                                                             decode_cache=str(work / "cache"))
    write_config(REPO / "configs" / "ham10000.yaml", work / "ham10000.yaml", data, smoke, ham_gpu)
    ham = str(work / "ham10000.yaml")
    if not args.ham_manifests and want("bench_cls"):
        stages.run("ham_prepare", [pipeline_cli("prepare", "--config", ham, "--dataset", "ham10000")], 30, env)
        stages.run("ham_split", [pipeline_cli("split", "--config", ham, "--dataset", "ham10000")], 30, env)
    bench_cls = out / "bench_cls.json"
    if want("bench_cls"):
        # --losses: every loss against CE on the device as well (issue 8's (c); seconds on a GPU)
        bench_stage("bench_cls", pipeline_cli("bench", "--config", ham, "--experiment", "ham_ce", "--steps", steps,
                                              "--warmup", warmup, "--workers", str(cores - 2), "--threads", str(cores),
                                              "--losses"),
                    bench_cls, 100)
    if bench_cls.exists():
        stages.summary["figures"]["bench_cls"] = json.loads(bench_cls.read_text())

    # --- ACNE04 with the GPU recipe: bench first, its step rate sizes the training to the budget
    acne_cfg = write_config(REPO / "configs" / "acne04_gpu.yaml", work / "acne04_gpu.yaml", data, smoke)
    seeds = acne_cfg["seeds"]
    threads = max(cores // len(seeds), 2)
    bench_seg = out / "bench_seg.json"
    if want("bench_seg"):
        bench_stage("bench_seg", pipeline_cli("bench", "--config", str(work / "acne04_gpu.yaml"), "--experiment",
                                              EXPERIMENT, "--steps", steps, "--warmup", warmup, "--workers",
                                              str(threads - 1), "--threads", str(threads)), bench_seg, 90)
    if not want("acne04"):
        return finish(stages, out, None, {})
    train = acne_cfg["defaults"]["segmentation"]["train"]
    epochs = args.epochs or train["epochs"]
    if bench_seg.exists():
        figures = json.loads(bench_seg.read_text())
        stages.summary["figures"]["bench_seg"] = figures
        if not smoke:
            rate = 1e3 / figures["pipeline"]["step_ms"]  # one process, synchronised each step
            # stop 17: three seeds side by side, start-up and validation included, made together about
            # the step rate of one process alone (20 epochs of 114 steps in 208 s at 32 steps/s)
            dataset = acne_cfg["experiments"][EXPERIMENT]["dataset"]
            n_train = int(pd.read_csv(REPO / acne_cfg["manifests_dir"] / f"{dataset}.split.csv")["split"].eq("train").sum())
            steps_per_epoch = n_train * train["patches_per_image"] // train["batch_size"]
            fit = int((stages.left() - PREDICT_S - EVALUATE_S - 20) * rate / (len(seeds) * steps_per_epoch))
            epochs = max(min(epochs, fit // 5 * 5), 10)
    if epochs != train["epochs"] and not smoke:  # --smoke's config already trains one epoch
        write_config(REPO / "configs" / "acne04_gpu.yaml", work / "acne04_gpu.yaml", data, smoke,
                     lambda c: c["defaults"]["segmentation"]["train"].update(epochs=epochs, val_every=max(epochs // 6, 1)))
    stages.record("acne04", epochs_configured=train["epochs"], epochs_asked=args.epochs, epochs_run=epochs, seeds=seeds)
    config = str(work / "acne04_gpu.yaml")
    stages.run("acne04_train", [pipeline_cli("train", "--config", config, "--experiment", EXPERIMENT, "--seed", str(s),
                                             "--threads", str(threads)) for s in seeds],
               stages.left() - PREDICT_S - EVALUATE_S - 10, env)
    # the tuning grid spreads its photos over OMP_NUM_THREADS worker processes
    omp = {**env, "OMP_NUM_THREADS": str(threads)}
    stages.run("acne04_predict", [pipeline_cli("predict", "--config", config, "--experiment", EXPERIMENT, "--seed", str(s))
                                  for s in seeds], PREDICT_S, omp)
    stages.run("acne04_evaluate", [pipeline_cli("evaluate", "--config", config, "--experiment", EXPERIMENT, "--seed", str(s))
                                   for s in seeds], EVALUATE_S, omp)
    results = Path(acne_cfg["results_dir"]) / EXPERIMENT
    runs = {}
    for seed in seeds:
        try:
            runs[f"seed{seed}"] = acne_figures(results / f"seed{seed}")
        except (OSError, KeyError, ValueError) as err:
            runs[f"seed{seed}"] = f"no figures: {err!r}"
    stages.summary["figures"]["acne04_gpu"] = runs
    stages.record("acne04", done=True)

    if stages.left() > 40 and want("tests_on_gpu"):
        stages.run("tests_on_gpu", [[sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                                     "tests/losses", "tests/tasks", "tests/test_training.py", "tests/test_predict.py",
                                     "tests/test_saliency.py", "tests/test_export.py", "tests/test_sampling.py"]],
                   stages.left() - 15, env)
    return finish(stages, out, results, runs)


def finish(stages: Stages, out: Path, results: Path | None, runs: dict) -> int:
    stages.record("total", seconds=round(time.monotonic() - stages.start, 1))
    with tarfile.open(out / "gpu_check.tar.gz", "w:gz") as tar:
        tar.add(out / "logs", arcname="logs")
        for path in sorted(results.glob("seed*/*")) if results else []:
            if path.name in ("metrics.json", "postprocessing.json", "history.csv", "training_summary.json", "run.yaml",
                             "per_image.csv"):
                tar.add(path, arcname=f"acne04_gpu/{path.parent.name}/{path.name}")
    print(json.dumps(stages.summary["stages"], default=str))
    for name, f in stages.summary["figures"].items():
        if name.startswith("bench_"):
            print(name, json.dumps({k: f[k] for k in ("amp", "channels_last", "fused_optimizer", "normalise_on_device", "num_workers",
                                                      "ratio_pipeline_to_limit") if k in f}),
                  json.dumps(f["pipeline"]), json.dumps(f["model_limit"]))
    for seed, figures in runs.items():
        print(seed, json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
