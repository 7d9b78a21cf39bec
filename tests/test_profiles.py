"""The shipped cluster profiles ask for what they mean: each rule's resources of profiles/slurm read by
snakemake-executor-plugin-slurm's own GPU parsing (no cluster needed; tests/test_slurm.py submits to a
real one, with the GPU keys replaced because its node has none)."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GPU_RULES = ("train", "predict")


class _Resources(dict):
    """What the plugin reads from a job's resources: `.get(name)` and attribute access."""

    def __getattr__(self, name):
        return self[name]


class _Job:
    def __init__(self, resources: dict):
        self.resources = _Resources(resources)


def _profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text())


def _rule_resources(profile: dict, rule: str) -> dict:
    return {**profile["default-resources"], **profile.get("set-resources", {}).get(rule, {})}


@pytest.mark.parametrize("rule", GPU_RULES)
def test_slurm_profile_asks_for_one_gpu_once(rule):
    partitions = pytest.importorskip("snakemake_executor_plugin_slurm.partitions", reason="pip install 'pipeline[slurm]'")
    utils = pytest.importorskip("snakemake_executor_plugin_slurm.utils")
    job = _Job(_rule_resources(_profile("slurm"), rule))
    # the plugin raises when `gpu` and a GPU `gres` are both set (they are mutually exclusive)
    assert partitions.parse_gpu_requirements(job) == (1, None)
    assert utils.set_gres_string(job).split() == ["--gpus=1"]


def test_slurm_profile_cpu_rules_ask_for_no_gpu():
    utils = pytest.importorskip("snakemake_executor_plugin_slurm.utils", reason="pip install 'pipeline[slurm]'")
    profile = _profile("slurm")
    assert utils.set_gres_string(_Job(profile["default-resources"])) == ""


@pytest.mark.parametrize("name", ["slurm", "kubernetes"])
def test_profiles_request_gpus_by_the_standard_resource_name_only(name):
    profile = _profile(name)
    for rule in GPU_RULES:
        resources = _rule_resources(profile, rule)
        assert resources["gpu"] == 1, (name, rule)
        assert "gpu" not in str(resources.get("gres", "")) and "slurm_extra" not in resources, (name, rule)
    assert _rule_resources(profile, "evaluate")["gpu"] == 0
