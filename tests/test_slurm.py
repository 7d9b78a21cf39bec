"""The workflow on a real SLURM cluster: a one-node cluster on localhost (`.ci/slurm-up`: slurmctld,
slurmd, slurmdbd on MariaDB, munge), the tiny workflow submitted through `profiles/slurm` with
snakemake-executor-plugin-slurm, every job an sbatch job visible in sacct, outputs correct.

It installs and starts system daemons, so it runs only where asked: `.ci/run` sets
PIPELINE_TEST_SLURM=1 on its (root) CI machine; elsewhere it skips with the reason."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.metrics import balanced_accuracy_score

from tests.test_workflow import ROOT, tiny_config

pytestmark = pytest.mark.slow


def _cluster() -> str:
    if os.environ.get("PIPELINE_TEST_SLURM") != "1":
        pytest.skip("set PIPELINE_TEST_SLURM=1 to bring up a local SLURM cluster (CI does, as root)")
    if os.geteuid() != 0:
        pytest.skip("bringing up a SLURM cluster needs root (packages, munge and the SLURM daemons)")
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install 'pipeline[slurm]'")
    up = subprocess.run(["bash", str(ROOT / ".ci" / "slurm-up")], capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, f"the local SLURM cluster did not come up:\n{up.stderr[-3000:]}"
    return up.stdout.strip().splitlines()[-1]


def _site_profile(folder: Path, partition: str) -> Path:
    """profiles/slurm with its site keys set for this cluster: the partition, no GPUs, small memory.
    Everything else (executor, rerun-incomplete, latency-wait, threads) is the shipped profile."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"].update(slurm_partition=partition, mem_mb=1000)
    for resources in profile["set-resources"].values():
        resources.update(slurm_partition=partition, gpu=0, mem_mb=2000, runtime=30)
        resources.pop("gres", None)
    profile["set-threads"] = {rule: 1 for rule in profile.get("set-threads", {})}
    profile["latency-wait"] = 10
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def test_the_workflow_runs_as_sbatch_jobs_on_a_slurm_cluster(tmp_path):
    partition = _cluster()
    config = tiny_config()
    config["experiments"] = {name: config["experiments"][name] for name in ("cls_ce", "seg_dice_ce")}
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    profile = _site_profile(tmp_path / "profile", partition)
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
         "--configfile", str(workdir / "config.yaml"), "--profile", str(profile)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=1800)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]

    # every non-local job went through sbatch and is in the accounting database, completed
    accounting = subprocess.run(["sacct", "-X", "-n", "--parsable2", "--starttime", started,
                                 "--format=JobIdRaw,JobName,Partition,State,Comment"],
                                capture_output=True, text=True, check=True).stdout.splitlines()
    jobs = [line.split("|") for line in accounting if line]
    submitted = [line for line in output.splitlines() if "has been submitted with SLURM jobid" in line]
    assert len(submitted) >= 10, output[-3000:]  # prepare, split, train, predict, evaluate, report x runs, compare
    ids = {line.split("SLURM jobid")[1].split()[0].strip(".") for line in submitted}
    completed = {job[0] for job in jobs if job[3] == "COMPLETED" and job[2] == partition}
    assert ids <= completed, (ids - completed, accounting)

    # and the outputs are right: the stored metric is the one the predictions give
    run = workdir / "results" / "cls_ce" / "seed0"
    predictions = pd.read_csv(run / "predictions.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["balanced_accuracy"]["value"] == pytest.approx(
        balanced_accuracy_score(predictions["label"], predictions["pred"]))
    for path in ("results/seg_dice_ce/seed0/report.html", "results/cls_ce/seed0/report.html", "results/comparison.html"):
        assert (workdir / path).is_file(), path
