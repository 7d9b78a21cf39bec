"""torchrun data parallelism, exercised on CPU with the gloo backend (two processes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import write_yaml_atomic
from tests.helpers import tiny_classification_run


@pytest.mark.slow
def test_torchrun_two_processes_shard_the_data_and_write_one_checkpoint(tmp_path):
    run = tiny_classification_run(tmp_path)
    write_yaml_atomic(run, tmp_path / "run.yaml")
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [str(bin_dir / "torchrun"), "--nproc_per_node", "2", "--master_port", "29531", "--no-python",
         "pipeline", "train", "--run-config", str(tmp_path / "run.yaml")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "results/tiny_ce/seed0/training_summary.json").read_text())
    assert summary["world_size"] == 2
    # 18 training images, batch 8, drop_last: one process would take 2 batches per epoch; sharded
    # over two ranks each sees 9 images, so 1 batch per epoch.
    assert summary["steps"] == summary["epochs"] * 1
    assert (tmp_path / "results/tiny_ce/seed0/checkpoints/best.pt").is_file()
