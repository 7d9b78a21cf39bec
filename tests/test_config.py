import copy
from pathlib import Path

import pandas as pd
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


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml")))
def test_every_shipped_config_validates_and_resolves_every_run(path):
    config = cfgmod.load_config(ROOT / path)
    for name in config["experiments"]:  # load_config has expanded any grids
        for seed in config["seeds"]:
            run = cfgmod.resolve_experiment(config, name, seed)
            assert run["run_dir"] == str(Path(config["results_dir"]) / name / f"seed{seed}")


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


def grid_config(**grid_overrides) -> dict:
    """The default config plus a grid of 2 losses x 2 samplers on the classification data."""
    config = default_config()
    config["grids"] = {"lab": {
        "dataset": "isic_synthetic",
        "description": "loss lab",
        "train": {"epochs": 3},
        "losses": {"ce": {"name": "ce"}, "focal": {"name": "focal", "gamma": 2.0}},
        "samplers": {"shuffle": {"name": "none"}, "over": {"name": "oversample", "coefficients": "isic2018"}},
        **grid_overrides,
    }}
    return config


def test_a_grid_expands_into_one_experiment_per_loss_and_sampler():
    config = cfgmod.validate_config(grid_config())
    cells = [name for name in config["experiments"] if name.startswith("lab_")]
    assert cells == ["lab_ce_shuffle", "lab_ce_over", "lab_focal_shuffle", "lab_focal_over"]
    assert "grids" not in config  # expanded: every later stage sees experiments only
    assert config["experiments"]["lab_focal_over"] == {
        "dataset": "isic_synthetic", "train": {"epochs": 3}, "loss": {"name": "focal", "gamma": 2.0},
        "sampler": {"name": "oversample", "coefficients": "isic2018"},
        "description": "loss lab (grid lab: loss 'focal', sampler 'over')"}
    run = cfgmod.resolve_experiment(config, "lab_focal_over", seed=1)
    assert run["loss"] == {"name": "focal", "gamma": 2.0} and run["sampler"]["name"] == "oversample"
    assert run["train"]["epochs"] == 3 and run["train"]["batch_size"] == 32  # shared key over the defaults
    assert run["run_dir"] == str(Path("results") / "lab_focal_over" / "seed1")
    # validating the validated config again changes nothing (the cells are plain experiments now)
    assert cfgmod.validate_config(config)["experiments"] == config["experiments"]


def test_one_sampler_or_none_leaves_the_sampler_out_of_the_names():
    one = cfgmod.validate_config(grid_config(samplers={"over": {"name": "oversample", "coefficients": "isic2018"}}))
    assert [n for n in one["experiments"] if n.startswith("lab_")] == ["lab_ce", "lab_focal"]
    assert one["experiments"]["lab_ce"]["sampler"]["name"] == "oversample"
    config = grid_config()
    del config["grids"]["lab"]["samplers"]
    none = cfgmod.validate_config(config)
    assert "sampler" not in none["experiments"]["lab_focal"]  # the task's default sampler
    assert cfgmod.resolve_experiment(none, "lab_focal", 0)["sampler"] == {"name": "none"}


def test_a_grid_cell_resolves_like_the_same_experiment_written_by_hand():
    config = cfgmod.validate_config(grid_config())
    by_hand = default_config()
    by_hand["experiments"]["hand"] = {"dataset": "isic_synthetic", "train": {"epochs": 3},
                                      "loss": {"name": "ce"}, "sampler": {"name": "oversample", "coefficients": "isic2018"}}
    by_hand = cfgmod.validate_config(by_hand)
    cell, hand = cfgmod.resolve_experiment(config, "lab_ce_over", 0), cfgmod.resolve_experiment(by_hand, "hand", 0)
    for key in ("task", "dataset", "model", "loss", "sampler", "train", "predict", "evaluation"):
        assert cell[key] == hand[key], key


def test_a_config_of_grids_only_validates_and_its_baseline_may_be_a_cell():
    config = grid_config()
    del config["experiments"]
    config["baselines"] = {"classification": "lab_ce_shuffle"}
    validated = cfgmod.validate_config(config)
    assert list(validated["experiments"])[0] == "lab_ce_shuffle" and len(validated["experiments"]) == 4
    from pipeline.cli import baselines_of
    assert baselines_of(validated)["classification"] == "lab_ce_shuffle"


@pytest.mark.parametrize(
    "mutate, message",
    [
        # a cell named like an explicit experiment, or like another grid's cell
        (lambda c: c["experiments"].update(lab_ce_over={"dataset": "isic_synthetic"}),
         r"grid 'lab' \(loss 'ce', sampler 'over'\) makes experiment 'lab_ce_over', which is already an experiment"),
        (lambda c: c["grids"].update({"lab_ce": {"dataset": "isic_synthetic", "losses": {"over": {"name": "ce"}}}}),
         r"grid 'lab_ce' \(loss 'over'\) makes experiment 'lab_ce_over', which is already a cell of grid 'lab'"),
        (lambda c: c["grids"]["lab"].update(dataset="nope"), "grid 'lab' names dataset 'nope'"),
        (lambda c: c.update(baselines={"classification": "lab_ce"}), r"not an experiment .*'lab_ce_shuffle'"),
        (lambda c: c["grids"]["lab"].update(loss={"name": "ce"}), "schema"),  # losses, not loss, in a grid
        (lambda c: c["grids"]["lab"].update(losses={}), "schema"),
        (lambda c: c["grids"]["lab"]["losses"].update({"a/b": {"name": "ce"}}), "schema"),
        (lambda c: c["grids"]["lab"]["samplers"].update(bad={"coefficients": "isic2018"}), "schema"),  # no name
        (lambda c: (c.pop("experiments"), c.pop("grids")), "schema"),
    ],
)
def test_invalid_grids_are_rejected_with_a_message(mutate, message):
    config = grid_config()
    mutate(config)
    with pytest.raises(ConfigError, match=message):
        cfgmod.validate_config(config)


def test_the_dynamical_study_config_expands_and_shares_the_default_data():
    study = cfgmod.load_config(ROOT / "configs" / "studies" / "dynamical.yaml")
    default = cfgmod.validate_config(default_config())
    assert study["datasets"]["isic_synthetic"] == default["datasets"]["isic_synthetic"]
    assert study["baselines"]["classification"] in study["experiments"]
    dynamical = [e for e in study["experiments"].values() if e["loss"]["name"] == "dynamical"]
    assert len(dynamical) == 19 and all(cfgmod.resolve_experiment(study, name, 0) for name in study["experiments"])


def test_training_priority_orders_runs_by_their_size(tmp_path):
    config = cfgmod.load_config(ROOT / "configs" / "config.yaml")
    short = cfgmod.resolve_experiment(config, "cls_ce", 0)
    longer = copy.deepcopy(short)
    longer["train"]["epochs"] *= 4
    assert cfgmod.training_priority(longer) == cfgmod.training_priority(short) + 2  # log2 of the pixels seen
    assert cfgmod.training_priority(cfgmod.resolve_experiment(config, "cls_logreg", 0)) == 0
    manifest = tmp_path / "split.csv"  # with the split written, its training rows count
    manifest.write_text("image_id,split\n" + "".join(f"i{k},train\n" for k in range(4000)))
    short["dataset"]["manifest"] = str(manifest)
    assert cfgmod.training_cost(short) == 10 * 4000 * 64 * 64


@pytest.mark.parametrize("bad", ["2; rm -rf /", 1.5, -1, True, None])
def test_the_training_launcher_takes_a_whole_number_of_gpus_and_nothing_else(bad):
    assert cfgmod.training_launcher(0) == cfgmod.training_launcher(1) == ""
    assert cfgmod.training_launcher("3") == "torchrun --standalone --nproc-per-node=3 --no-python "
    with pytest.raises(ConfigError, match="whole number"):
        cfgmod.training_launcher(bad)


def test_default_acne_test_split_holds_every_lesion_type_in_numbers_a_recall_can_be_read_from():
    """The embedded default's test split is sized for its rarest type (nodules, 1% of lesions): with
    120 images it held 2 nodules, so a nodule recall could only be 0, 0.5 or 1. The split is computed
    from the generator's plan and the splitter the workflow runs, without drawing any pixel."""
    from pipeline.data.adapters.synthetic import _acne_row
    from pipeline.data.splits import split_manifest
    from pipeline.data.synthetic import acne
    from pipeline.tasks import TASKS

    dataset = cfgmod.validate_config(default_config())["datasets"]["acne_synthetic"]
    params = dataset["params"]
    plans = acne.plan_images(params["n_images"], params["scale"], params["image_size"], params["seed"])
    frame = pd.DataFrame([_acne_row(plan) for plan in plans])
    classes = list(dataset["classes"])
    split = split_manifest(frame, task="segmentation", classes=classes, fractions=dataset["split"]["fractions"],
                           seed=dataset["split"]["seed"],
                           lesion_counts=TASKS.get("segmentation").split_strata(frame, dataset))
    lesions = split.groupby("split")[[f"n_{t}" for t in classes]].sum()
    assert (lesions.loc["test"] >= 10).all(), lesions.loc["test"].to_dict()
    # training keeps the size it had (72 images), so the default run's training time does not grow
    assert 64 <= (split["split"] == "train").sum() <= 80
