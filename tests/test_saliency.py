"""Grad-CAM++ saliency: maps that point at the evidence, written for the report's boundary cases
and by ``pipeline infer --explain``."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pipeline import rundir, training
from pipeline.cli import main
from pipeline.data.io import read_rgb
from pipeline.reporting.html import write_experiment_report
from pipeline.evaluation.cases import boundary_cases
from pipeline.saliency import SALIENCY_DIR, overlay_heatmap, saliency_maps, target_layer
from tests.helpers import evaluated_classification_run


class RedDetector(nn.Module):
    """Class 0's score is the mean redness of the image, class 1's its negative: the evidence for
    class 0 is exactly where the image is red."""

    feature_info = [{"module": "features", "reduction": 1}]

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 1, kernel_size=1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
        self.head = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0], [-1.0]]))

    def forward(self, x):
        return self.head(torch.relu(self.features(x)).mean(dim=(2, 3)))


def test_the_map_lights_up_where_the_evidence_for_the_class_is():
    image = torch.zeros(1, 3, 16, 16)
    image[0, 0, 2:6, 9:13] = 1.0  # a red square, top right
    heat = saliency_maps(RedDetector(), image, [0])[0]
    assert heat.shape == (16, 16)
    assert heat[2:6, 9:13].min() > 0.9 and heat[10:, :6].max() < 0.1
    coloured = overlay_heatmap(np.zeros((16, 16, 3), np.uint8), heat)
    assert coloured[3, 10, 0] > coloured[12, 2, 0]  # jet: red where the map is high


def test_a_model_without_a_feature_stage_gets_no_map():
    assert saliency_maps(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)), torch.rand(1, 3, 4, 4), [0]) is None


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    return evaluated_classification_run(tmp_path_factory.mktemp("saliency"), epochs=1)


def test_the_predict_stage_draws_the_reports_boundary_cases_and_the_report_shows_them(evaluated_run, tmp_path):
    run_dir = Path(evaluated_run["run_dir"])
    predictions = rundir.read_predictions(run_dir)
    wrong, ties, _ = boundary_cases(predictions, ["A", "B", "C"])
    expected = set(wrong["image_id"]) | set(ties["image_id"])
    drawn = {p.stem for p in (run_dir / SALIENCY_DIR).glob("*.png")}
    assert drawn == expected and drawn
    size = evaluated_run["train"]["image_size"]
    assert read_rgb(run_dir / SALIENCY_DIR / f"{sorted(drawn)[0]}.png").shape == (size, size, 3)
    html = write_experiment_report(run_dir=run_dir, config=evaluated_run, out_path=tmp_path / "report.html").read_text()
    assert "Grad-CAM++ for the predicted class" in html


def test_infer_explain_writes_one_overlay_per_image(evaluated_run, tmp_path):
    split = training.load_split(evaluated_run)
    test = split[split["split"] == "test"].head(3)
    root = Path(evaluated_run["dataset"]["root"])
    pd.DataFrame({"image_id": test["image_id"], "image_path": [str(root / p) for p in test["image_path"]]}).to_csv(
        tmp_path / "images.csv", index=False)
    assert main(["infer", "--run", evaluated_run["run_dir"], "--images", str(tmp_path / "images.csv"),
                 "--out", str(tmp_path / "out"), "--explain"]) == 0
    assert sorted(p.stem for p in (tmp_path / "out" / "explain").glob("*.png")) == sorted(test["image_id"])


def test_the_explained_stage_is_the_last_unless_its_map_would_be_coarser_than_7_px():
    import timm

    model = timm.create_model("test_resnet", num_classes=3)  # stages at strides 2, 4, 8, 16, 32
    assert target_layer(model) == "layer4"
    assert target_layer(model, 224) == "layer4"  # 7 x 7, the papers' setting
    assert target_layer(model, 64) == "layer2"  # layer4 would be 2 x 2, layer3 4 x 4
