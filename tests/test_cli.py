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
