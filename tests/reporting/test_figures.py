"""Figures draw the stored numbers: checked on the matplotlib artists, not just 'it ran'."""

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from pipeline.reporting import figures

LABELS = ["Melanoma (MEL)", "Melanocytic nevus (NV)", "Dermatofibroma (DF)"]
COUNTS = [[10, 3, 1], [2, 30, 0], [0, 0, 0]]


def _cell_texts(fig: Figure) -> list[str]:
    ax = fig.axes[0]
    return [t.get_text() for t in ax.texts]


def test_confusion_matrix_counts_and_row_normalised_values():
    counts_fig = figures.plot_confusion_matrix(COUNTS, LABELS, None, normalize=False)
    assert _cell_texts(counts_fig) == ["10", "3", "1", "2", "30", "0", "0", "0", "0"]
    assert [t.get_text() for t in counts_fig.axes[0].get_yticklabels()][0] == "Melanoma (MEL)"
    figures.plt.close(counts_fig)

    norm_fig = figures.plot_confusion_matrix(COUNTS, LABELS, None, normalize=True)
    # 10/14 = 71%, 3/14 = 21%, 1/14 = 7%; 2/32 = 6%, 30/32 = 94%; the empty DF row has no proportions
    assert _cell_texts(norm_fig) == ["71%", "21%", "7%", "6%", "94%", "0%", "\u2013", "\u2013", "\u2013"]
    figures.plt.close(norm_fig)


def test_confusion_matrix_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="does not match 2 labels"):
        figures.plot_confusion_matrix(COUNTS, LABELS[:2], None)


def test_lesion_confusion_matrix_uses_its_own_column_labels(tmp_path):
    rows = ["Papule", "Pustule", "false lesion"]
    cols = ["Papule", "Pustule", "missed"]
    fig = figures.plot_confusion_matrix([[5, 1, 2], [0, 4, 3], [2, 1, 0]], rows, None, col_labels=cols)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][-1] == "missed"
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][-1] == "false lesion"
    path = figures.save_figure(fig, tmp_path / "lesions.png")
    assert Image.open(path).format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lesions.png"]  # no temp file left behind


def test_roc_curves_draw_stored_points_and_operating_points():
    roc = {"MEL": {"fpr": [0, 0.1, 1], "tpr": [0, 0.7, 1]}, "NV": {"fpr": [0, 0.5, 1], "tpr": [0, 0.5, 1]}, "DF": None}
    per_class = {
        "MEL": {"auc": {"value": 0.8, "ci95": [0.7, 0.9]},
                "sens_at_95_spec": {"value": 0.6, "specificity": 0.96},
                "spec_at_95_sens": {"value": 0.3, "sensitivity": 0.97}},
        "NV": {"auc": {"value": 0.5, "ci95": [0.4, 0.6]}},
        "DF": {"auc": {"value": None, "ci95": [None, None]}},
    }
    labels = dict(zip(["NV", "MEL", "DF"], ["Nevus (NV)", "Melanoma (MEL)", "DF"]))
    fig = figures.plot_roc_curves(roc, per_class, labels, None, highlight="MEL")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["Melanoma (MEL)", "Nevus (NV)"]  # highlight first, DF has no curve
    mel = visible[0]
    curve = mel.lines[0]
    assert list(curve.get_xdata()) == [0, 0.1, 1] and list(curve.get_ydata()) == [0, 0.7, 1]
    legend = [t.get_text() for t in mel.get_legend().get_texts()]
    assert legend[0] == "AUC 0.80 (0.70\u20130.90)"
    points = {(round(float(line.get_xdata()[0]), 3), round(float(line.get_ydata()[0]), 3))
              for line in mel.lines if line.get_marker() in ("o", "s")}
    assert points == {(0.04, 0.6), (0.7, 0.97)}  # (1 - 0.96, 0.6) and (1 - 0.3, 0.97)
    figures.plt.close(fig)


def test_reliability_diagram_bars_are_the_stored_bins():
    bins = [{"lo": 0.0, "hi": 0.5, "count": 0, "confidence": None, "accuracy": None},
            {"lo": 0.5, "hi": 0.75, "count": 8, "confidence": 0.6, "accuracy": 0.5},
            {"lo": 0.75, "hi": 1.0, "count": 12, "confidence": 0.9, "accuracy": 0.75}]
    fig = figures.plot_reliability_diagram(bins, 0.1, None)
    top, bottom = fig.axes
    accuracy_bars = top.containers[0]
    assert [round(b.get_height(), 6) for b in accuracy_bars] == [0.5, 0.75]
    assert [round(b.get_height(), 6) for b in bottom.containers[0]] == [0, 8, 12]
    assert "ECE = 0.100" in top.get_title()
    figures.plt.close(fig)


def test_gallery_and_overlays_render(tmp_path):
    rng = np.random.default_rng(0)
    cases = [figures.Case("img_1", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), "Alpha (A)", "Beta (B)",
                          {"A": 0.3, "B": 0.7}, true_key="A", pred_key="B"),
             figures.Case("img_2", None, "Alpha (A)", "Alpha (A)", {"A": 0.9, "B": 0.1}, true_key="A", pred_key="A")]
    fig = figures.plot_case_gallery(cases, None)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "img_1\nTrue: Alpha (A)\nModel: Beta (B)"
    bars = fig.axes[0].child_axes[0]
    assert sorted(t.get_text() for t in bars.texts) == ["A 0.30", "B 0.70"]
    assert [round(b.get_width(), 6) for b in bars.patches] == [0.3, 0.7]  # ascending: largest on top
    figures.plt.close(fig)
    buried = figures.Case("img_3", None, "D", "A", {"A": 0.4, "B": 0.3, "C": 0.2, "D": 0.1}, true_key="D", pred_key="A")
    fig = figures.plot_case_gallery([buried], None, top_k=3)
    assert sorted(t.get_text() for t in fig.axes[0].child_axes[0].texts) == ["A 0.40", "B 0.30", "D 0.10"]
    figures.plt.close(fig)

    truth = np.zeros((20, 20), dtype=np.uint8)
    truth[2:8, 2:8] = 1
    pred = np.zeros_like(truth)
    pred[3:9, 2:8] = 2
    case = figures.OverlayCase("best", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), truth, pred)
    path = figures.plot_segmentation_overlays([case], ["Papule", "Pustule"], tmp_path / "overlay.png")
    assert Image.open(path).size[0] > 100
    with pytest.raises(ValueError, match="differ in size"):
        figures.plot_segmentation_overlays([figures.OverlayCase("bad", case.image, truth, pred[:10])], ["P", "Q"], None)


def test_forest_plot_colours_by_verdict():
    fig = figures.plot_differences([("within", 0.02, [-0.01, 0.05]), ("better", 0.1, [0.05, 0.15])], "BA", None)
    data_points = [line for line in fig.axes[0].lines if line.get_marker() == "o"]
    assert [float(line.get_xdata()[0]) for line in data_points] == pytest.approx([2.0, 10.0])
    assert [line.get_color() for line in data_points] == ["#999999", "#2e7d32"]
    figures.plt.close(fig)


def test_data_uri_is_a_png():
    fig = figures.plot_confusion_matrix(COUNTS, LABELS, None)
    uri = figures.to_data_uri(fig)
    assert uri.startswith("data:image/png;base64,iVBORw0KGgo")  # base64 of the PNG signature
