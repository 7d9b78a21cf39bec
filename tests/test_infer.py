"""pipeline infer: a trained run applied to new images, no labels; bad images named or skipped."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline import config as cfgmod
from pipeline import rundir, training
from pipeline.cli import main
from pipeline.data.instances import grade_from_count
from pipeline.data.io import read_label_map, read_rgb
from pipeline.errors import DataError
from pipeline.evaluation.instances import predicted_instances
from pipeline.infer import infer
from pipeline.tasks import get_task
from tests.helpers import evaluated_classification_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
    return evaluated_classification_run(tmp_path_factory.mktemp("infer_cls"))


def test_infer_gives_the_predict_stages_probabilities_and_validation_calls(trained_classifier, tmp_path):
    run = trained_classifier
    run_dir = Path(run["run_dir"])
    reference = rundir.read_predictions(run_dir)
    split = training.load_split(run)
    test = split[split["split"] == "test"]
    listing = pd.DataFrame({"image_id": test["image_id"],
                            "image_path": [str(Path(run["dataset"]["root"]) / p) for p in test["image_path"]]})
    listing.to_csv(tmp_path / "images.csv", index=False)
    infer(run_dir, tmp_path / "images.csv", tmp_path / "out")
    out = pd.read_csv(tmp_path / "out" / "predictions.csv").set_index("image_id").loc[reference["image_id"]]
    for code in ("A", "B", "C"):
        assert np.allclose(out[f"prob_{code}"], reference[f"prob_{code}"], atol=1e-6)
        assert f"call_{code}" in out  # the operating point chosen on validation, per class
    assert (out["pred"].to_numpy() == reference["pred"].to_numpy()).all()
    assert not (tmp_path / "out" / "skipped.csv").exists()


def test_a_corrupt_image_stops_with_its_name_or_is_skipped(trained_classifier, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    Image.new("RGB", (20, 16), (200, 60, 60)).save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "notes.txt").write_text("not an image, ignored")
    run_dir = trained_classifier["run_dir"]
    with pytest.raises(DataError, match="broken.jpg.*--skip-bad"):
        infer(run_dir, folder, tmp_path / "out")
    assert not (tmp_path / "out" / "predictions.csv").exists()  # nothing half written
    assert main(["infer", "--run", run_dir, "--images", str(folder), "--out", str(tmp_path / "out"), "--skip-bad",
                 "--tta", "flips"]) == 0
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv")
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert predictions["image_id"].tolist() == ["good"]
    assert skipped["image_id"].tolist() == ["broken"] and "cannot decode" in skipped.loc[0, "reason"]


def test_infer_refuses_what_is_not_a_run(tmp_path):
    assert main(["infer", "--run", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_segmentation_infer_writes_masks_overlays_and_counts_that_agree(tmp_path):
    config = cfgmod.load_config(REPO / "configs" / "config.yaml")
    run = cfgmod.resolve_experiment(config, config["baselines"]["segmentation"], 0)
    run_dir = tmp_path / "run"
    run["run_dir"] = str(run_dir)
    task = get_task(run)
    torch.manual_seed(0)
    model = task.build_model()
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"model": model.state_dict(), "epoch": 1, "fingerprint": rundir.fingerprint(run, with_code=False)},
               run_dir / rundir.BEST_CHECKPOINT)
    rundir.write_run_config(run, run_dir / rundir.RUN_CONFIG)
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("p1", "p2"):
        Image.fromarray(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    infer(run_dir, folder, tmp_path / "out", device="cpu")
    counts = pd.read_csv(tmp_path / "out" / "lesion_counts.csv")
    types = run["dataset"]["classes"]
    thresholds = run["dataset"]["grading"]["thresholds"]
    assert counts["image_id"].tolist() == ["p1", "p2"]
    for row in counts.itertuples():
        labels = read_label_map(tmp_path / "out" / "masks" / f"{row.image_id}.png")
        assert labels.shape == (72, 80)
        instances = predicted_instances(labels)
        assert row.n_lesions == len(np.unique(instances[instances > 0]))
        assert row.n_lesions == sum(getattr(row, f"n_{t}") for t in types)
        assert row.grade == grade_from_count([row.n_lesions], thresholds)[0]
        assert read_rgb(tmp_path / "out" / "overlays" / f"{row.image_id}.png").shape == (72, 80, 3)
    # a count calibration fitted on validation (postprocessing.json) is what the grade is read from
    run["predict"]["tune_postprocessing"] = True
    rundir.write_run_config(run, run_dir / rundir.RUN_CONFIG)
    settings = task.postprocessing()
    calibration = {"method": "linear", "intercept": 5.0, "slope": 2.0, "fitted_on": "val", "n_images": 3}
    (run_dir / rundir.POSTPROCESSING).write_text(json.dumps(
        {"lesion_threshold": settings["lesion_threshold"], "min_lesion_area": settings["min_lesion_area"],
         "count_calibration": calibration}))
    infer(run_dir, folder, tmp_path / "calibrated", device="cpu")
    calibrated = pd.read_csv(tmp_path / "calibrated" / "lesion_counts.csv")
    assert calibrated["n_lesions"].tolist() == counts["n_lesions"].tolist()
    assert calibrated["n_lesions_calibrated"].tolist() == pytest.approx((5 + 2 * counts["n_lesions"]).tolist())
    assert calibrated["grade"].tolist() == grade_from_count(calibrated["n_lesions_calibrated"], thresholds).tolist()
    # a calibration fitted on lesion masses reads the photo's lesion mass (written beside the counts)
    by_mass = {**calibration, "count_from": "lesion_mass", "intercept": 1.0, "slope": 0.01}
    (run_dir / rundir.POSTPROCESSING).write_text(json.dumps(
        {"lesion_threshold": settings["lesion_threshold"], "min_lesion_area": settings["min_lesion_area"],
         "count_calibration": by_mass}))
    infer(run_dir, folder, tmp_path / "by_mass", device="cpu")
    from_mass = pd.read_csv(tmp_path / "by_mass" / "lesion_counts.csv")
    assert (from_mass["lesion_mass"] > 0).all() and from_mass["lesion_mass"].tolist() == counts["lesion_mass"].tolist()
    assert from_mass["n_lesions_calibrated"].tolist() == pytest.approx((1 + 0.01 * from_mass["lesion_mass"]).tolist(), abs=0.01)
    assert from_mass["grade"].tolist() == grade_from_count(from_mass["n_lesions_calibrated"], thresholds).tolist()
