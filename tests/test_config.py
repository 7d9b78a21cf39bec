from pathlib import Path

import pytest
import yaml

from pipeline import config as cfgmod
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def default_config() -> dict:
    return yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())


def test_default_config_validates_and_resolves_every_experiment():
    config = cfgmod.validate_config(default_config())
    for name in config["experiments"]:
        run = cfgmod.resolve_experiment(config, name, seed=3)
        assert run["experiment"] == name and run["seed"] == 3
        assert run["run_dir"] == str(Path("results") / name / "seed3")
        assert run["dataset"]["classes"] == list(config["datasets"][run["dataset"]["name"]]["classes"])
        assert run["loss"]["name"] == config["experiments"][name].get("loss", {}).get("name", run["loss"]["name"])


def test_experiment_overrides_defaults_without_mixing_losses():
    config = cfgmod.validate_config(default_config())
    run = cfgmod.resolve_experiment(config, "cls_focal", 0)
    assert run["loss"] == {"name": "focal", "gamma": 2.0, "alpha": "sqrt"}
    assert run["train"]["epochs"] == config["defaults"]["classification"]["train"]["epochs"]
    assert run["train"]["amp"] == "auto"  # from the built-in defaults
    assert run["train"]["crop_pct"] == 1.0  # evaluation crops the training geometry (built-in default)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["experiments"]["cls_ce"].update(dataset="nope"), "names dataset 'nope'"),
        (lambda c: c["experiments"]["cls_ce"].update(trian={}), "schema"),
        (lambda c: c["datasets"]["isic_synthetic"].update(task="detection"), "schema"),
        (lambda c: c.update(baselines={"classification": "missing"}), "not an experiment"),
        (lambda c: c["datasets"]["acne_synthetic"]["classes"].update(background="Background"), "implicit"),
        (lambda c: c["datasets"]["acne_synthetic"].update(grading={"thresholds": [5, 5]}), "must increase"),
        (lambda c: c["datasets"]["acne_synthetic"].update(grading={"thresholds": []}), "schema"),
        (lambda c: c["experiments"]["cls_ce"].update(model={"name": "resnet10t", "head": "mlp"}), "model/head"),
        (lambda c: c["experiments"]["cls_ce_oversample"]["sampler"].update(epoch_size="long"), "sampler/epoch_size"),
        (lambda c: c["experiments"]["cls_ce"].update(train={"crop_pct": 1.2}), "train/crop_pct"),
    ],
)
def test_invalid_configs_are_rejected_with_a_message(mutate, message):
    config = default_config()
    mutate(config)
    with pytest.raises(ConfigError, match=message):
        cfgmod.validate_config(config)


def test_read_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        cfgmod.read_yaml(bad)
    with pytest.raises(ConfigError, match="not found"):
        cfgmod.read_yaml(tmp_path / "missing.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError):
        cfgmod.read_yaml(evil)


def test_code_version_is_deterministic():
    first = cfgmod.code_version()
    assert first.startswith("0.") and first == cfgmod.code_version()


def test_a_dataset_block_validates_on_its_own():
    dataset = default_config()["datasets"]["acne_synthetic"]
    resolved = cfgmod.validate_dataset("acne_synthetic", dataset)
    assert resolved["mask_root"] == dataset["root"] and list(resolved["classes"]) == list(dataset["classes"])
    with pytest.raises(ConfigError, match="dataset 'bad'.*task"):
        cfgmod.validate_dataset("bad", {**dataset, "task": "detection"})


def test_stage_code_versions_separate_training_from_reporting():
    versions = {cfgmod.code_version(stage) for stage in ("train", "evaluate", "report", "compare")}
    assert len(versions) == 4
    with pytest.raises(ConfigError, match="unknown stage"):
        cfgmod.code_version("evaluation")


@pytest.mark.parametrize("stage", sorted(cfgmod.STAGE_ENTRY_MODULES))
def test_a_stage_code_version_covers_every_module_the_stage_imports(stage):
    import subprocess
    import sys

    entry = cfgmod.STAGE_ENTRY_MODULES[stage]
    code = f"import sys, {entry}; print(' '.join(m for m in sys.modules if m.startswith('pipeline')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    package_root = Path(cfgmod.__file__).resolve().parent
    sources = {str(p.relative_to(package_root)) for p in cfgmod.stage_sources(entry)}
    for module in loaded:
        relative = Path(*module.split(".")[1:])
        assert {f"{relative}.py", f"{relative}/__init__.py".lstrip("./")} & sources, f"{stage}: {module} not hashed"
    if stage == "evaluate":  # the bug this fixed: figures drawn in evaluate but not in its code version
        assert not any(s.startswith("reporting/") for s in sources)
    assert not any(s.startswith(("tasks/", "models", "training", "losses/")) for s in sources)


def test_grading_thresholds_default_to_hayashi_and_synthetic_sets_its_own():
    config = default_config()
    del config["datasets"]["acne_synthetic"]["grading"]
    assert cfgmod.validate_config(config)["datasets"]["acne_synthetic"]["grading"] == {"thresholds": [5, 20, 50]}
    assert cfgmod.validate_config(default_config())["datasets"]["acne_synthetic"]["grading"]["thresholds"] == [3, 6, 10]
    assert cfgmod.validate_config(default_config())["evaluation"]["split_touching"] is True
