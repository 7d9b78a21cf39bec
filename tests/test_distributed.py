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


@pytest.mark.slow
def test_two_ranks_end_with_the_weights_of_one_process_over_the_same_batches(tmp_path, monkeypatch):
    """Data parallelism changes where a batch is computed, not what is learned: two ranks of batch 4
    take the steps of one process of batch 8 over the same images (DistributedSampler's shards of
    one permutation, per-item augmentation seeded by item and epoch, gradients averaged). A model
    without batch norm (group norm normalises each image on its own) and a mean-reduced loss make
    the two comparable to rounding; batch norm and class-weighted means would differ by rank."""
    import torch
    from torch.utils.data.distributed import DistributedSampler

    from pipeline import training

    def run_for(folder, batch_size):
        # SGD: Adam divides by the gradient's own scale, so float noise in a near-zero gradient can
        # flip a whole step's sign; SGD keeps rounding at rounding size
        run = tiny_classification_run(tmp_path / folder, batch_size=batch_size, epochs=2,
                                      optimizer={"name": "sgd", "lr": 0.05})
        run["model"] = {**run["model"], "name": "test_efficientnet_gn"}
        return run

    distributed = run_for("ranks", 4)
    write_yaml_atomic(distributed, tmp_path / "ranks" / "run.yaml")
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [str(bin_dir / "torchrun"), "--nproc_per_node", "2", "--master_port", "29533", "--no-python",
         "pipeline", "train", "--run-config", str(tmp_path / "ranks" / "run.yaml")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    # one process, batch 8, drawing its order as the ranks do: one permutation per epoch (seed + epoch)
    monkeypatch.setattr(training, "RandomSampler", lambda dataset, generator: DistributedSampler(
        dataset, num_replicas=1, rank=0, shuffle=True, seed=distributed["seed"]))
    single = run_for("single", 8)
    reference = training.train(single, threads=1)
    summary = json.loads((Path(distributed["run_dir"]) / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == reference["steps"] == 4

    def weights(run):
        return torch.load(Path(run["run_dir"]) / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]

    ranks, one = weights(distributed), weights(single)
    assert ranks.keys() == one.keys()
    training.seed_everything(single["seed"])  # the initial weights, as setup() draws them
    initial = training.get_task(single).build_model().state_dict()
    for key in one:
        assert torch.allclose(ranks[key].float(), one[key].float(), rtol=1e-4, atol=1e-5), key
    # the runs trained: the weights they agree on are not the initial ones
    assert any(not torch.allclose(one[key].float(), initial[key].float(), atol=1e-4) for key in one)
