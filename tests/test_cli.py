"""The CLI passes the config's settings through to the stages."""

from pathlib import Path

import yaml

from pipeline import cli
from pipeline.reporting import compare


def test_compare_uses_the_configs_bootstrap_settings(tmp_path, monkeypatch):
    config = yaml.safe_load((Path(cli.__file__).parents[1] / "configs" / "config.yaml").read_text())
    config["evaluation"] = {"n_bootstrap": 250, "bootstrap_seed": 7}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    seen = {}
    monkeypatch.setattr(compare, "write_comparison", lambda **kwargs: seen.update(kwargs))
    assert cli.main(["compare", "--config", str(path)]) == 0
    assert (seen["n_bootstrap"], seen["bootstrap_seed"]) == (250, 7)
    assert cli.main(["compare", "--runs", "r/a/seed0", "--n-bootstrap", "300", "--bootstrap-seed", "3"]) == 0
    assert (seen["n_bootstrap"], seen["bootstrap_seed"]) == (300, 3)


def test_list_experiments_shows_the_grid_expansion(tmp_path, capsys):
    config = yaml.safe_load((Path(cli.__file__).parents[1] / "configs" / "config.yaml").read_text())
    config["seeds"] = [0, 1]
    config["grids"] = {"lab": {"dataset": "isic_synthetic",
                               "losses": {"ce": {"name": "ce"}, "focal": {"name": "focal", "gamma": 1.0}},
                               "samplers": {"none": {"name": "none"}, "over": {"name": "oversample"}}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert cli.main(["list", "experiments", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert list(rows)[-4:] == ["lab_ce_none", "lab_ce_over", "lab_focal_none", "lab_focal_over"]
    assert "{name: focal, gamma: 1.0}" in rows["lab_focal_over"] and rows["lab_focal_over"].endswith("{name: oversample}")
    assert rows["cls_ce"].split()[1] == "isic_synthetic"
    n = len(config["experiments"]) + 4
    assert lines[-1] == f"# {n} experiments x seeds [0, 1] = {2 * n} runs"
    assert cli.main(["list", "experiments"]) == 2  # needs --config


def test_resolve_writes_the_run_spec_the_snakefile_passes_as_the_run_config(tmp_path):
    import json

    from pipeline import config as cfgmod
    from pipeline import rundir

    config = cfgmod.validate_config(yaml.safe_load((Path(cli.__file__).parents[1] / "configs" / "config.yaml").read_text()))
    run = cfgmod.resolve_experiment(config, "seg_dice_ce", 2)
    out = tmp_path / "seed2" / "run.yaml"
    assert cli.main(["resolve", "--run-spec", json.dumps(run), "--out", str(out)]) == 0
    assert rundir.read_run_config(out) == run
    # the same bytes as resolving from the config file
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert cli.main(["resolve", "--config", str(path), "--experiment", "seg_dice_ce", "--seed", "2",
                     "--out", str(tmp_path / "direct.yaml")]) == 0
    assert out.read_bytes() == (tmp_path / "direct.yaml").read_bytes()
    assert cli.main(["resolve", "--run-spec", json.dumps(run)]) == 2  # needs --out
