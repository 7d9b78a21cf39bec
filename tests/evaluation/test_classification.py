import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, recall_score, roc_auc_score
from torchmetrics.classification import MulticlassCalibrationError

from pipeline.errors import DataError
from pipeline.evaluation.classification import (
    align_paired_predictions,
    calibration_bins,
    compute_classification_metrics,
    operating_points,
    per_class_auc,
    write_classification_tables,
)
from pipeline.rundir import write_metrics as write_metrics_json
from tests.evaluation.test_stats import wilson_by_hand

CLASSES = ["A", "B", "C"]
#                 0    1    2    3    4    5    6    7    8    9
LABELS = ["A", "A", "A", "A", "B", "B", "B", "C", "C", "C"]
PREDS = ["A", "A", "A", "B", "B", "B", "C", "C", "A", "C"]


def make_predictions(labels, preds, classes, rng_seed=0, confidence=0.6):
    """A predictions table whose argmax is ``preds``, with varied probabilities for AUC/ECE."""
    rng = np.random.default_rng(rng_seed)
    k = len(classes)
    probs = np.zeros((len(preds), k))
    for row, pred in enumerate(preds):
        top = confidence + rng.uniform(0, 1 - confidence)
        rest = rng.dirichlet(np.ones(k - 1)) * (1 - top)
        probs[row, [i for i in range(k) if classes[i] != pred]] = rest
        probs[row, classes.index(pred)] = top
    table = pd.DataFrame({"image_id": [f"img{i:03d}" for i in range(len(preds))], "label": labels, "pred": preds})
    for i, c in enumerate(classes):
        table[f"prob_{c}"] = probs[:, i]
    return table


@pytest.fixture(scope="module")
def hand_metrics():
    return compute_classification_metrics(make_predictions(LABELS, PREDS, CLASSES), CLASSES,
                                          {"A": "Alpha", "B": "Beta", "C": "Gamma"},
                                          experiment="exp", seed=3, n_bootstrap=100)


# counts worked by hand from LABELS / PREDS above: (tp, fn, fp, tn)
HAND_COUNTS = {"A": (3, 1, 1, 5), "B": (2, 1, 1, 6), "C": (2, 1, 1, 6)}


@pytest.mark.parametrize("code", CLASSES)
def test_per_class_rates_match_hand_counts(hand_metrics, code):
    tp, fn, fp, tn = HAND_COUNTS[code]
    entry = hand_metrics["per_class"][code]
    assert entry["support"] == tp + fn and entry["predicted"] == tp + fp
    for name, (k, n) in {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp),
                         "ppv": (tp, tp + fp), "npv": (tn, tn + fn)}.items():
        assert (entry[name]["k"], entry[name]["n"]) == (k, n)
        assert entry[name]["value"] == pytest.approx(k / n)
        assert entry[name]["ci95"] == pytest.approx(list(wilson_by_hand(k, n)))
    assert entry["f1"]["value"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_headline_figures_match_hand_and_sklearn(hand_metrics):
    m = hand_metrics
    assert m["balanced_accuracy"]["value"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert m["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(LABELS, PREDS))
    assert (m["accuracy"]["k"], m["accuracy"]["n"], m["accuracy"]["value"]) == (7, 10, 0.7)
    assert m["accuracy"]["ci95"] == pytest.approx(list(wilson_by_hand(7, 10)))
    assert m["confusion_matrix"]["counts"] == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    assert m["confusion_matrix"]["labels"] == CLASSES
    assert m["per_class"]["A"]["most_confused_with"] == [{"class": "B", "count": 1}]
    assert m["per_class"]["C"]["most_confused_with"] == [{"class": "A", "count": 1}]
    assert (m["task"], m["experiment"], m["seed"], m["n_images"]) == ("classification", "exp", 3, 10)
    assert m["class_names"] == {"A": "Alpha", "B": "Beta", "C": "Gamma"}


def test_auc_from_ranks_matches_sklearn_with_ties_and_undefined_classes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=200)
    y[y == 2] = 1  # class 2 never occurs: no positives, AUC undefined
    probs = rng.dirichlet(np.ones(4), size=200)
    probs[:50, 0] = 0.25  # ties within and across classes
    probs = np.round(probs, 2)
    auc = per_class_auc(y, probs)
    for k in (0, 1, 3):
        if (y == k).any():
            assert auc[k] == pytest.approx(roc_auc_score(y == k, probs[:, k]), abs=1e-12)
    assert np.isnan(auc[2]) and np.isnan(auc[3])  # class 3: no positives either
    assert np.isnan(per_class_auc(np.zeros(5, dtype=int), probs[:5])).all()  # one class only: no negatives


def test_auc_matches_sklearn_ovr(hand_metrics):
    table = make_predictions(LABELS, PREDS, CLASSES)
    probs = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
    expected_macro = roc_auc_score(table["label"], probs, multi_class="ovr", average="macro", labels=CLASSES)
    assert hand_metrics["macro_auc"]["value"] == pytest.approx(expected_macro)
    for i, c in enumerate(CLASSES):
        assert hand_metrics["per_class"][c]["auc"]["value"] == pytest.approx(
            roc_auc_score(table["label"] == c, probs[:, i]))


def test_bootstrap_cis_are_deterministic_and_contain_estimates():
    rng = np.random.default_rng(4)
    labels = list(rng.choice(CLASSES, 120, p=[0.6, 0.3, 0.1]))
    preds = [lab if rng.random() < 0.7 else rng.choice(CLASSES) for lab in labels]
    table = make_predictions(labels, preds, CLASSES, rng_seed=1)
    first = compute_classification_metrics(table, CLASSES, n_bootstrap=150, bootstrap_seed=5)
    again = compute_classification_metrics(table, CLASSES, n_bootstrap=150, bootstrap_seed=5)
    other = compute_classification_metrics(table, CLASSES, n_bootstrap=150, bootstrap_seed=6)
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
    assert first["balanced_accuracy"]["ci95"] != other["balanced_accuracy"]["ci95"]
    estimates = [first["balanced_accuracy"], first["macro_auc"]]
    estimates += [first["per_class"][c][m] for c in CLASSES for m in ("f1", "auc")]
    for estimate in estimates:
        lo, hi = estimate["ci95"]
        assert lo <= estimate["value"] <= hi and lo < hi


def test_class_absent_from_test_set_is_nan_and_excluded():
    classes = CLASSES + ["D"]
    preds = PREDS[:-1] + ["D"]  # one image predicted as D, which no image truly is
    table = make_predictions(LABELS, preds, classes)
    m = compute_classification_metrics(table, classes, n_bootstrap=50)
    d = m["per_class"]["D"]
    assert d["support"] == 0 and d["predicted"] == 1
    for name in ("sensitivity", "f1", "auc"):
        assert math.isnan(d[name]["value"])
    assert math.isnan(d["sens_at_95_spec"]["value"]) and m["roc"]["D"] is None
    assert (d["specificity"]["k"], d["specificity"]["n"]) == (9, 10)
    assert (d["ppv"]["k"], d["ppv"]["n"]) == (0, 1)
    assert m["macro_auc"]["excluded_classes"] == ["D"] == m["balanced_accuracy"]["excluded_classes"]
    assert m["balanced_accuracy"]["value"] == pytest.approx(
        recall_score(LABELS, preds, labels=CLASSES, average="macro"))
    probs = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
    assert m["macro_auc"]["value"] == pytest.approx(
        np.mean([roc_auc_score(np.array(LABELS) == c, probs[:, i]) for i, c in enumerate(CLASSES)]))
    normalized = m["confusion_matrix"]["normalized"]
    assert all(math.isnan(v) for v in normalized[3])
    assert np.allclose(np.sum(normalized[:3], axis=1), 1)


def test_operating_points_hand_example():
    negatives = np.arange(20) / 100  # 0.00 .. 0.19
    positives = np.array([0.055, 0.185, 0.5, 0.9])
    score = np.r_[negatives, positives]
    positive = np.r_[np.zeros(20, bool), np.ones(4, bool)]
    points = operating_points(positive, score)
    # at threshold 0.185 one negative (0.19) is called positive: spec 19/20, sensitivity 3/4;
    # a lower threshold lets in 0.18 too (spec 0.9 < 0.95)
    assert points["sens_at_95_spec"] == {"value": 0.75, "specificity": 0.95, "threshold": 0.185}
    # all four positives need threshold 0.055: negatives 0.06..0.19 (14) are false positives
    assert points["spec_at_95_sens"]["value"] == pytest.approx(6 / 20)
    assert points["spec_at_95_sens"]["sensitivity"] == 1.0
    assert points["spec_at_95_sens"]["threshold"] == 0.055


def test_calibration_hand_example():
    result = calibration_bins(np.array([0.9, 0.9, 0.3, 0.35]), np.array([1, 0, 1, 0]))
    # bins of width 1/15: 0.9 -> bin 13 (acc 0.5), 0.3 -> bin 4 (acc 1), 0.35 -> bin 5 (acc 0)
    assert result["ece"] == pytest.approx(0.4 * 2 / 4 + 0.7 / 4 + 0.35 / 4)
    counts = [b["count"] for b in result["bins"]]
    assert len(counts) == 15 and counts[13] == 2 and counts[4] == 1 and counts[5] == 1 and sum(counts) == 4
    assert result["bins"][0]["confidence"] != result["bins"][0]["confidence"]  # empty bin: NaN


def test_ece_matches_torchmetrics():
    rng = np.random.default_rng(2)
    labels = list(rng.choice(CLASSES, 300))
    preds = [lab if rng.random() < 0.6 else rng.choice(CLASSES) for lab in labels]
    table = make_predictions(labels, preds, CLASSES, confidence=0.5)  # pred is the argmax, as torchmetrics assumes
    m = compute_classification_metrics(table, CLASSES, n_bootstrap=10)
    probs = torch.tensor(table[[f"prob_{c}" for c in CLASSES]].to_numpy(), dtype=torch.float64)
    target = torch.tensor([CLASSES.index(lab) for lab in labels])
    expected = MulticlassCalibrationError(num_classes=3, n_bins=15, norm="l1")(probs, target)
    assert m["calibration"]["ece"] == pytest.approx(float(expected), abs=1e-6)


def test_roc_points_come_from_roc_curve(hand_metrics):
    for c in CLASSES:
        curve = hand_metrics["roc"][c]
        assert curve["fpr"][0] == 0 and curve["tpr"][-1] == 1 and len(curve["fpr"]) == len(curve["tpr"])
        assert np.all(np.diff(curve["fpr"]) >= 0)


def test_metrics_json_round_trip_agrees_with_recomputation(tmp_path):
    rng = np.random.default_rng(9)
    labels = list(rng.choice(CLASSES, 80, p=[0.5, 0.3, 0.2]))
    preds = [lab if rng.random() < 0.65 else rng.choice(CLASSES) for lab in labels]
    make_predictions(labels, preds, CLASSES, rng_seed=3).to_csv(tmp_path / "predictions.csv", index=False)

    table = pd.read_csv(tmp_path / "predictions.csv")
    write_metrics_json(compute_classification_metrics(table, CLASSES, n_bootstrap=50), tmp_path / "metrics.json")
    loaded = json.loads((tmp_path / "metrics.json").read_text())

    fresh = pd.read_csv(tmp_path / "predictions.csv")
    y, p = fresh["label"], fresh["pred"]
    probs = fresh[[f"prob_{c}" for c in CLASSES]].to_numpy()
    assert loaded["confusion_matrix"]["counts"] == confusion_matrix(y, p, labels=CLASSES).tolist()
    assert loaded["accuracy"]["value"] == pytest.approx(float(np.mean(y == p)))
    assert loaded["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, p))
    assert loaded["macro_auc"]["value"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", labels=CLASSES))
    f1 = f1_score(y, p, labels=CLASSES, average=None)
    sens = recall_score(y, p, labels=CLASSES, average=None)
    for i, c in enumerate(CLASSES):
        assert loaded["per_class"][c]["f1"]["value"] == pytest.approx(f1[i])
        assert loaded["per_class"][c]["sensitivity"]["value"] == pytest.approx(sens[i])


def test_tables_are_read_from_the_metrics(tmp_path, hand_metrics):
    paths = write_classification_tables(hand_metrics, tmp_path)
    assert sorted(p.name for p in paths) == sorted(p.name for p in tmp_path.iterdir())
    counts = pd.read_csv(tmp_path / "confusion_matrix.csv", index_col=0)
    assert counts.loc["A", "B"] == 1 and list(counts.columns) == CLASSES and list(counts.index) == CLASSES
    normalized = pd.read_csv(tmp_path / "confusion_matrix_normalized.csv", index_col=0)
    assert normalized.loc["A", "A"] == pytest.approx(0.75)
    per_class = pd.read_csv(tmp_path / "per_class.csv")
    row = per_class.set_index("class").loc["B"]
    assert row["name"] == "Beta" and row["sensitivity"] == pytest.approx(2 / 3)
    assert row["sensitivity_ci_lo"] == pytest.approx(wilson_by_hand(2, 3)[0])
    # the same tables from metrics.json as reloaded (nulls) work too
    write_metrics_json(hand_metrics, tmp_path / "metrics.json")
    write_classification_tables(json.loads((tmp_path / "metrics.json").read_text()), tmp_path / "again")
    assert (tmp_path / "again" / "per_class.csv").read_text() == (tmp_path / "per_class.csv").read_text()


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda t: t.drop(columns=["prob_B"]), "prob_B"),
        (lambda t: t.assign(label=t["label"].where(t.index != 4, "Z")), "row 5 (image_id 'img004')"),
        (lambda t: t.assign(pred=t["pred"].where(t.index != 2, None)), "'pred' is empty/NaN"),
        (lambda t: t.assign(prob_A=t["prob_A"].where(t.index != 1, np.nan)), "prob_A"),
        (lambda t: t.assign(prob_A=t["prob_A"] * 0.5), "sum to"),
        (lambda t: t.assign(prob_A=t["prob_A"] + 0.6), "not a probability"),
        (lambda t: t.assign(image_id="same"), "duplicate image_id"),
        (lambda t: t.iloc[:0], "no rows"),
    ],
)
def test_bad_predictions_raise_data_error(change, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compute_classification_metrics(change(make_predictions(LABELS, PREDS, CLASSES)), CLASSES, n_bootstrap=5)


def test_unknown_class_name_code_is_rejected():
    with pytest.raises(DataError, match="class_names"):
        compute_classification_metrics(make_predictions(LABELS, PREDS, CLASSES), CLASSES, {"Q": "?"}, n_bootstrap=5)


def test_align_paired_predictions():
    a = make_predictions(LABELS, PREDS, CLASSES)
    b = a.sample(frac=1, random_state=0)
    left, right = align_paired_predictions(a, b)
    assert left["image_id"].tolist() == right["image_id"].tolist()
    with pytest.raises(DataError, match="same images"):
        align_paired_predictions(a, b.iloc[1:])
    with pytest.raises(DataError, match="true label"):
        align_paired_predictions(a, b.assign(label="A"))


def test_per_class_auc_matches_sklearn_and_marks_undefined_classes():
    rng = np.random.default_rng(8)
    y = rng.choice([0, 1, 3], 60)  # class 2 absent
    probs = rng.dirichlet(np.ones(4), 60)
    aucs = per_class_auc(y, probs)
    for k in (0, 1, 3):
        assert aucs[k] == pytest.approx(roc_auc_score(y == k, probs[:, k]))
    assert math.isnan(aucs[2])
    assert np.all(np.isnan(per_class_auc(np.zeros(5, dtype=np.int64), probs[:5])))


# --- operating thresholds chosen on validation, applied to test (issue 10)
def test_validation_operating_points_apply_the_validation_threshold_to_test():
    from pipeline.evaluation.classification import validation_operating_points

    # validation: 20 negatives scored 0.00..0.19 and 5 positives 0.15..0.35. At 95% specificity (at
    # most 1 false positive of 20) the best sensitivity is 4/5, at thresholds 0.19 and 0.2; the tie
    # goes to the better specificity: 0.2 (no false positive)
    val_positive = np.r_[np.zeros(20, bool), np.ones(5, bool)]
    val_score = np.r_[np.arange(20) / 100, [0.15, 0.2, 0.25, 0.3, 0.35]]
    test_positive = np.r_[np.zeros(10, bool), np.ones(4, bool)]
    test_score = np.r_[[0.0, 0.05, 0.1, 0.12, 0.15, 0.18, 0.21, 0.24, 0.27, 0.3], [0.1, 0.2, 0.3, 0.4]]
    points = validation_operating_points(val_positive, val_score, test_positive, test_score)
    chosen = points["sens_at_95_spec"]
    assert points["chosen_on"] == "val"
    assert chosen["threshold"] == pytest.approx(0.2)
    assert chosen["val_sensitivity"] == pytest.approx(4 / 5) and chosen["val_specificity"] == 1.0
    called = test_score >= 0.2
    assert chosen["sensitivity"]["k"] == int((called & test_positive).sum()) == 3
    assert chosen["sensitivity"]["n"] == 4
    assert chosen["specificity"]["k"] == int((~called & ~test_positive).sum()) == 6
    lo, hi = chosen["sensitivity"]["ci95"]
    assert lo < 0.75 < hi
    # 95% sensitivity on validation: every positive caught, threshold 0.15
    assert points["spec_at_95_sens"]["threshold"] == pytest.approx(0.15)
    assert points["spec_at_95_sens"]["sensitivity"]["k"] == int(((test_score >= 0.15) & test_positive).sum())


def test_a_class_missing_from_validation_has_no_chosen_operating_point():
    from pipeline.evaluation.classification import validation_operating_points

    points = validation_operating_points(np.zeros(5, bool), np.linspace(0, 1, 5), np.r_[True, False], np.r_[0.9, 0.1])
    assert math.isnan(points["sens_at_95_spec"]["sensitivity"]["value"])
    assert math.isnan(points["spec_at_95_sens"]["specificity"]["value"])


# --- per-subgroup sensitivity (issue 10)
def test_subgroup_sensitivity_counts_each_subgroup_and_flags_small_ones():
    from pipeline.evaluation.classification import subgroup_sensitivity

    y_true = np.array([0] * 12 + [1] * 4 + [0] * 3)
    y_pred = np.array([0] * 9 + [1] * 3 + [1] * 2 + [0] * 2 + [0, 0, 1])
    metadata = pd.DataFrame({"sex": ["female"] * 16 + ["male"] * 3,
                             "age": [25] * 8 + [55] * 8 + [None, 80, 81]})
    out = subgroup_sensitivity(y_true, y_pred, metadata, ["MEL", "NV"])
    female = out["sex"]["female"]
    assert female["n_images"] == 16
    assert (female["per_class"]["MEL"]["k"], female["per_class"]["MEL"]["n"]) == (9, 12)
    assert not female["per_class"]["MEL"]["too_small"] and female["per_class"]["NV"]["too_small"]
    assert (out["sex"]["male"]["per_class"]["MEL"]["k"], out["sex"]["male"]["per_class"]["MEL"]["n"]) == (2, 3)
    assert list(out["age"]) == ["< 30", "50–69", "≥ 70"]  # bands in order; a missing age forms no band
    assert out["age"]["≥ 70"]["n_images"] == 2
    lo, hi = female["per_class"]["MEL"]["ci95"]
    assert lo < 0.75 < hi
    assert subgroup_sensitivity(y_true, y_pred, pd.DataFrame(index=range(19)), ["MEL", "NV"]) == {}
