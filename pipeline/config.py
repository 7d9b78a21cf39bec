"""Load and validate workflow configs, and resolve one experiment's full settings.

The workflow config (``configs/config.yaml``) names datasets and experiments. An experiment is a
small override of its task's ``defaults`` (nnU-Net style: variants are overrides, not copies).
``grids`` expand losses × samplers into experiments (``expand_grids``) before anything else reads
the experiments, so every later stage sees grid cells as ordinary experiments. The
*resolved* config of one run (experiment × seed) is self-contained: it is written beside every
checkpoint and is all that the train / predict / evaluate / report stages read.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import math
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pipeline import __version__
from pipeline.atomic import write_text
from pipeline.errors import ConfigError
from pipeline.rundir import read_yaml_mapping

SCHEMA_FILE = "config.schema.yaml"
# Settings every experiment gets unless the config's `defaults` or the experiment says otherwise.
BUILTIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "classification": {
        "model": {"name": "resnet10t", "pretrained_path": None, "params": {}},
        "loss": {"name": "ce"},
        "sampler": {"name": "none"},
        "train": {
            "epochs": 10, "batch_size": 32, "image_size": 64, "crop_pct": 1.0, "augment": True, "amp": "auto", "channels_last": "auto",
            "normalise_on_device": "auto",  # uint8 batches to the GPU, normalised there (pipeline/training.py)
            "augment_on_device": "auto",  # the colour jitter per image on the GPU's batch (pipeline/training.py)
            "decode_cache": "data/cache",  # decode each image once (pipeline/data/cache.py); null: per item
            "device": "auto", "num_workers": "auto", "grad_clip": None, "max_train_batches": None, "val_every": 1, "select": "best",
            "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "fused": "auto"},
            "scheduler": {"name": "cosine", "warmup_epochs": 0},
        },
        # saliency: Grad-CAM++ overlays of the report's boundary-case galleries (pipeline/saliency.py)
        "predict": {"batch_size": 64, "logit_offsets": "none", "tta": "none", "saliency": "gradcam_pp"},
    },
    "segmentation": {
        "model": {"name": "Unet", "encoder": "resnet18", "pretrained_path": None, "params": {}},
        # Pixel weights are chosen per data set in its config: sqrt(M / m_i) finds the small types of
        # the synthetic default but over-predicts on ACNE04 from scratch (docs/BENCHMARKS.md §3, §4).
        "loss": {"name": "dice_ce"},
        "sampler": {"name": "none"},
        "train": {
            "epochs": 20, "batch_size": 16, "patch_size": 64, "patches_per_image": 4, "augment": True,
            "amp": "auto", "channels_last": "auto", "device": "auto", "num_workers": "auto", "grad_clip": None, "max_train_batches": None, "val_every": 1, "select": "best",
            "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "fused": "auto"},
            "scheduler": {"name": "cosine", "warmup_epochs": 0},
        },
        # instance_vote: one type per lesion; per-pixel types left fringes of another type around
        # lesions that counted as extra small lesions (docs/BENCHMARKS.md §3c)
        "predict": {"batch_size": 8, "overlap": 0.25, "min_lesion_area": 2, "lesion_threshold": None,
                    "lesion_types": "instance_vote", "tune_postprocessing": False, "tta": "none"},
    },
}
DEFAULT_SPLIT = {"seed": 0, "fractions": {"train": 0.7, "val": 0.15, "test": 0.15}}
DEFAULT_EVALUATION = {"n_bootstrap": 1000, "bootstrap_seed": 0, "iou_threshold": 0.1, "split_touching": True,
                      "min_peak_distance": 3, "min_neck_depth": 1.0}


def load_schema() -> dict:
    text = resources.files("pipeline.schemas").joinpath(SCHEMA_FILE).read_text()
    return yaml.safe_load(text)


def read_yaml(path: str | Path) -> dict:
    return read_yaml_mapping(path)


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate against the JSON schema and cross-references; return a copy with defaults filled."""
    config = copy.deepcopy(config)
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  at {'/'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in errors[:10]]
        raise ConfigError(f"{source} does not match the config schema:\n" + "\n".join(lines))
    config.setdefault("results_dir", "results")
    config.setdefault("manifests_dir", "data_manifests")
    config.setdefault("seeds", [0])
    config.setdefault("baselines", {})
    config.setdefault("defaults", {})
    config["evaluation"] = {**DEFAULT_EVALUATION, **config.get("evaluation", {})}
    for name, dataset in config["datasets"].items():
        _dataset_defaults(name, dataset)
    expand_grids(config)
    for name, experiment in config["experiments"].items():
        if experiment["dataset"] not in config["datasets"]:
            raise ConfigError(
                f"experiment {name!r} names dataset {experiment['dataset']!r}, "
                f"which is not among the config's datasets: {sorted(config['datasets'])}"
            )
    for task, baseline in config["baselines"].items():
        if baseline not in config["experiments"]:
            raise ConfigError(f"baselines.{task} = {baseline!r} is not an experiment of this config "
                              f"(grid cells included): {list(config['experiments'])}")
    return config


def grid_cell_name(grid: str, loss_label: str, sampler_label: str | None) -> str:
    """``<grid>_<loss>``, then ``_<sampler>`` when the grid lists two or more samplers."""
    return f"{grid}_{loss_label}" if sampler_label is None else f"{grid}_{loss_label}_{sampler_label}"


def expand_grids(config: dict) -> dict:
    """Replace the config's ``grids`` by the experiments they stand for (in place; returns config).

    A grid ``{dataset, losses: {label: loss block}, samplers: {label: sampler block}, <other
    experiment keys>}`` gives one experiment per (loss, sampler): the shared keys plus that loss
    and sampler, named ``<grid>_<loss label>``, with ``_<sampler label>`` appended only when the
    grid lists two or more samplers (one sampler, or none given, applies to every cell).
    Seeds multiply every experiment as usual (the config's ``seeds``). A cell named like an
    explicit experiment or another grid's cell is a ConfigError.
    """
    experiments = config.setdefault("experiments", {})
    origin = {name: "an experiment of the config" for name in experiments}
    for grid_name, grid in config.pop("grids", {}).items():
        if grid["dataset"] not in config["datasets"]:
            raise ConfigError(f"grid {grid_name!r} names dataset {grid['dataset']!r}, "
                              f"which is not among the config's datasets: {sorted(config['datasets'])}")
        shared = {key: value for key, value in grid.items() if key not in ("losses", "samplers", "description")}
        samplers = grid.get("samplers") or {}
        sampler_axis = list(samplers.items()) if samplers else [(None, None)]
        for loss_label, loss in grid["losses"].items():
            for sampler_label, sampler in sampler_axis:
                name = grid_cell_name(grid_name, loss_label, sampler_label if len(samplers) > 1 else None)
                cell_of = f"loss {loss_label!r}" + (f", sampler {sampler_label!r}" if sampler_label else "")
                if name in origin:
                    raise ConfigError(f"grid {grid_name!r} ({cell_of}) makes experiment {name!r}, "
                                      f"which is already {origin[name]}: rename the grid or a label")
                cell = copy.deepcopy(shared)
                cell["loss"] = copy.deepcopy(loss)
                if sampler is not None:
                    cell["sampler"] = copy.deepcopy(sampler)
                where = f"grid {grid_name}: {cell_of}"
                cell["description"] = f"{grid['description']} ({where})" if grid.get("description") else where
                experiments[name] = cell
                origin[name] = f"a cell of grid {grid_name!r} ({cell_of})"
    if not experiments:
        raise ConfigError("the config has no experiments (give `experiments`, `grids`, or both)")
    return config


def _dataset_defaults(name: str, dataset: dict) -> None:
    dataset.setdefault("params", {})
    dataset.setdefault("mask_root", dataset["root"])
    dataset.setdefault("grouping", "lesion")
    if dataset["task"] == "segmentation":
        dataset["grading"] = deep_merge({"thresholds": [5, 20, 50]}, dataset.get("grading", {}))
        thresholds = dataset["grading"]["thresholds"]
        if any(b <= a for a, b in zip(thresholds, thresholds[1:])):
            raise ConfigError(f"dataset {name!r}: grading thresholds must increase, got {thresholds}")
    dataset["split"] = deep_merge(DEFAULT_SPLIT, dataset.get("split", {}))
    if dataset["task"] == "segmentation" and "background" in {c.lower() for c in dataset["classes"]}:
        raise ConfigError(f"dataset {name!r}: background is implicit (label 0); do not list it in classes")


def validate_dataset(name: str, dataset: dict) -> dict:
    """One dataset block on its own (what the Snakefile hands to `pipeline prepare` / `split`)."""
    schema = load_schema()
    validator = jsonschema.Draft202012Validator({"$ref": "#/$defs/dataset", "$defs": schema["$defs"]})
    error = jsonschema.exceptions.best_match(validator.iter_errors(dataset))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "<top>"
        raise ConfigError(f"dataset {name!r} does not match the config schema at {where}: {error.message}")
    dataset = copy.deepcopy(dataset)
    _dataset_defaults(name, dataset)
    return dataset


def load_config(path: str | Path) -> dict:
    return validate_config(read_yaml(path), source=str(path))


def deep_merge(base: dict, override: dict) -> dict:
    """Return base updated recursively by override (override wins; neither is modified)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def manifest_path(config: dict, dataset: str) -> Path:
    return Path(config["manifests_dir"]) / f"{dataset}.csv"


def split_manifest_path(config: dict, dataset: str) -> Path:
    return Path(config["manifests_dir"]) / f"{dataset}.split.csv"


def run_dir(config: dict, experiment: str, seed: int) -> Path:
    return Path(config["results_dir"]) / experiment / f"seed{seed}"


def resolve_experiment(config: dict, experiment: str, seed: int) -> dict:
    """The self-contained settings of one run: experiment over task defaults, plus its dataset."""
    if experiment not in config["experiments"]:
        raise ConfigError(f"unknown experiment {experiment!r}; the config has: {sorted(config['experiments'])}")
    spec = config["experiments"][experiment]
    dataset_name = spec["dataset"]
    dataset = copy.deepcopy(config["datasets"][dataset_name])
    task = dataset["task"]
    settings = deep_merge(BUILTIN_DEFAULTS[task], config["defaults"].get(task, {}))
    # A loss or sampler block names one component: an override replaces it whole, never mixes
    # the parameters of two different losses.
    for key in ("loss", "sampler", "model"):
        if key in spec and spec[key].get("name") != settings[key].get("name"):
            settings[key] = {}
    settings = deep_merge(settings, {k: v for k, v in spec.items() if k != "dataset"})
    if task != "classification" and settings["predict"].get("logit_offsets", "none") != "none":
        raise ConfigError(f"experiment {experiment!r}: predict.logit_offsets is for classification only")
    if task != "classification" and settings["predict"].get("saliency", "none") != "none":
        raise ConfigError(f"experiment {experiment!r}: predict.saliency is for classification only "
                          "(segmentation reports draw the predicted lesions themselves)")
    dataset.update(
        name=dataset_name,
        manifest=str(split_manifest_path(config, dataset_name)),
        class_names=dict(dataset["classes"]),
        classes=list(dataset["classes"]),
    )
    return {
        "experiment": experiment,
        "seed": int(seed),
        "task": task,
        "dataset": dataset,
        "model": settings["model"],
        "loss": settings["loss"],
        "sampler": settings["sampler"],
        "train": settings["train"],
        "predict": settings["predict"],
        "evaluation": dict(config["evaluation"]),
        "run_dir": str(run_dir(config, experiment, seed)),
        "code_version": code_version(),
    }


# Code that only evaluates or renders results, or runs the toy models of docs/SCIENCE.md (lab):
# editing it must not retrain models.
DOWNSTREAM_PACKAGES = ("evaluation", "reporting", "lab")
# The module each downstream stage runs; its code version covers what that module imports.
STAGE_ENTRY_MODULES = {
    "evaluate": "pipeline.evaluation.run",
    "report": "pipeline.reporting.html",
    "compare": "pipeline.reporting.compare",
}
RESOURCE_SUFFIXES = {".yaml", ".html"}


def code_version(stage: str = "train") -> str:
    """Package version plus a hash of the sources a stage runs; Snakemake reruns a stage when it changes.

    'train' (training and prediction) covers the package except evaluation/, reporting/ and lab/; the
    other stages cover exactly the package modules their entry module imports, directly or not
    (``stage_sources``), so editing a figure never reruns the evaluation.
    """
    package_root = Path(__file__).resolve().parent
    if stage == "train":
        files = [path for path in sorted(package_root.rglob("*"))
                 if path.relative_to(package_root).parts[0] not in DOWNSTREAM_PACKAGES
                 and path.suffix in {".py"} | RESOURCE_SUFFIXES and "__pycache__" not in path.parts]
    elif stage in STAGE_ENTRY_MODULES:
        files = stage_sources(STAGE_ENTRY_MODULES[stage])
    else:
        raise ConfigError(f"unknown stage {stage!r}; stages are {['train', *STAGE_ENTRY_MODULES]}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(package_root)).encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def stage_sources(entry_module: str) -> list[Path]:
    """The package files ``entry_module`` runs: every pipeline module it imports (read from the
    source, function-level imports included), their packages' __init__.py, and the templates
    and schemas of the packages it uses."""
    package_root = Path(__file__).resolve().parent
    seen: set[Path] = set()
    pending = [entry_module]
    while pending:
        path = _module_file(pending.pop(), package_root)
        if path is None or path in seen:
            continue
        seen.add(path)
        for parent in path.relative_to(package_root).parents:
            init = package_root / parent / "__init__.py"
            if init.is_file() and init not in seen:
                pending.append(_module_name(init, package_root))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                pending += [alias.name for alias in node.names if alias.name.startswith("pipeline")]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("pipeline"):
                # `from pipeline.x import y`: y may be a module of package x or a name defined in x.
                pending += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "files" and node.args
                  and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("pipeline")):
                pending.append(node.args[0].value)  # importlib.resources.files("pipeline.schemas"): its data files
    packages = {path.parent for path in seen if path.name == "__init__.py"}
    resources = [path for path in package_root.rglob("*") if path.suffix in RESOURCE_SUFFIXES
                 and next(p for p in path.parents if (p / "__init__.py").is_file()) in packages - {package_root}]
    return sorted(seen | set(resources))


def _module_file(module: str, package_root: Path) -> Path | None:
    """The source file of a pipeline module (None for a name that is not a module)."""
    base = package_root.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, package_root: Path) -> str:
    parts = path.relative_to(package_root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def write_yaml_atomic(data: dict, path: str | Path) -> Path:
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def training_cost(run: dict) -> float:
    """A rough size of a run's training, in input pixels seen: epochs x training images x samples
    per image x pixels per sample (the split manifest's training rows when it exists; 1000 before
    the split is written). Only for ordering jobs (``training_priority``), not a prediction of time."""
    import csv

    train = run["train"]
    if run["model"].get("kind") == "sklearn":
        return 0.0  # a linear model on small images: seconds
    path = Path(run["dataset"]["manifest"])
    n_train = 1000
    if path.is_file():
        with open(path, newline="", encoding="utf-8-sig") as handle:
            n_train = sum(1 for row in csv.DictReader(handle) if row.get("split") == "train") or n_train
    if run["task"] == "segmentation":
        return float(train["epochs"] * n_train * train.get("patches_per_image", 1) * train["patch_size"] ** 2)
    return float(train["epochs"] * n_train * train["image_size"] ** 2)


def training_priority(run: dict) -> int:
    """Snakemake ``priority`` of a training job: larger for longer runs (log2 of ``training_cost``),
    so that with more runs than cores the longest start first and the critical path is not left
    to the end."""
    return max(int(math.log2(max(training_cost(run), 1.0))), 0)


def training_launcher(gpus: Any) -> str:
    """The command prefix that starts a training job on ``gpus`` devices: nothing for one (or none),
    ``torchrun --standalone --nproc-per-node=N --no-python `` for N > 1 (one process per device,
    pipeline.training's DistributedDataParallel; on a machine without CUDA the processes train on
    the CPU with the gloo backend). ``gpus`` comes from Snakemake's ``gpu`` resource and must be a
    whole number: nothing else reaches the shell."""
    text = str(gpus).strip()
    if isinstance(gpus, bool) or not text.isdigit():  # 2 or "2"; not 1.5, -1 or "2; rm -rf /"
        raise ConfigError(f"resource gpu must be a whole number of GPUs (0 or more), got {gpus!r}")
    count = int(text)
    return f"torchrun --standalone --nproc-per-node={count} --no-python " if count > 1 else ""
