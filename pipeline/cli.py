"""`pipeline` command line: one subcommand per workflow stage, each usable without Snakemake.

    pipeline prepare  --config C --dataset D          adapter -> data_manifests/D.csv
    pipeline split    --config C --dataset D          frozen split -> data_manifests/D.split.csv
    pipeline train    --config C --experiment E [--seed K]
    pipeline predict  --config C --experiment E [--seed K]
    pipeline evaluate --config C --experiment E [--seed K]
    pipeline report   --config C --experiment E [--seed K]
    pipeline compare  --config C
    pipeline infer    --run results/E/seedK --images DIR_OR_CSV --out DIR [--skip-bad] [--tta flips|dihedral] [--explain]
    pipeline export   --run results/E/seedK --out DIR [--format torchscript onnx exported_program]
    pipeline bench    --config C --experiment E [--steps N] [--workers W] [--losses] [--out bench.json]
    pipeline list     losses|models|segmenters|adapters|samplers|optimizers|schedulers|tasks
    pipeline list     experiments --config C            every experiment, grid cells expanded
A run can also be named by its resolved config file (`--run-config results/E/seedK/run.yaml`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipeline import config as cfgmod
from pipeline import rundir
from pipeline.errors import ConfigError, DataError, PipelineError

log = logging.getLogger("pipeline")


# ------------------------------------------------------------------------------------------- helpers
def _run_config(args) -> dict:
    if args.run_config:
        return rundir.read_run_config(args.run_config)
    if not (args.config and args.experiment):
        raise PipelineError("name a run with --config and --experiment (and --seed), or with --run-config")
    config = cfgmod.load_config(args.config)
    seed = args.seed if args.seed is not None else config["seeds"][0]
    return cfgmod.resolve_experiment(config, args.experiment, seed)


def _dataset_args(args) -> tuple[dict, Path, Path]:
    """(dataset settings, manifest path, split path) from --config/--dataset or --dataset-spec (JSON)."""
    if args.dataset_spec:
        spec = json.loads(args.dataset_spec)
        name, manifests_dir = spec.pop("name"), spec.pop("manifests_dir")
        dataset = cfgmod.validate_dataset(name, spec)
    elif args.config and args.dataset:
        config, name = cfgmod.load_config(args.config), args.dataset
        if name not in config["datasets"]:
            raise PipelineError(f"unknown dataset {name!r}; the config has {sorted(config['datasets'])}")
        dataset, manifests_dir = config["datasets"][name], config["manifests_dir"]
    else:
        raise PipelineError("name a dataset with --config and --dataset, or with --dataset-spec")
    paths = {"manifests_dir": manifests_dir}
    return dict(dataset, name=name), cfgmod.manifest_path(paths, name), cfgmod.split_manifest_path(paths, name)


# -------------------------------------------------------------------------------------------- stages
def cmd_prepare(args) -> None:
    from pipeline.data.adapters import get_adapter
    from pipeline.data.manifest import validate_manifest, write_manifest

    dataset, out, _ = _dataset_args(args)
    adapter = get_adapter(dataset["adapter"])
    frame = adapter(Path(dataset["root"]), list(dataset["classes"]), Path(dataset["mask_root"]), **dataset["params"])
    if dataset["task"] == "segmentation":
        from pipeline.data.instances import grade_synthetic_rows

        frame = grade_synthetic_rows(frame, list(dataset["classes"]), dataset["grading"]["thresholds"])
    frame.attrs["source"] = f"adapter {dataset['adapter']!r} for dataset {dataset['name']!r}"
    validate_manifest(frame, task=dataset["task"], classes=list(dataset["classes"]), root=Path(dataset["root"]),
                      mask_root=Path(dataset["mask_root"]), check_files=True)
    write_manifest(frame, out)
    log.info("wrote %s (%d images, %d groups)", out, len(frame), frame["group_id"].nunique())


def cmd_split(args) -> None:
    from pipeline.data.manifest import read_manifest, validate_manifest, write_manifest
    from pipeline.data.splits import split_manifest

    dataset, manifest, out = _dataset_args(args)
    classes, task = list(dataset["classes"]), dataset["task"]
    frame = validate_manifest(read_manifest(manifest), task=task, classes=classes)
    if out.exists():
        frozen = validate_manifest(read_manifest(out), task=task, classes=classes, require_split=True)
        if set(frozen["image_id"]) != set(frame["image_id"]):
            raise DataError(
                f"{out} is a frozen split of a different manifest ({len(frozen)} vs {len(frame)} images). "
                f"Splits never change silently: delete {out} to split again (results made with the old split "
                "are then no longer comparable)."
            )
        log.info("%s exists and matches the manifest: kept unchanged", out)
        return
    from pipeline.tasks import TASKS

    counts = TASKS.get(task).split_strata(frame, dataset)
    split = split_manifest(frame, task=task, classes=classes, fractions=dataset["split"]["fractions"],
                           seed=dataset["split"]["seed"], lesion_counts=counts)
    write_manifest(split, out)
    summary = split.groupby("split").size().to_dict()
    log.info("wrote %s: %s images per split, grouped by %s", out, summary, dataset["grouping"])


def cmd_train(args) -> None:
    from pipeline.sklearn_trainer import is_sklearn

    cfg = _run_config(args)
    if is_sklearn(cfg):  # model.kind: sklearn (the logistic-regression baseline)
        from pipeline.sklearn_trainer import train
    else:
        from pipeline.training import train
    train(cfg, threads=args.threads)


def cmd_predict(args) -> None:
    from pipeline.sklearn_trainer import is_sklearn

    cfg = _run_config(args)
    if is_sklearn(cfg):
        from pipeline.sklearn_trainer import predict_run
    else:
        from pipeline.predict import predict_run
    predict_run(cfg, args.split)


def cmd_evaluate(args) -> None:
    from pipeline.evaluation.run import HEADLINE, evaluate_run

    cfg = _run_config(args)
    metrics = evaluate_run(cfg)
    key, label = HEADLINE[metrics["task"]]
    lo, hi = metrics[key]["ci95"]
    log.info("wrote %s/%s (%s %.3f, 95%% CI %.3f-%.3f)", cfg["run_dir"], rundir.METRICS, label,
             metrics[key]["value"], lo, hi)


def cmd_infer(args) -> None:
    from pipeline.infer import infer

    infer(args.run, args.images, args.out, skip_bad=args.skip_bad, device=args.device, tta=args.tta,
          explain=args.explain)


def cmd_export(args) -> None:
    from pipeline.export import export

    path = export(args.run, args.out, formats=tuple(args.format))
    log.info("wrote %s", path)


def set_dotted(run: dict, item: str) -> None:
    """``train.channels_last=false`` -> run["train"]["channels_last"] = False; only settings the
    resolved run already has (a typo is an error, not a silently ignored key)."""
    import yaml

    key, sep, value = item.partition("=")
    *parents, leaf = key.split(".")
    node = run
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not sep or not isinstance(node, dict) or leaf not in node:
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE naming a setting of the resolved run")
    node[leaf] = yaml.safe_load(value)


def cmd_bench(args) -> None:
    from pipeline.bench import bench, summary_lines, write_result

    run = _run_config(args)
    if args.no_decode_cache:
        run["train"]["decode_cache"] = None
    for item in args.set:  # a variant of the run measured without editing its config
        set_dotted(run, item)
    result = bench(run, steps=args.steps, warmup=args.warmup, workers=args.workers,
                   losses=args.losses, threads=args.threads)
    print("\n".join(summary_lines(result)))
    if args.out:
        write_result(result, args.out)


def cmd_report(args) -> None:
    from pipeline.reporting.html import write_experiment_report

    cfg = _run_config(args)
    run_dir = Path(cfg["run_dir"])
    out = write_experiment_report(run_dir=run_dir, config=cfg, out_path=run_dir / "report.html",
                                  figures_dir=run_dir / "figures")
    log.info("wrote %s", out)


def cmd_compare(args) -> None:
    from pipeline.reporting.compare import write_comparison

    if args.runs:
        run_dirs = [Path(r) for r in args.runs]
        baselines = dict(item.split("=", 1) for item in args.baseline)
        out_dir = Path(args.out_dir)
        n_bootstrap, bootstrap_seed = args.n_bootstrap, args.bootstrap_seed
    elif args.config:
        config = cfgmod.load_config(args.config)
        run_dirs = [cfgmod.run_dir(config, e, s) for e in config["experiments"] for s in config["seeds"]]
        baselines, out_dir = baselines_of(config), Path(config["results_dir"])
        n_bootstrap, bootstrap_seed = config["evaluation"]["n_bootstrap"], config["evaluation"]["bootstrap_seed"]
    else:
        raise PipelineError("name the runs with --config, or with --runs/--baseline/--out-dir")
    write_comparison(run_dirs=run_dirs, baselines=baselines, out_csv=out_dir / "comparison.csv",
                     out_html=out_dir / "comparison.html", figures_dir=out_dir / "comparison_figures",
                     n_bootstrap=n_bootstrap, bootstrap_seed=bootstrap_seed)
    log.info("wrote %s and %s", out_dir / "comparison.csv", out_dir / "comparison.html")


def baselines_of(config: dict) -> dict[str, str]:
    """The configured baseline per task, else the task's first experiment."""
    baselines = dict(config["baselines"])
    for name, experiment in config["experiments"].items():
        task = config["datasets"][experiment["dataset"]]["task"]
        baselines.setdefault(task, name)
    return baselines


# `pipeline list <what>`: the registry (or model zoo) behind each kind of name a config holds
LISTABLE = {
    "losses": "pipeline.losses:LOSSES",  # the package imports every loss family
    "adapters": "pipeline.data.adapters:ADAPTERS",
    "samplers": "pipeline.sampling:SAMPLERS",
    "optimizers": "pipeline.optim:OPTIMIZERS",
    "schedulers": "pipeline.optim:SCHEDULERS",
    "tasks": "pipeline.tasks:TASKS",
}


def list_experiments(config: dict) -> list[str]:
    """One line per experiment of a validated config (grid cells expanded): name, dataset, and the
    loss and sampler it trains with after the task defaults."""
    import yaml

    def flow(block: dict) -> str:
        return yaml.safe_dump(block, default_flow_style=True, sort_keys=False, width=10_000).strip()

    rows = [("experiment", "dataset", "loss", "sampler")]
    for name, experiment in config["experiments"].items():
        run = cfgmod.resolve_experiment(config, name, config["seeds"][0])
        rows.append((name, experiment["dataset"], flow(run["loss"]), flow(run["sampler"])))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3] for row in rows]
    seeds = config["seeds"]
    lines.append(f"# {len(rows) - 1} experiments x seeds {seeds} = {(len(rows) - 1) * len(seeds)} runs")
    return lines


def cmd_list(args) -> None:
    import importlib

    if args.what == "experiments":
        if not args.config:
            raise PipelineError("pipeline list experiments needs --config (the workflow config to expand)")
        print("\n".join(list_experiments(cfgmod.load_config(args.config))))
        return
    if args.what == "models":
        from pipeline.models import available_classifiers
        items = available_classifiers(args.pattern or "*")
    elif args.what == "segmenters":
        from pipeline.models import available_segmenters
        items = available_segmenters()
    else:
        module, name = LISTABLE[args.what].split(":")
        items = getattr(importlib.import_module(module), name).names()
        if args.what == "samplers":
            items.append("lesion_patches (segmentation)")
    print("\n".join(items))


def cmd_resolve(args) -> None:
    # --run-spec: the run the Snakefile resolved from its merged config files (JSON), written as is;
    # a shell job instead of a `run:` block, which Snakemake executes in a fresh Snakemake process.
    cfg = json.loads(args.run_spec) if args.run_spec else _run_config(args)
    if args.run_spec and not args.out:
        raise PipelineError("--run-spec needs --out")
    out = Path(args.out) if args.out else Path(cfg["run_dir"]) / rundir.RUN_CONFIG
    rundir.write_run_config(cfg, out)
    log.info("wrote %s", out)


# ------------------------------------------------------------------------------------------ argparse
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def dataset_command(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help="workflow config YAML")
        p.add_argument("--dataset", help="dataset name in the config")
        p.add_argument("--dataset-spec", help="the dataset's settings as JSON (what the Snakefile passes)")
        p.set_defaults(func=func)

    def run_command(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help="workflow config YAML")
        p.add_argument("--experiment", help="experiment name in the config")
        p.add_argument("--seed", type=int, help="seed (default: the config's first)")
        p.add_argument("--run-config", help="a resolved run config (run.yaml) instead of --config/--experiment/--seed")
        p.set_defaults(func=func)
        return p

    dataset_command("prepare", cmd_prepare, "build a dataset's manifest (generating the synthetic default if needed)")
    dataset_command("split", cmd_split, "write the frozen, seeded, grouped train/val/test split")
    resolve = run_command("resolve", cmd_resolve, "write a run's resolved config")
    resolve.add_argument("--out")
    resolve.add_argument("--run-spec", help="the resolved run as JSON (what the Snakefile passes), written to --out")
    run_command("train", cmd_train, "train one run; resumes from its last checkpoint").add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (Snakemake passes {threads})")
    run_command("predict", cmd_predict, "predict the test split with the best checkpoint").add_argument(
        "--split", default="test", choices=["val", "test"])
    run_command("evaluate", cmd_evaluate, "metrics.json, confusion matrix and per-class tables")
    run_command("report", cmd_report, "the clinician-facing HTML report of one run")
    p = run_command("bench", cmd_bench, "throughput of the real training path against the model alone; loss costs")
    p.add_argument("--steps", type=int, default=40, help="timed optimizer steps of each measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the run's train.num_workers)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (and num_workers: auto)")
    p.add_argument("--losses", action="store_true", help="also time every loss against CE (classification 256x7, "
                                                         "segmentation 8x7x256x256)")
    p.add_argument("--no-decode-cache", action="store_true", help="decode every image each time (what the cache saves)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override an existing setting of the resolved run, value read as YAML "
                        "(e.g. train.channels_last=false); repeatable")
    p.add_argument("--out", help="write the figures as JSON here")
    p = sub.add_parser("compare", help="comparison table and report across experiments")
    p.add_argument("--config", help="workflow config YAML (all its experiments and seeds)")
    p.add_argument("--runs", nargs="+", help="run folders results/<experiment>/seed<k> (instead of --config)")
    p.add_argument("--baseline", nargs="*", default=[], help="task=experiment pairs, e.g. classification=cls_ce")
    p.add_argument("--out-dir", default="results")
    p.add_argument("--n-bootstrap", type=int, default=cfgmod.DEFAULT_EVALUATION["n_bootstrap"],
                   help="paired-bootstrap resamples with --runs (with --config: the config's evaluation.n_bootstrap)")
    p.add_argument("--bootstrap-seed", type=int, default=cfgmod.DEFAULT_EVALUATION["bootstrap_seed"],
                   help="paired-bootstrap seed with --runs (with --config: the config's evaluation.bootstrap_seed)")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("infer", help="apply a trained run to new images (no labels needed)")
    p.add_argument("--run", required=True, help="a trained run folder, results/<experiment>/seed<k>")
    p.add_argument("--images", required=True, help="a folder of images, or a CSV with an image_path column")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--skip-bad", action="store_true", help="list unreadable images in skipped.csv and go on")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda, cuda:1, ...")
    p.add_argument("--tta", choices=["none", "flips", "dihedral"], default=None,
                   help="test-time augmentation: outputs averaged over flips (4 views) or flips and rotations (8)")
    p.add_argument("--explain", action="store_true",
                   help="classification: also write explain/<id>.png, Grad-CAM++ of the predicted class")
    p.set_defaults(func=cmd_infer)
    p = sub.add_parser("export", help="TorchScript / ONNX files of a trained run, checked against PyTorch")
    p.add_argument("--run", required=True, help="a trained run folder, results/<experiment>/seed<k>")
    p.add_argument("--out", required=True, help="output folder (model.ts, model.onnx, export.json)")
    p.add_argument("--format", nargs="+", default=["torchscript", "onnx"],
                   choices=["torchscript", "onnx", "exported_program"], help="formats to write (default: torchscript onnx)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("list", help="what can be named in a config")
    p.add_argument("what", choices=["models", "segmenters", *LISTABLE, "experiments"])
    p.add_argument("pattern", nargs="?", help="glob for models, e.g. 'resnet*'")
    p.add_argument("--config", help="with experiments: the workflow config whose experiments (grids expanded) to list")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except PipelineError as exc:
        if args.verbose:
            raise
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
