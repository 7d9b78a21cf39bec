"""The comparison: summary rows are metrics.json's (mean and SD over seeds), paired differences
agree with a direct recomputation from the predictions, and noise is called noise."""

from __future__ import annotations

import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, recall_score

from pipeline import rundir
from pipeline.errors import ConfigError, DataError
from pipeline.reporting import compare
from pipeline.rundir import read_metrics as load_metrics

from .conftest import ISIC_CLASSES, make_classification_runs, make_segmentation_run, write_run

SEEDS = [0, 1]
N_BOOTSTRAP = 100


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    runs = make_classification_runs(base, {"ce": 1.0, "focal": 3.0}, SEEDS)
    # "twin" predicts exactly what ce predicts: every difference must be 0 and within noise.
    for seed in SEEDS:
        predictions = pd.read_csv(base / "results" / "ce" / f"seed{seed}" / "predictions.csv")
        write_run(base / "results" / "twin" / f"seed{seed}", predictions, list(ISIC_CLASSES), ISIC_CLASSES, "twin", seed)
        runs.append(base / "results" / "twin" / f"seed{seed}")
    seg_a, _ = make_segmentation_run(base / "seg", n_test=12, experiment="dice_ce")
    seg_b, _ = make_segmentation_run(base / "seg", n_test=12, experiment="tversky", model_seed=1, p_found=0.95)
    out_csv, out_html = base / "comparison.csv", base / "comparison.html"
    compare.write_comparison(run_dirs=runs + [seg_a, seg_b], baselines={"classification": "ce"},
                             out_csv=out_csv, out_html=out_html, n_bootstrap=N_BOOTSTRAP)
    table = pd.read_csv(out_csv).set_index("experiment")
    return base, table, out_html.read_text()


def _metrics(base, experiment):
    return [load_metrics(base / "results" / experiment / f"seed{s}" / "metrics.json") for s in SEEDS]


def _predictions(base, experiment, seed):
    return pd.read_csv(base / "results" / experiment / f"seed{seed}" / "predictions.csv").sort_values("image_id")


def test_summary_is_mean_and_sd_of_stored_figures(comparison):
    base, table, _ = comparison
    for experiment in ("ce", "focal", "twin"):
        metrics = _metrics(base, experiment)
        ba = [m["balanced_accuracy"]["value"] for m in metrics]
        assert table.at[experiment, "balanced_accuracy"] == pytest.approx(np.mean(ba), abs=1e-12)
        assert table.at[experiment, "balanced_accuracy_sd"] == pytest.approx(np.std(ba, ddof=1), abs=1e-12)
        assert table.at[experiment, "ece"] == pytest.approx(np.mean([m["calibration"]["ece"] for m in metrics]), abs=1e-12)
        mel = [m["per_class"]["MEL"]["sensitivity"]["value"] for m in metrics]
        assert table.at[experiment, "sensitivity_MEL"] == pytest.approx(np.mean(mel), abs=1e-12)
        assert table.at[experiment, "n_seeds"] == len(SEEDS)


def test_best_per_column_is_marked(comparison):
    _, table, html = comparison
    classification = table[table["task"] == "classification"]
    best_ba = classification["balanced_accuracy"].idxmax()
    assert best_ba == "focal"  # the stronger simulated model
    assert classification["balanced_accuracy_best"].to_dict() == {e: e == best_ba for e in classification.index}
    best_ece = classification["ece"].idxmin()  # lower is better for calibration error
    assert classification.loc[best_ece, "ece_best"]
    rows = dict(re.findall(r'<tr data-experiment="(\w+)">(.*?)</tr>', html, flags=re.S))
    for experiment, row in rows.items():
        starred = re.search(r'<td class="num best" data-metric="balanced_accuracy"[^>]*>[^<]*<span title="best in column">', row)
        assert bool(starred) == (experiment == best_ba), experiment


def test_paired_differences_match_a_direct_recomputation(comparison):
    base, table, _ = comparison
    ba_diffs, mel_diffs = [], []
    for seed in SEEDS:
        a, b = _predictions(base, "focal", seed), _predictions(base, "ce", seed)
        assert list(a["image_id"]) == list(b["image_id"])
        ba_diffs.append(balanced_accuracy_score(a["label"], a["pred"]) - balanced_accuracy_score(b["label"], b["pred"]))
        mel_diffs.append(recall_score(a["label"] == "MEL", a["pred"] == "MEL")
                         - recall_score(b["label"] == "MEL", b["pred"] == "MEL"))
    row = table.loc["focal"]
    assert row["diff_balanced_accuracy"] == pytest.approx(np.mean(ba_diffs), abs=1e-12)
    assert row["diff_sensitivity_MEL"] == pytest.approx(np.mean(mel_diffs), abs=1e-12)
    assert row["diff_balanced_accuracy_ci_lo"] <= row["diff_balanced_accuracy"] <= row["diff_balanced_accuracy_ci_hi"]
    expected = "within noise" if row["diff_balanced_accuracy_ci_lo"] <= 0 <= row["diff_balanced_accuracy_ci_hi"] else "better"
    assert row["diff_balanced_accuracy_verdict"] == expected == "better"  # skill 3 vs 1 on 125 images
    assert math.isnan(table.at["ce", "diff_balanced_accuracy"])  # the baseline is not compared with itself


def test_identical_predictions_are_within_noise(comparison):
    _, table, html = comparison
    twin = table.loc["twin"]
    assert twin["diff_balanced_accuracy"] == 0
    assert twin["diff_balanced_accuracy_ci_lo"] == 0 and twin["diff_balanced_accuracy_ci_hi"] == 0
    assert twin["diff_balanced_accuracy_verdict"] == "within noise"
    assert ("Balanced accuracy: twin \u2212 ce = +0.0 points (95% CI +0.0 points to +0.0 points) on 125 paired test "
            "images. Within noise: the interval contains 0") in html


def test_segmentation_table_and_dice_difference(comparison):
    base, table, html = comparison
    seg = table[table["task"] == "segmentation"]
    assert list(seg.index) == ["dice_ce", "tversky"]
    assert (seg["baseline"] == "dice_ce").all()  # first segmentation experiment: none configured
    assert "first experiment listed (no baseline configured)" in html
    per_image = {e: pd.read_csv(base / "seg" / "results" / e / "seed0" / "per_image.csv").set_index("image_id")["dice"]
                 for e in ("dice_ce", "tversky")}
    assert seg.at["tversky", "diff_mean_dice"] == pytest.approx(per_image["tversky"].mean() - per_image["dice_ce"].mean(), abs=1e-12)
    for code in ("papule", "pustule", "nodule"):
        rates = []
        for experiment in ("tversky", "dice_ce"):
            lesions = pd.read_csv(base / "seg" / "results" / experiment / "seed0" / "lesions.csv")
            annotated = lesions["true_type"] == code
            rates.append((annotated & lesions["matched"] & (lesions["pred_type"] == code)).sum() / annotated.sum())
        assert seg.at["tversky", f"diff_sensitivity_{code}"] == pytest.approx(rates[0] - rates[1], abs=1e-12)
        metrics = load_metrics(base / "seg" / "results" / "tversky" / "seed0" / "metrics.json")
        assert seg.at["tversky", f"sensitivity_{code}"] == metrics["per_class"][code]["sensitivity"]["value"]


def test_baseline_resolution():
    tasks = {"classification": {"ce": None, "focal": None}, "segmentation": {"dice": None, "tversky": None}}
    assert compare.resolve_baselines(tasks, None, "focal") == {
        "classification": ("focal", "configured"),
        "segmentation": ("dice", "first experiment listed (no baseline configured)"),
    }
    assert compare.resolve_baselines(tasks, {"segmentation": "tversky"}, None)["segmentation"] == ("tversky", "configured")
    with pytest.raises(ConfigError, match="'nope' is not among the compared experiments"):
        compare.resolve_baselines(tasks, None, "nope")
    with pytest.raises(ConfigError, match="baseline for classification is 'dice'"):
        compare.resolve_baselines(tasks, {"classification": "dice"}, None)


def test_runs_on_different_test_images_are_refused(comparison, tmp_path):
    base, _, _ = comparison
    runs = []
    for experiment in ("ce", "focal"):
        target = tmp_path / "results" / experiment / "seed0"
        shutil.copytree(base / "results" / experiment / "seed0", target)
        runs.append(target)
    predictions = pd.read_csv(runs[1] / "predictions.csv")
    predictions.iloc[1:].to_csv(runs[1] / "predictions.csv", index=False)
    out_csv, out_html = tmp_path / "c.csv", tmp_path / "c.html"
    with pytest.raises(DataError, match="not evaluated on the same images"):
        compare.write_comparison(run_dirs=runs, baseline="ce", out_csv=out_csv, out_html=out_html, n_bootstrap=N_BOOTSTRAP)
    assert not out_csv.exists() and not out_html.exists()


def test_optimizer_steps_are_shown_and_a_difference_is_flagged(comparison, tmp_path):
    base, table, _ = comparison
    # runs without a training summary: steps unknown, nothing flagged
    assert not table["steps_differ_from_baseline"].any()
    steps = {"ce": 100, "twin": 100, "focal": 290}  # focal as if oversampled with epoch_size: expanded
    runs = []
    for experiment, count in steps.items():
        target = tmp_path / "results" / experiment / "seed0"
        shutil.copytree(base / "results" / experiment / "seed0", target)
        rundir.write_training_summary({"experiment": experiment, "seed": 0, "steps": count}, target)
        runs.append(target)
    out_csv, out_html = tmp_path / "c.csv", tmp_path / "c.html"
    compare.write_comparison(run_dirs=runs, baseline="ce", out_csv=out_csv, out_html=out_html, n_bootstrap=N_BOOTSTRAP)
    flagged = pd.read_csv(out_csv).set_index("experiment")
    assert flagged["steps"].to_dict() == steps
    assert flagged["steps_differ_from_baseline"].to_dict() == {"ce": False, "twin": False, "focal": True}
    html = out_html.read_text()
    cells = dict(re.findall(r'<tr data-experiment="(\w+)">.*?data-steps="(\d+)"', html, flags=re.S))
    assert cells == {e: str(n) for e, n in steps.items()}
    assert html.count('class="warning steps-differ"') == 1
    assert "focal took 290 optimizer steps, ce 100" in html


def test_grid_cells_are_compared_against_a_baseline_cell(tmp_path):
    # the config's grid expands into experiments; the baseline named in the config is a cell, and the
    # comparison ranks the other cells against it exactly as it does hand-written experiments
    from pipeline import config as cfgmod
    from pipeline.cli import baselines_of

    config = cfgmod.validate_config({
        "datasets": {"isic": {"task": "classification", "adapter": "synthetic_isic", "root": "data", "classes": ISIC_CLASSES}},
        "baselines": {"classification": "lab_ce"},
        "grids": {"lab": {"dataset": "isic", "losses": {"ce": {"name": "ce"}, "focal": {"name": "focal"}}}},
    })
    cells = list(config["experiments"])
    assert cells == ["lab_ce", "lab_focal"]
    runs = make_classification_runs(tmp_path, {"lab_ce": 1.0, "lab_focal": 3.0}, SEEDS)
    out_csv = tmp_path / "comparison.csv"
    compare.write_comparison(run_dirs=runs, baselines=baselines_of(config), out_csv=out_csv,
                             out_html=tmp_path / "comparison.html", n_bootstrap=N_BOOTSTRAP)
    table = pd.read_csv(out_csv).set_index("experiment")
    assert list(table.index) == cells and (table["baseline"] == "lab_ce").all()
    assert table.at["lab_ce", "is_baseline"] and not table.at["lab_focal", "is_baseline"]

    def mean_balanced_accuracy(experiment):
        frames = [_predictions(tmp_path, experiment, seed) for seed in SEEDS]
        return np.mean([balanced_accuracy_score(frame["label"], frame["pred"]) for frame in frames])

    expected = mean_balanced_accuracy("lab_focal") - mean_balanced_accuracy("lab_ce")
    assert table.at["lab_focal", "diff_balanced_accuracy"] == pytest.approx(expected, abs=1e-12)
