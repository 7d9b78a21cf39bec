"""pipeline bench: the training path against the model alone, and variants set from the command line."""

import pytest

from pipeline.bench import bench, summary_lines
from pipeline.cli import set_dotted
from pipeline.errors import ConfigError
from tests.helpers import tiny_classification_run


def test_bench_reports_rates_over_all_timed_steps(tmp_path):
    result = bench(tiny_classification_run(tmp_path, normalise_on_device=True), steps=4, warmup=1, threads=1)
    real, limit = result["pipeline"], result["model_limit"]
    assert real["batch_size"] == 8 and real["loader_dtype"] == "uint8" and result["normalise_on_device"]
    assert not result["augment_on_device"]  # auto: on CUDA only
    # the rate is images over the summed step times, so rate x mean step = one batch
    assert real["images_per_second"] * real["step_ms"] / 1e3 == pytest.approx(8)
    assert 0 <= real["data_wait_share"] < 1 and real["median_step_ms"] > 0
    assert result["ratio_pipeline_to_limit"] == pytest.approx(real["images_per_second"] / limit["images_per_second"])
    assert result["channels_last"] and not result["fused_optimizer"]  # the CPU defaults
    assert any("ratio (a)/(b)" in line for line in summary_lines(result))


def test_set_overrides_only_settings_the_run_has():
    run = {"train": {"channels_last": "auto", "optimizer": {"name": "adamw", "fused": "auto"}}}
    set_dotted(run, "train.channels_last=false")
    set_dotted(run, "train.optimizer.fused=true")
    assert run["train"] == {"channels_last": False, "optimizer": {"name": "adamw", "fused": True}}
    for bad in ("train.chanels_last=false", "train.channels_last", "model.name=resnet18"):
        with pytest.raises(ConfigError, match="--set"):
            set_dotted(run, bad)


def test_bench_says_when_the_colour_jitter_runs_on_the_device(tmp_path):
    result = bench(tiny_classification_run(tmp_path, augment_on_device=True), steps=2, warmup=1, threads=1)
    assert result["augment_on_device"] == "colour_jitter" and result["normalise_on_device"] and result["pipeline"]["loader_dtype"] == "uint8"
    everything = bench(tiny_classification_run(tmp_path / "all", augment_on_device="all"), steps=2, warmup=1, threads=1)
    assert everything["augment_on_device"] == "all" and everything["pipeline"]["loader_dtype"] == "uint8"


def test_loss_timings_time_every_loss_against_ce_and_count_its_operators(monkeypatch, tmp_path):
    import torch

    from pipeline import bench as bench_module
    from pipeline.losses import available_losses

    monkeypatch.setattr(bench_module, "LOSS_SHAPES", {"classification": (16, 7), "segmentation": (2, 7, 8, 8)})
    result = bench_module.loss_timings(torch.device("cpu"), repeats=1, warmup=0)
    classification, segmentation = result["classification"]["losses"], result["segmentation"]["losses"]
    assert set(segmentation) == set(available_losses(None))
    assert set(classification) == set(available_losses("classification"))
    for rows in (classification, segmentation):
        assert rows["ce"]["vs_ce"] == 1.0 and rows["ce"]["vs_ce_paired"] == 1.0
        assert all(row["vs_ce_paired"] > 0 for row in rows.values())  # each loss also alternated with CE alone
        for row in rows.values():
            assert row["ms"] > 0 and row["aten_calls"] > 0  # every loss runs at both shapes it accepts
    assert segmentation["ce"]["aten_calls"] < segmentation["dice_ce"]["aten_calls"]
    # what `pipeline bench --losses` prints: a line per loss with its ratio and its operator count
    lines = summary_lines(bench(tiny_classification_run(tmp_path), steps=2, warmup=1, threads=1, losses=True))
    dice_ce = next(line for line in lines if line.strip().startswith("dice_ce "))
    assert "x" in dice_ce and f"{segmentation['dice_ce']['aten_calls']:3d} ATen ops" in dice_ce
