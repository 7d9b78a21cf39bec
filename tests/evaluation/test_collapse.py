"""The lazy-network flags: a class never predicted, or nearly everything sent to one class; computed
once in evaluation, shown at the top of the run's report and beside the experiment in the comparison."""

import numpy as np
import pandas as pd

from pipeline.evaluation.classification import compute_classification_metrics
from pipeline.evaluation.collapse import collapse_text, prediction_collapse
from pipeline.reporting import compare
from pipeline.reporting.html import write_experiment_report
from tests.reporting.conftest import ISIC_CLASSES, make_classification_run, make_classification_runs, write_run


def test_a_class_never_predicted_and_a_dominant_class_are_flagged():
    lazy = prediction_collapse(["NV", "MEL", "DF"], support=[70, 20, 10], predicted=[95, 5, 0])
    assert lazy["flagged"] and lazy["never_predicted"] == ["DF"]
    assert lazy["dominant"] == {"class": "NV", "predicted_share": 0.95, "true_share": 0.7}
    assert collapse_text(lazy, {"DF": "Dermatofibroma"}) == (
        "This model never predicts Dermatofibroma (10 test images) and calls 95% of the test images NV "
        "(truly 70%): it has given up on the classes it misses.")
    # 95% predicted where 90% are true is not a collapse, nor is a class absent from the test split
    assert not prediction_collapse(["NV", "MEL", "DF"], [90, 10, 0], [95, 5, 0])["flagged"]
    assert collapse_text(prediction_collapse(["NV", "MEL"], [50, 50], [60, 40])) == ""


def test_metrics_flag_a_majority_only_classifier():
    classes = ["NV", "MEL", "DF"]
    labels = ["NV"] * 14 + ["MEL"] * 4 + ["DF"] * 2
    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(20)], "label": labels, "pred": ["NV"] * 20,
                          "prob_NV": 0.8, "prob_MEL": 0.15, "prob_DF": 0.05})
    collapse = compute_classification_metrics(frame, classes, n_bootstrap=20)["collapse"]
    assert collapse["never_predicted"] == ["MEL", "DF"] and collapse["dominant"]["class"] == "NV"


def test_the_report_and_the_comparison_show_the_flag(tmp_path):
    run_dir, config = make_classification_run(tmp_path / "one")
    predictions = pd.read_csv(run_dir / "predictions.csv")
    lazy = predictions.assign(pred="NV")  # everything called a nevus
    write_run(run_dir, lazy, list(ISIC_CLASSES), ISIC_CLASSES, "ce", 0)
    html = write_experiment_report(run_dir=run_dir, config=config, out_path=tmp_path / "report.html").read_text()
    assert 'id="collapse-warning"' in html and "never predicts Melanoma" in html
    runs = make_classification_runs(tmp_path / "cmp", {"ce": 2.0, "lazy": 2.0}, [0])
    lazy_run = tmp_path / "cmp" / "results" / "lazy" / "seed0"
    write_run(lazy_run, pd.read_csv(lazy_run / "predictions.csv").assign(pred="NV"), list(ISIC_CLASSES),
              ISIC_CLASSES, "lazy", 0)
    compare.write_comparison(run_dirs=runs, baselines={"classification": "ce"}, out_csv=tmp_path / "c.csv",
                             out_html=tmp_path / "c.html", n_bootstrap=20)
    table = pd.read_csv(tmp_path / "c.csv").set_index("experiment")
    assert table.loc["lazy", "lazy"].startswith("seed 0: never predicts Melanoma")
    assert pd.isna(table.loc["ce", "lazy"]) or table.loc["ce", "lazy"] == ""
    assert "&#9888; lazy: seed 0: never predicts" in (tmp_path / "c.html").read_text()
    assert np.isfinite(table.loc["lazy", "balanced_accuracy"])
