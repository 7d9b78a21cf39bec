"""The per-experiment report: its figures are metrics.json's, they agree with an independent
recomputation from predictions.csv, labels are escaped, and bad input fails loudly."""

from __future__ import annotations

import hashlib
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score

from pipeline.errors import DataError
from pipeline.reporting.html import write_experiment_report

from .conftest import make_classification_run, make_segmentation_run


class ReportParser(HTMLParser):
    """Collects data-metric/data-value cells (keyed by the enclosing row's data-class), caption
    list items by data-class, section ids, table rows by table id, and image sources."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[tuple[str | None, str], str] = {}
        self.captions: dict[str, str] = {}
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._row_class: str | None = None
        self._li_class: str | None = None
        self._text: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "table":
            self._table = attrs.get("id")
            if self._table:
                self.tables[self._table] = []
        if tag == "tr":
            self._row_class = attrs.get("data-class")
            if self._table:
                self.tables[self._table].append([])
        if tag == "td" and self._table:
            self._cell = []
        if "data-metric" in attrs and "data-value" in attrs:
            self.values[(self._row_class, attrs["data-metric"])] = attrs["data-value"]
        if tag == "li" and "data-class" in attrs:
            self._li_class, self._text = attrs["data-class"], []
        if tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "li" and self._li_class:
            self.captions[self._li_class] = "".join(self._text).strip()
            self._li_class = None
        if tag == "td" and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr":
            self._row_class = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._li_class:
            self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def as_float(text: str) -> float:
    return float(text) if text else float("nan")


def same(shown: str, stored: float | None) -> bool:
    """The report's raw value is exactly the stored one (null/NaN shown as empty)."""
    return (shown == "") if stored is None or stored != stored else float(shown) == stored


# ----------------------------------------------------------------------------- classification
def test_every_figure_is_the_one_in_metrics_json(classification_report):
    run_dir, _, out = classification_report
    metrics = json.loads((run_dir / "metrics.json").read_text())
    report = parse(out)
    assert same(report.values[(None, "balanced_accuracy")], metrics["balanced_accuracy"]["value"])
    assert same(report.values[(None, "macro_auc")], metrics["macro_auc"]["value"])
    assert same(report.values[(None, "ece")], metrics["calibration"]["ece"])
    for code, stats in metrics["per_class"].items():
        assert int(report.values[(code, "support")]) == stats["support"]
        for key in ("sensitivity", "specificity", "ppv", "npv", "f1", "auc", "sens_at_95_spec", "spec_at_95_sens"):
            assert same(report.values[(code, key)], stats[key]["value"]), (code, key)


def test_report_agrees_with_a_recomputation_from_predictions(classification_report):
    run_dir, config, out = classification_report
    predictions = pd.read_csv(run_dir / "predictions.csv")
    report = parse(out)
    y, pred = predictions["label"], predictions["pred"]
    assert as_float(report.values[(None, "balanced_accuracy")]) == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert int(report.values[(None, "n_images")]) == len(predictions)
    for code in config["dataset"]["classes"]:
        positive = y == code
        assert int(report.values[(code, "support")]) == positive.sum()
        assert as_float(report.values[(code, "sensitivity")]) == pytest.approx(recall_score(positive, pred == code), abs=1e-12)
        assert as_float(report.values[(code, "specificity")]) == pytest.approx(recall_score(~positive, pred != code), abs=1e-12)
        # the report prints the AUC rounded: agreement to its printed digits
        assert as_float(report.values[(code, "auc")]) == pytest.approx(roc_auc_score(positive, predictions[f"prob_{code}"]), abs=1e-6)


def test_class_captions_match_the_predictions(classification_report):
    run_dir, config, out = classification_report
    predictions = pd.read_csv(run_dir / "predictions.csv")
    report = parse(out)
    names = config["dataset"]["class_names"]
    table = pd.crosstab(predictions["label"], predictions["pred"])
    for code in config["dataset"]["classes"]:
        caption = report.captions[code]
        support = int((predictions["label"] == code).sum())
        found = int(table.at[code, code]) if code in table.columns else 0
        assert caption.startswith(f"Of {support} {names[code]} ({code}) images, {found} were recognised")
        errors = table.loc[code].drop(code, errors="ignore")
        if errors.max() > 0:  # the first confusion named is the most frequent one, with its count
            match = re.search(r"; (\d+) (?:was|were) called .+? \((\w+)\)", caption)
            assert match, caption
            assert int(match.group(1)) == errors.max() == errors[match.group(2)], caption


def test_data_section_counts_come_from_the_manifest(classification_report):
    _, config, out = classification_report
    manifest = pd.read_csv(config["dataset"]["manifest"])
    expected = pd.crosstab(manifest["label"], manifest["split"])
    rows = parse(out).tables["class-counts"]
    names = config["dataset"]["class_names"]
    for row in rows[1:]:  # the header row has no td cells
        code = next(c for c in names if row[0] == f"{names[c]} ({c})")
        assert [int(v) for v in row[1:4]] == [expected.at[code, s] for s in ("train", "val", "test")]
        assert int(row[4]) == expected.loc[code].sum()
    text = out.read_text()
    train = manifest[manifest["split"] == "train"]["label"].value_counts()
    assert f"{train.max() / train.min():.1f} : 1 (training images)" in text
    assert "Split grouped by</dt><dd>lesion" in text


def test_gallery_shows_the_most_confidently_wrong_image_first(classification_report):
    run_dir, _, out = classification_report
    predictions = pd.read_csv(run_dir / "predictions.csv")
    wrong = predictions[predictions["label"] != predictions["pred"]].copy()
    wrong["confidence"] = [row[f"prob_{row['pred']}"] for _, row in wrong.iterrows()]
    expected = wrong.sort_values("confidence", ascending=False).iloc[0]
    first = parse(out).tables["gallery_wrong-table"][1]
    assert first[0] == expected["image_id"]
    assert first[3] == f"{expected['confidence']:.2f}"


def test_report_is_self_contained_with_provenance(classification_report):
    run_dir, config, out = classification_report
    text = out.read_text()
    report = parse(out)
    assert report.images and all(src.startswith("data:image/png;base64,") for src in report.images)
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert "Content-Security-Policy" in text
    for section in ("summary", "data", "per-class", "confusion", "roc", "calibration", "cases", "provenance"):
        assert section in report.ids
    checkpoint = hashlib.sha256((run_dir / "checkpoints" / "best.pt").read_bytes()).hexdigest()
    manifest = hashlib.sha256(Path(config["dataset"]["manifest"]).read_bytes()).hexdigest()
    assert checkpoint in text and manifest in text
    assert "0.1.0+test" in text
    figures = sorted(p.name for p in (run_dir / "figures").iterdir())
    assert figures == sorted(["class_counts.png", "confusion_matrix_counts.png", "confusion_matrix_normalized.png",
                              "roc_curves.png", "reliability_diagram.png", "gallery_wrong.png", "gallery_tie.png"])


def test_labels_and_config_strings_are_escaped(xss_report):
    text = xss_report.read_text()
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; (MEL)" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(2)&gt;" in text
    assert "Nevus &amp; co" in text


# ----------------------------------------------------------------------------- bad input
def test_missing_metrics_is_a_clear_error_and_writes_nothing(tmp_path):
    run_dir, config = make_classification_run(tmp_path, names={"MEL": "Melanoma", "NV": "Nevus"})
    (run_dir / "metrics.json").unlink()
    out = run_dir / "report.html"
    with pytest.raises(DataError, match=r"metrics\.json: metrics file not found"):
        write_experiment_report(run_dir=run_dir, config=config, out_path=out)
    assert not out.exists()


def test_class_list_mismatch_and_bad_predictions_are_errors(tmp_path):
    run_dir, config = make_classification_run(tmp_path, names={"MEL": "Melanoma", "NV": "Nevus"})
    swapped = {**config, "dataset": {**config["dataset"], "classes": ["NV", "MEL"]}}
    with pytest.raises(DataError, match="differ from the config's class list"):
        write_experiment_report(run_dir=run_dir, config=swapped, out_path=run_dir / "r.html")
    predictions = pd.read_csv(run_dir / "predictions.csv").drop(columns=["prob_NV"])
    predictions.to_csv(run_dir / "predictions.csv", index=False)
    with pytest.raises(DataError, match=r"predictions\.csv: missing column\(s\) \['prob_NV'\]"):
        write_experiment_report(run_dir=run_dir, config=config, out_path=run_dir / "r.html")
    assert not (run_dir / "r.html").exists()


def test_unreadable_test_image_is_reported_not_hidden(tmp_path):
    run_dir, config = make_classification_run(tmp_path, names={"MEL": "Melanoma", "NV": "Nevus"})
    predictions = pd.read_csv(run_dir / "predictions.csv")
    tie = predictions.assign(margin=(predictions["prob_MEL"] - predictions["prob_NV"]).abs()).sort_values(
        ["margin", "image_id"]).iloc[0]
    image = Path(config["dataset"]["root"]) / "img" / f"{tie['image_id']}.png"
    image.unlink()
    out = write_experiment_report(run_dir=run_dir, config=config, out_path=run_dir / "report.html")
    text = out.read_text()
    assert "1 test image(s) could not be read" in text and str(image) in text


# ----------------------------------------------------------------------------- segmentation
@pytest.fixture(scope="module")
def segmentation_report(tmp_path_factory):
    run_dir, config = make_segmentation_run(tmp_path_factory.mktemp("segrun"))
    out = write_experiment_report(run_dir=run_dir, config=config, out_path=run_dir / "report.html")
    return run_dir, config, out


def test_segmentation_report_shows_grading_from_metrics(segmentation_report):
    run_dir, _, out = segmentation_report
    grading = json.loads((run_dir / "metrics.json").read_text())["grading"]
    report = parse(out)
    assert "grading" in report.ids
    assert same(report.values[(None, "grade_accuracy")], grading["accuracy"]["value"])
    assert same(report.values[(None, "grade_count_mae")], grading["count_mae"])
    text = out.read_text()
    assert grading["reference"] == "graded from annotated counts"  # this manifest has no grade column
    assert f"in {grading['accuracy']['k']} of {grading['accuracy']['n']} images" in text
    for label in grading["confusion_matrix"]["labels"]:
        assert html.escape(label, quote=False) in text


def test_grading_table_escapes_labels():
    from pipeline.reporting.html import environment, grading_section

    block = {"accuracy": {"value": 0.5, "ci95": [0.1, 0.9], "k": 1, "n": 2}, "kappa": {"value": float("nan")},
             "count_mae": 1.0, "spearman": {"value": 0.5}, "reference": "annotated grade",
             "confusion_matrix": {"labels": ["<b>mild</b>", "severe & worse"], "counts": [[1, 1], [0, 0]]}}
    section = grading_section(block)
    assert "Most frequent miss: <b>mild</b> graded severe & worse (1 image)." in section["caption"]
    template = "{% for row in g.rows %}<th>{{ row.label }}</th>{% endfor %}<p>{{ g.caption }}</p>"

    text = environment().from_string(template).render(g=section)
    assert "&lt;b&gt;mild&lt;/b&gt;" in text and "<b>" not in text and "severe &amp; worse" in text


def test_grading_section_shows_the_calibrated_and_the_found_figures():
    from pipeline.evaluation.instances import fit_count_calibration, grading_metrics
    from pipeline.reporting.html import grading_section

    annotated = [1, 3, 8, 15, 30, 60]
    found = [2 * n for n in annotated]
    calibration = fit_count_calibration(found, annotated, "linear")
    block, _, _ = grading_metrics(annotated, found, [None] * 6, n_bootstrap=50, count_calibration=calibration)
    section = grading_section(block)
    cards = {card["key"]: card for card in section["cards"]}
    assert same(cards["grade_accuracy"]["value"], 1.0) and same(cards["grade_accuracy_found"]["value"], 0.5)
    assert same(cards["grade_count_mae_found"]["value"], block["found"]["count_mae"])
    assert "calibrated on validation" in section["caption"] and "uncalibrated: 50%" in section["caption"]
    assert "fitted on 6 validation images" in section["rule"]
    plain = grading_section(grading_metrics(annotated, found, [None] * 6, n_bootstrap=50)[0])
    assert "grade_accuracy_found" not in {card["key"] for card in plain["cards"]}
    assert "calibrated" not in plain["caption"] and "number of lesions found" in plain["rule"]


def test_segmentation_report_matches_metrics_and_lesion_table(segmentation_report):
    run_dir, config, out = segmentation_report
    metrics = json.loads((run_dir / "metrics.json").read_text())
    lesions = pd.read_csv(run_dir / "lesions.csv")
    report = parse(out)
    assert same(report.values[(None, "mean_dice")], metrics["mean_dice"]["value"])
    for code, stats in metrics["per_class"].items():
        for key in ("dice", "iou", "sensitivity", "ppv", "detected_any_type"):
            assert same(report.values[(code, key)], stats[key]["value"]), (code, key)
        # independent recount from lesions.csv
        annotated = lesions["true_type"] == code
        found = annotated & lesions["matched"] & (lesions["pred_type"] == code)
        assert int(report.values[(code, "support")]) == annotated.sum()
        assert int(report.values[(code, "predicted")]) == (lesions["pred_type"] == code).sum()
        name = config["dataset"]["class_names"][code]
        assert report.captions[code].startswith(f"Of {annotated.sum()} annotated {name} lesions, {found.sum()} ")
        missed = int((annotated & ~lesions["matched"]).sum())
        if missed:
            assert f"{missed} {'was' if missed == 1 else 'were'} missed" in report.captions[code]
    text = out.read_text()
    assert "Labels are box-derived" in text
    per_image = pd.read_csv(run_dir / "per_image.csv").sort_values(["dice", "image_id"], ascending=[False, True])
    assert f"Best test image by Dice: {per_image.iloc[0]['image_id']} (Dice {per_image.iloc[0]['dice']:.2f})" in text
    assert f"Worst test image by Dice: {per_image.iloc[-1]['image_id']}" in text
    for section in ("per-type", "lesion-confusion", "overlays", "provenance"):
        assert section in report.ids
    assert np.all([src.startswith("data:image/png;base64,") for src in report.images])


def test_report_shows_the_fitted_logit_offsets_only_when_the_run_has_them(classification_report, tmp_path):
    from pipeline import rundir

    _, _, plain = classification_report
    assert "logit-offsets" not in parse(plain).ids
    run_dir, config = make_classification_run(tmp_path)
    classes = config["dataset"]["classes"]
    offsets = [0.25 * i - 0.75 for i in range(len(classes))]
    rundir.write_logit_offsets({"method": "fit_val", "split": "val", "n_images": 42, "classes": classes,
                                "offsets": offsets, "val_balanced_accuracy": {"before": 0.5, "after": 0.625}}, run_dir)
    out = write_experiment_report(run_dir=run_dir, config=config, out_path=tmp_path / "report.html")
    rows = parse(out).tables["logit-offsets"]
    names = config["dataset"]["class_names"]
    assert [row[1] for row in rows[1:]] == [f"{o:+.3f}" for o in offsets]
    assert all(row[0].startswith(names[c]) for row, c in zip(rows[1:], classes))
    text = out.read_text(encoding="utf-8")
    assert "fitted on the 42 validation images only" in text and "50.0% without them, 62.5% with them" in text


def test_operating_points_use_the_thresholds_chosen_on_validation(tmp_path):
    """With validation predictions the table shows test rates at validation thresholds, labelled so."""
    from pipeline.evaluation.classification import compute_classification_metrics
    from pipeline.reporting.html import write_experiment_report
    from tests.reporting.conftest import make_classification_run, random_predictions, write_metrics_json

    run_dir, config = make_classification_run(tmp_path)
    classes = config["dataset"]["classes"]
    manifest = pd.read_csv(config["dataset"]["manifest"])
    val = random_predictions(manifest[manifest["split"] == "val"].reset_index(drop=True), classes,
                             np.random.default_rng(1))
    metrics = compute_classification_metrics(pd.read_csv(run_dir / "predictions.csv"), classes,
                                             config["dataset"]["class_names"], n_bootstrap=50, val_predictions=val)
    write_metrics_json(metrics, run_dir / "metrics.json")
    out = write_experiment_report(run_dir=run_dir, config=config, out_path=run_dir / "report.html",
                                  figures_dir=run_dir / "figures")
    report = parse(out)
    html = out.read_text()
    assert "threshold set on validation for 95% specificity" in html
    assert "test ROC" not in html
    for code, stats in metrics["per_class"].items():
        chosen = stats["operating_points_val"]
        assert same(report.values[(code, "test_sens_at_val_threshold")], chosen["sens_at_95_spec"]["sensitivity"]["value"])
        assert same(report.values[(code, "test_spec_at_val_threshold")], chosen["spec_at_95_sens"]["specificity"]["value"])
        assert (code, "sens_at_95_spec") not in report.values


def test_learning_curves_show_the_history_and_the_loss_weights(tmp_path):
    from pipeline.reporting.html import write_experiment_report
    from tests.reporting.conftest import make_classification_run

    run_dir, config = make_classification_run(tmp_path)
    out = write_experiment_report(run_dir=run_dir, config=config, out_path=run_dir / "a.html")
    assert 'id="training"' not in out.read_text()  # no history.csv: no section
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.2, 0.8, 0.7], "val_balanced_accuracy": [0.4, 0.6, 0.55],
                  "lr": [1e-3] * 3, "seconds": [1.0] * 3}).to_csv(run_dir / "history.csv", index=False)
    (run_dir / "training_summary.json").write_text(json.dumps({"best_epoch": 2, "steps": 30}))
    classes = config["dataset"]["classes"]
    weights = pd.DataFrame({"step": range(30), **{f"w{i}": np.linspace(0.5, 1.5, 30) for i in range(len(classes))}})
    weights.to_csv(run_dir / "loss_weights.csv", index=False)
    out = write_experiment_report(run_dir=run_dir, config=config, out_path=run_dir / "b.html",
                                  figures_dir=run_dir / "figures")
    text = out.read_text()
    assert 'id="training"' in text and "epoch 2 (dashed line)" in text and "per-class weights" in text
    assert (run_dir / "figures" / "learning_curves.png").stat().st_size > 1000


def test_subgroup_tables_show_the_stored_sensitivities(tmp_path):
    from pipeline.evaluation.classification import compute_classification_metrics
    from pipeline.reporting.html import write_experiment_report
    from tests.reporting.conftest import make_classification_run, write_metrics_json

    run_dir, config = make_classification_run(tmp_path)
    predictions = pd.read_csv(run_dir / "predictions.csv")
    metadata = pd.DataFrame({"sex": np.where(np.arange(len(predictions)) % 2, "male", "female"),
                             "age": np.linspace(20, 85, len(predictions))})
    metrics = compute_classification_metrics(predictions, config["dataset"]["classes"], config["dataset"]["class_names"],
                                             n_bootstrap=20, metadata=metadata)
    write_metrics_json(metrics, run_dir / "metrics.json")
    html = write_experiment_report(run_dir=run_dir, config=config, out_path=run_dir / "r.html").read_text()
    assert 'id="subgroups"' in html and 'data-attribute="age"' in html
    mel = metrics["subgroups"]["sex"]["female"]["per_class"]["MEL"]
    assert f'data-class="MEL" data-value="{mel["value"]!r}"' in html
    n_small = sum(c["too_small"] for t in metrics["subgroups"].values() for g in t.values() for c in g["per_class"].values())
    assert html.count('class="num small"') == n_small > 0
