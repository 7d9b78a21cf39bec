"""The spiral toy model at a tiny size."""

import torch

from pipeline.lab import spiral
from pipeline.lab.__main__ import main


def test_spiral_has_three_arms_of_100_points_and_a_distinct_validation_draw():
    x, y = spiral.make_spiral(seed=0)
    x_val, _ = spiral.make_spiral(seed=1)
    assert x.shape == (300, 2) and torch.bincount(y).tolist() == [100, 100, 100]
    assert x.norm(dim=1).max() <= 1.0 + 1e-6 and not torch.equal(x, x_val)


def test_the_dynamical_loss_tilts_the_network_towards_the_emphasised_class():
    # mid first period (A = 70 on class 0; the last period of the run is plain CE) the project's
    # DynamicalLoss makes the network call nearly every point class 0; static CE on the same
    # initialisation does not
    shares = {}
    for loss_name in ("ce", "dynamical"):
        summary, trace, _ = spiral.train(30, 1.0, loss_name, steps=1000, period=600, record_every=300)
        shares[loss_name] = trace.loc[trace["step"] == 300, "predicted_share_0"].item()
        assert not summary["diverged"] and 0.0 <= summary["val_accuracy"] <= 1.0
    assert shares["dynamical"] > 0.9 and shares["ce"] < 0.6


def test_cli_writes_tables_and_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(spiral, "QUICK", {"amplitude": 5.0, "runs": [(8, 1.0, 40, 20, (0,))]})
    assert main(["spiral", "--quick", "--out", str(tmp_path)]) == 0
    for name in ("spiral_runs.csv", "spiral_traces.csv", "spiral_validation.png", "spiral_regions.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert main(["tables", "--out", str(tmp_path)]) == 0
    assert "| 8 | 1 | 40 | 2 | 1 |" in capsys.readouterr().out  # width, lr, steps, periods, seeds
