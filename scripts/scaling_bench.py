"""Issue 8 (d): how the classification data path scales with the data set, 1k to 10k images.

    python scripts/scaling_bench.py --scales 0.1 0.2 0.5 1.0 --out scaling.json [--work data/scaling]

For each scale of the synthetic ISIC generator (ISIC 2018's class counts times the scale, so 1.0 is
about 10,000 images at 64 px, configs/config.yaml's data set), in order: generate and split it
(`pipeline prepare` / `pipeline split`), build the decode cache of the training images (timed apart,
and its size on disk), then `pipeline bench` of the default `cls_ce` run (1 thread, as a default-run
job gets) on it. The time of a training epoch is the training images over the pipeline's rate (a);
the cache is built once per data set and reused by every later epoch, seed and experiment.
Everything goes under --work (default data/scaling), never into data/ of a run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.1, 0.2, 0.5, 1.0])
    parser.add_argument("--work", type=Path, default=REPO / "data" / "scaling")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from pipeline.data.cache import DecodedImages

    base = yaml.safe_load((REPO / "configs" / "config.yaml").read_text())
    rows = []
    for scale in args.scales:
        work = (args.work / f"scale{scale:g}").resolve()
        work.mkdir(parents=True, exist_ok=True)
        config = {**base, "results_dir": str(work / "results"), "manifests_dir": str(work / "manifests")}
        dataset = dict(base["datasets"]["isic_synthetic"])
        dataset["root"] = str(work / "images")
        dataset["params"] = {**dataset["params"], "scale": scale}
        config["datasets"] = {"isic_synthetic": dataset}
        config["experiments"] = {"cls_ce": base["experiments"]["cls_ce"]}
        config["baselines"] = {"classification": "cls_ce"}
        config_path = work / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        cli = [sys.executable, "-m", "pipeline.cli"]
        started = time.perf_counter()
        for stage in ("prepare", "split"):
            subprocess.run(cli + [stage, "--config", str(config_path), "--dataset", "isic_synthetic"], check=True, cwd=REPO)
        generate_s = time.perf_counter() - started
        frame = pd.read_csv(work / "manifests" / "isic_synthetic.split.csv")
        train = frame[frame["split"] == "train"]
        cache_dir = work / "cache"
        started = time.perf_counter()
        decoded = DecodedImages([Path(dataset["root"]) / p for p in train["image_path"]], cache_dir)
        cache_s = time.perf_counter() - started
        bench_json = work / "bench.json"
        run = config_path.with_name("bench_config.yaml")
        config["defaults"] = {**config.get("defaults", {})}
        config["defaults"].setdefault("classification", {}).setdefault("train", {})["decode_cache"] = str(cache_dir)
        run.write_text(yaml.safe_dump(config, sort_keys=False))
        subprocess.run(cli + ["bench", "--config", str(run), "--experiment", "cls_ce", "--threads", "1",
                              "--steps", str(args.steps), "--out", str(bench_json)], check=True, cwd=REPO)
        bench = json.loads(bench_json.read_text())
        rate = bench["pipeline"]["images_per_second"]
        rows.append({"scale": scale, "images": len(frame), "train_images": len(train),
                     "generate_and_split_s": round(generate_s, 1), "cache_build_s": round(cache_s, 1),
                     "cache_mb": round(decoded.nbytes / 1e6, 1), "pipeline_images_per_s": round(rate, 1),
                     "model_limit_images_per_s": round(bench["model_limit"]["images_per_second"], 1),
                     "ratio": round(bench["ratio_pipeline_to_limit"], 3),
                     "epoch_s": round(len(train) / rate, 1)})
        print(json.dumps(rows[-1]), flush=True)
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
