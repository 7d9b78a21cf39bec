"""One registry pattern (pipeline.registry) for everything a config names, and `pipeline list`."""

import pytest

from pipeline import cli
from pipeline.errors import ConfigError
from pipeline.registry import Registry
from pipeline.tasks import TASKS
from pipeline.tasks.base import Task


def test_registry_registers_gets_and_lists():
    things = Registry("thing")

    @things.register("b", colour="blue")
    def make_b():
        return "b"

    things.register("a")(lambda: "a")
    assert things.names() == ["a", "b"] and "b" in things and "c" not in things
    assert things.get("b") is make_b and things.info("b") == {"colour": "blue"}
    with pytest.raises(ConfigError, match=r"unknown thing 'c'; available: \['a', 'b'\]"):
        things.get("c")
    with pytest.raises(ValueError, match="registered twice"):
        things.register("a")(lambda: "again")


def test_a_registry_imports_its_modules_on_first_use():
    tasks = Registry("task", modules=["pipeline.tasks.classification"])
    assert tasks.names() == []  # the module registers into TASKS, not into this registry
    assert {"classification", "segmentation"} <= set(TASKS.names())


@pytest.mark.parametrize("what, expected", [
    ("losses", {"ce", "focal", "dice_ce"}), ("adapters", {"folder", "synthetic_isic"}),
    ("samplers", {"none", "oversample", "class_balanced"}), ("optimizers", {"sgd", "adam", "adamw"}),
    ("schedulers", {"none", "cosine", "step", "onecycle"}), ("tasks", {"classification", "segmentation"}),
])
def test_pipeline_list_prints_each_registry(what, expected, capsys):
    assert cli.main(["list", what]) == 0
    assert expected <= set(capsys.readouterr().out.split("\n"))


@pytest.mark.parametrize("name", ["classification", "segmentation"])
def test_every_task_implements_the_protocol(name):
    task_class = TASKS.get(name)
    members = {m for m in vars(Task) if not m.startswith("_")} | set(Task.__annotations__)
    assert {"num_outputs", "split_strata", "build_model", "class_counts", "train_dataset", "train_sampler",
            "validation_score", "predict", "name", "score_name"} <= members
    for member in members:
        assert hasattr(task_class, member), f"{name}: {member}"
    assert task_class.name == name
