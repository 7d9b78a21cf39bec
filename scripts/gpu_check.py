"""One short, prepared run on a GPU machine: check the GPU code paths and measure what only a GPU can.

    python3 scripts/gpu_check.py --data DATA --out OUT [--budget 560] [--smoke]

DATA holds `acne04_voc/` and `ham10000_sample70/` (copies of ../shared/data, which a GPU machine
may not have); the ACNE04 manifest, frozen split and box-derived masks are read from where
configs/acne04.yaml writes them (data_manifests/, data/derived/acne04), so the split is the one the
CPU figures use. Stages, in order of value; each is logged to OUT/logs/<stage>.log, a failing stage
does not stop the next, and the whole run keeps to --budget seconds:

1. `test_cuda`: tests/test_cuda.py (every loss on CUDA against float64 on the CPU, bf16 autocast,
   training and prediction on the GPU).
2. `bench_seg`: `pipeline bench` of configs/acne04_gpu.yaml (pipeline against model limit, loss costs).
3. ACNE04 at full resolution, configs/acne04_gpu.yaml's Dice+CE, its seeds trained side by side on
   the one GPU, then predicted (post-processing chosen on validation) and evaluated on the held-out
   test photos. If the bench's step rate says the configured epochs cannot finish inside the budget,
   fewer epochs are trained and the summary says so (`epochs_run`).
4. `bench_cls`: `pipeline bench` of HAM10000 JPEGs at 224 px on a ResNet-50 (an ISIC-sized input).
5. `tests_on_gpu`: the training, prediction, saliency, export, task and loss tests, with the GPU
   visible (train.device "auto" then trains on it).

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
# post-processing on validation took about 165 s a seed, three side by side, and the test photos 9 s
PREDICT_S, EVALUATE_S = 240, 60


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
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    data, out = args.data.resolve(), args.out.resolve()
    work = REPO / ".gpuwork"
    work.mkdir(exist_ok=True)
    stages = Stages(out, args.budget)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p), "PYTHONUNBUFFERED": "1"}
    smoke = args.smoke
    cores = os.cpu_count() or 2

    stages.run("env", [[sys.executable, "-c", "import torch, timm, segmentation_models_pytorch as smp, monai; "
                        "print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), "
                        "torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', "
                        "timm.__version__, smp.__version__, monai.__version__)"]], 60, env)
    stages.run("test_cuda", [[sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]], 120, env)

    # --- ACNE04 with the GPU recipe: bench first, its step rate sizes the training to the budget
    acne_cfg = write_config(REPO / "configs" / "acne04_gpu.yaml", work / "acne04_gpu.yaml", data, smoke)
    seeds = acne_cfg["seeds"]
    threads = max(cores // len(seeds), 2)
    bench_seg = out / "bench_seg.json"
    stages.run("bench_seg", [pipeline_cli("bench", "--config", str(work / "acne04_gpu.yaml"), "--experiment", EXPERIMENT,
                                          "--steps", "5" if smoke else "25", "--warmup", "2" if smoke else "8",
                                          "--workers", str(threads - 1), "--threads", str(threads), "--losses",
                                          "--out", str(bench_seg))], 150, env)
    train = acne_cfg["defaults"]["segmentation"]["train"]
    epochs = train["epochs"]
    if bench_seg.exists() and not smoke:
        figures = json.loads(bench_seg.read_text())
        stages.summary["figures"]["bench_seg"] = figures
        rate = 1e3 / figures["pipeline"]["step_ms"]  # one process, synchronised each step
        # the seeds share the GPU: assume together only 1.5x one process's rate (conservative)
        n_train = int(pd.read_csv(REPO / acne_cfg["manifests_dir"] / "acne04.split.csv")["split"].eq("train").sum())
        steps_per_epoch = n_train * train["patches_per_image"] // train["batch_size"]
        # leave PREDICT_S + EVALUATE_S + 20 s for prediction and evaluation
        fit = int((stages.left() - PREDICT_S - EVALUATE_S - 20) * 1.5 * rate / (len(seeds) * steps_per_epoch * 1.15))
        if fit < epochs:
            epochs = max(fit // 10 * 10, 10)
            write_config(REPO / "configs" / "acne04_gpu.yaml", work / "acne04_gpu.yaml", data, smoke,
                         lambda c: c["defaults"]["segmentation"]["train"].update(epochs=epochs, val_every=max(epochs // 6, 1)))
    stages.record("acne04", epochs_configured=train["epochs"], epochs_run=epochs, seeds=seeds)
    config = str(work / "acne04_gpu.yaml")
    stages.run("acne04_train", [pipeline_cli("train", "--config", config, "--experiment", EXPERIMENT, "--seed", str(s),
                                             "--threads", str(threads)) for s in seeds],
               stages.left() - PREDICT_S - EVALUATE_S - 10, env)
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

    # --- classification data path at an ISIC-sized input, when time is left
    def ham_gpu(config: dict) -> None:
        config["defaults"]["classification"].update(model={"name": "resnet50"})
        config["defaults"]["classification"]["train"].update(image_size=224, batch_size=64)
    write_config(REPO / "configs" / "ham10000.yaml", work / "ham10000.yaml", data, smoke, ham_gpu)
    ham = str(work / "ham10000.yaml")
    bench_cls = out / "bench_cls.json"
    if stages.left() < 75:
        stages.record("bench_cls", skipped=f"{stages.left():.0f} s left")
    else:
        stages.run("ham_prepare", [pipeline_cli("prepare", "--config", ham, "--dataset", "ham10000")], 30, env)
        stages.run("ham_split", [pipeline_cli("split", "--config", ham, "--dataset", "ham10000")], 30, env)
        stages.run("bench_cls", [pipeline_cli("bench", "--config", ham, "--experiment", "ham_ce",
                                              "--steps", "5" if smoke else "25", "--warmup", "2" if smoke else "8",
                                              "--workers", str(cores - 2), "--threads", str(cores), "--losses",
                                              "--out", str(bench_cls))], 90, env)
    if bench_cls.exists():
        stages.summary["figures"]["bench_cls"] = json.loads(bench_cls.read_text())

    if stages.left() > 40:
        stages.run("tests_on_gpu", [[sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                                     "tests/losses", "tests/tasks", "tests/test_training.py", "tests/test_predict.py",
                                     "tests/test_saliency.py", "tests/test_export.py", "tests/test_sampling.py"]],
                   stages.left() - 15, env)
    stages.record("total", seconds=round(time.monotonic() - stages.start, 1))

    with tarfile.open(out / "gpu_check.tar.gz", "w:gz") as tar:
        tar.add(out / "logs", arcname="logs")
        for path in sorted(results.glob("seed*/*")):
            if path.name in ("metrics.json", "postprocessing.json", "history.csv", "training_summary.json", "run.yaml"):
                tar.add(path, arcname=f"acne04_gpu/{path.parent.name}/{path.name}")
    print(json.dumps(stages.summary["stages"], default=str))
    for seed, figures in runs.items():
        print(seed, json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
