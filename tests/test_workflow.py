"""End-to-end Snakemake runs of a tiny config in a temporary folder (the real Snakefile and rules)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.metrics import balanced_accuracy_score, confusion_matrix

ROOT = Path(__file__).resolve().parents[1]
ISIC = {"MEL": "Melanoma", "NV": "Melanocytic nevus", "BCC": "Basal cell carcinoma", "AKIEC": "Actinic keratosis",
        "BKL": "Benign keratosis", "DF": "Dermatofibroma", "VASC": "Vascular lesion"}
ACNE = {"whitehead": "Whitehead", "blackhead": "Blackhead", "papule": "Papule", "pustule": "Pustule",
        "nodule": "Nodule", "cyst": "Cyst"}
FAST_TRAIN = {"epochs": 1, "batch_size": 16, "max_train_batches": 3}


def tiny_config() -> dict:
    return {
        "seeds": [0],
        "evaluation": {"n_bootstrap": 200},
        "datasets": {
            "isic_tiny": {"task": "classification", "adapter": "synthetic_isic", "root": "data/isic",
                          "params": {"scale": 0.02, "image_size": 32, "seed": 1}, "classes": ISIC,
                          "split": {"seed": 0, "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}},
            "acne_tiny": {"task": "segmentation", "adapter": "synthetic_acne", "root": "data/acne",
                          "params": {"n_images": 24, "image_size": 64, "seed": 1}, "classes": ACNE, "grouping": "patient",
                          "split": {"seed": 0, "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}},
        },
        "defaults": {
            "classification": {"model": {"name": "test_resnet"}, "train": {**FAST_TRAIN, "image_size": 32}},
            "segmentation": {"model": {"name": "Unet", "encoder": "tu-test_resnet",
                                       "params": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}},
                             "train": {**FAST_TRAIN, "batch_size": 8, "patch_size": 32, "patches_per_image": 2}},
        },
        "experiments": {
            "cls_ce": {"dataset": "isic_tiny", "loss": {"name": "ce"}},
            "cls_dynamical": {"dataset": "isic_tiny", "loss": {"name": "dynamical", "amplitude": 3.0, "period": 2}},
            "cls_logreg": {"dataset": "isic_tiny", "model": {"name": "logreg", "kind": "sklearn", "params": {"pixels": 8}},
                           "loss": {"name": "weighted_ce", "weights": "inverse"}},
            "seg_dice_ce": {"dataset": "acne_tiny", "loss": {"name": "dice_ce"},
                            "sampler": {"name": "lesion_patches", "ratios": {"nodule": 2}}},
        },
    }


def snakemake(workdir: Path, *args: str, root: Path = ROOT) -> subprocess.CompletedProcess:
    """Run Snakemake on ``workdir`` with the workflow (Snakefile, rules, package) found in ``root``."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if root != ROOT:
        env["PYTHONPATH"] = f"{root}{os.pathsep}{env.get('PYTHONPATH', '')}"
    command = [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--cores", "2", "--show-failed-logs", *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def finished_workflow(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    (workdir / "config.yaml").write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    result = snakemake(workdir)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    return workdir


@pytest.mark.slow
def test_every_stage_writes_its_outputs(finished_workflow):
    results = finished_workflow / "results"
    for experiment in ("cls_ce", "cls_dynamical", "seg_dice_ce"):
        run = results / experiment / "seed0"
        for name in ("run.yaml", "checkpoints/best.pt", "checkpoints/last.pt", "checkpoints/config.yaml",
                     "training_summary.json", "predictions.csv", "metrics.json", "confusion_matrix.csv",
                     "report.html", "logs/train.log", "benchmarks/train.tsv"):
            assert (run / name).is_file(), f"{experiment}: {name}"
        confusion = "lesion_confusion_matrix.png" if experiment.startswith("seg") else "confusion_matrix_counts.png"
        assert (run / "figures" / confusion).is_file(), experiment  # drawn by the report stage
        assert not list(run.glob("*.png")), f"{experiment}: the evaluate stage writes data only"
    baseline = results / "cls_logreg" / "seed0"  # the sklearn baseline goes through the same rules
    for name in ("checkpoints/best.json", "training_summary.json", "predictions.csv", "metrics.json", "report.html"):
        assert (baseline / name).is_file(), f"cls_logreg: {name}"
    assert not (baseline / "checkpoints" / "best.pt").exists()
    assert (results / "comparison.csv").is_file() and (results / "comparison.html").is_file()
    assert "cls_logreg" in set(pd.read_csv(results / "comparison.csv")["experiment"])
    assert (finished_workflow / "data_manifests" / "isic_tiny.split.csv").is_file()
    weights = pd.read_csv(results / "cls_dynamical" / "seed0" / "loss_weights.csv")
    assert weights.filter(like="w").sum(axis=1).round(4).eq(7).all()


@pytest.mark.slow
def test_metrics_json_agrees_with_the_predictions_file(finished_workflow):
    run = finished_workflow / "results" / "cls_ce" / "seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    predictions = pd.read_csv(run / "predictions.csv", dtype=str)
    classes = list(ISIC)
    assert metrics["classes"] == classes
    assert metrics["n_images"] == len(predictions)
    truth, pred = predictions["label"], predictions["pred"]
    assert metrics["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(truth, pred))
    assert metrics["confusion_matrix"]["counts"] == confusion_matrix(truth, pred, labels=classes).tolist()
    for code in classes:
        entry = metrics["per_class"][code]
        assert entry["support"] == int((truth == code).sum())
        hits = int(((truth == code) & (pred == code)).sum())
        assert entry["sensitivity"]["value"] == pytest.approx(hits / entry["support"])
    split = pd.read_csv(finished_workflow / "data_manifests" / "isic_tiny.split.csv", dtype=str)
    assert set(predictions["image_id"]) == set(split.loc[split["split"] == "test", "image_id"])


def dry_run_jobs(output: str) -> dict[str, int]:
    """rule -> job count from the output of `snakemake -n --quiet rules`."""
    return {line.split()[0]: int(line.split()[1]) for line in output.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}


@pytest.mark.slow
def test_editing_a_figure_reruns_the_reports_but_not_the_evaluation(finished_workflow, tmp_path):
    copy = tmp_path / "workflow_copy"
    copy.mkdir()
    for name in ("Snakefile", "rules", "pipeline", "configs"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, copy / name)
    (finished_workflow / "config.yaml").write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    unchanged = snakemake(finished_workflow, "-n", root=copy)
    assert unchanged.returncode == 0 and "Nothing to be done" in unchanged.stdout + unchanged.stderr
    figures = copy / "pipeline" / "reporting" / "figures.py"
    figures.write_text(figures.read_text() + "\n# an edited figure\n")
    dry = snakemake(finished_workflow, "-n", "--quiet", "rules", root=copy)
    output = dry.stdout + dry.stderr
    assert dry.returncode == 0, output
    jobs = dry_run_jobs(output)
    assert jobs.get("report") == 4 and jobs.get("compare") == 1, output
    assert "evaluate" not in jobs and "train" not in jobs and "predict" not in jobs, output


@pytest.mark.slow
def test_rerun_is_a_no_op_and_one_changed_experiment_reruns_alone(finished_workflow):
    dry = snakemake(finished_workflow, "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    config = tiny_config()
    config["experiments"]["cls_dynamical"]["loss"]["amplitude"] = 4.0
    (finished_workflow / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    dry = snakemake(finished_workflow, "-n", "--quiet", "rules")
    output = dry.stdout + dry.stderr
    assert dry.returncode == 0, output
    assert "train" in output and "resolve" in output
    jobs = dry_run_jobs(output)
    assert jobs.get("train") == 1 and jobs.get("predict") == 1, output
    assert "prepare" not in jobs and "split" not in jobs


@pytest.mark.slow
def test_snakemake_report_registers_the_reports_and_figures(finished_workflow):
    import zipfile

    result = snakemake(finished_workflow, "--report", "report.zip")
    assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(finished_workflow / "report.zip") as archive:
        names = archive.namelist()
    # Snakemake stores each registered file under a hashed folder.
    assert sum(n.endswith("/report.html") for n in names) >= 3, names[:20]  # + the archive's own index
    assert sum(n.endswith("/comparison.html") for n in names) == 1
    assert any(n.endswith("/confusion_matrix_normalized.png") for n in names)


def test_a_grid_expands_into_jobs_and_its_baseline_cell_reaches_the_comparison(tmp_path):
    # a dry run: losses x samplers x seeds jobs, each under results/<grid>_<loss>_<sampler>/seed<k>
    config = tiny_config()
    config["seeds"] = [0, 1]
    config["baselines"] = {"classification": "lab_ce_none"}
    config["grids"] = {"lab": {
        "dataset": "isic_tiny",
        "losses": {"ce": {"name": "ce"}, "dyn": {"name": "dynamical", "amplitude": 3.0, "cycles": 1}},
        "samplers": {"none": {"name": "none"}, "over": {"name": "oversample", "coefficients": "isic2018"}},
    }}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    dry = snakemake(tmp_path, "-n")
    output = dry.stdout + dry.stderr
    assert dry.returncode == 0, output
    jobs = dry_run_jobs(output)
    assert jobs.get("train") == (len(config["experiments"]) + 4) * 2 and jobs.get("compare") == 1, output
    for cell in ("lab_ce_none", "lab_ce_over", "lab_dyn_none", "lab_dyn_over"):
        for seed in (0, 1):
            assert f"results/{cell}/seed{seed}/run.yaml" in output, cell
    assert "classification=lab_ce_none" in output  # the compare rule's baseline


def _single_experiment_config(**train) -> dict:
    config = tiny_config()
    config["experiments"] = {"cls_ce": config["experiments"]["cls_ce"]}
    config["datasets"] = {"isic_tiny": config["datasets"]["isic_tiny"]}
    config["defaults"]["classification"]["train"] = {**config["defaults"]["classification"]["train"], **train}
    return config


@pytest.mark.slow
def test_a_training_job_given_two_gpus_runs_two_data_parallel_processes(tmp_path):
    # on this CPU machine torchrun's two processes train with the gloo backend; on a GPU node, one per GPU
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_single_experiment_config(), sort_keys=False))
    result = snakemake(tmp_path, "results/cls_ce/seed0/training_summary.json", "--set-resources", "train:gpu=2")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    assert "torchrun --standalone --nproc-per-node=2" in result.stdout + result.stderr
    summary = json.loads((tmp_path / "results/cls_ce/seed0/training_summary.json").read_text())
    assert summary["world_size"] == 2
    history = pd.read_csv(tmp_path / "results/cls_ce/seed0/history.csv")
    assert history["epoch"].tolist() == [1]  # one writer: rank 1 did not append its own rows


@pytest.mark.slow
def test_a_training_job_killed_mid_run_resumes_to_the_same_predictions(tmp_path):
    """SIGKILL the whole workflow (scheduler, training job and its loader workers) during the second
    epoch, run it again: it resumes from checkpoints/last.pt and predicts exactly what an
    uninterrupted run predicts (CPU, 2 loader workers)."""
    import signal
    import time

    import torch

    config = _single_experiment_config(epochs=4, max_train_batches=None, num_workers=2, batch_size=4)
    runs = {}
    for name in ("uninterrupted", "killed"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    reference = snakemake(tmp_path / "uninterrupted")
    assert reference.returncode == 0, reference.stdout[-4000:] + reference.stderr[-6000:]

    workdir = tmp_path / "killed"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--cores", "2"]
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    last = workdir / "results/cls_ce/seed0/checkpoints/last.pt"
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if last.is_file():
                try:
                    if torch.load(last, map_location="cpu", weights_only=True)["epoch"] >= 1:
                        break
                except Exception:  # being replaced at this instant
                    pass
            assert process.poll() is None, "the workflow ended before it could be interrupted"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # no clean-up of any kind, as a lost node
        subprocess.run(["pkill", "-9", "-f", str(workdir / "results/cls_ce/seed0/run.yaml")], check=False)
        process.wait()
    assert not (workdir / "results/cls_ce/seed0/training_summary.json").exists()  # it was stopped mid-training
    runs["killed_at_epoch"] = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert runs["killed_at_epoch"] < config["defaults"]["classification"]["train"]["epochs"]

    # what a user does after a lost node: release the lock the killed scheduler held, run again
    assert snakemake(workdir, "--unlock").returncode == 0
    again = snakemake(workdir, "--rerun-incomplete")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-6000:]
    log = (workdir / "results/cls_ce/seed0/logs/train.log").read_text()
    assert "resum" in log.lower(), log[-2000:]
    expected = pd.read_csv(tmp_path / "uninterrupted/results/cls_ce/seed0/predictions.csv")
    got = pd.read_csv(workdir / "results/cls_ce/seed0/predictions.csv")
    pd.testing.assert_frame_equal(got, expected)
    a = json.loads((tmp_path / "uninterrupted/results/cls_ce/seed0/metrics.json").read_text())
    b = json.loads((workdir / "results/cls_ce/seed0/metrics.json").read_text())
    assert a["balanced_accuracy"] == b["balanced_accuracy"]
