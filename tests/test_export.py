"""pipeline export: TorchScript and ONNX files that reproduce the predict stage's outputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import config as cfgmod
from pipeline import predict, rundir, training
from pipeline.cli import main
from pipeline.data.transforms import normalise_image
from pipeline.export import ExportError, export
from pipeline.tasks import get_task
from tests.helpers import evaluated_classification_run

REPO = Path(__file__).resolve().parents[1]
onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX export checks need onnxruntime (pip install 'pipeline[export]')")


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
    return evaluated_classification_run(tmp_path_factory.mktemp("export_cls"), epochs=1)


def test_classifier_exports_reproduce_the_predict_stages_probabilities(trained_classifier, tmp_path):
    run = trained_classifier
    record_path = export(run["run_dir"], tmp_path / "out", formats=("torchscript", "onnx"))
    record = json.loads(record_path.read_text())
    assert record["classes"] == ["A", "B", "C"]
    for name in ("torchscript", "onnx"):
        check = record["files"][name]
        assert check["max_abs_difference"] <= check["atol"] + 1e-3  # the export checked itself ...
    assert set(record["operating_thresholds_val"]["thresholds"]) <= {"A", "B", "C"}
    # ... and, independently here: the exported graphs on the test images, resized by the stated rule,
    # give the probabilities the predict stage wrote (the graph holds the normalisation)
    task = get_task(run)
    reference = rundir.read_predictions(run["run_dir"])
    split = training.load_split(run)
    test = split[split["split"] == "test"].set_index("image_id").loc[reference["image_id"]].reset_index()
    model = predict.load_best_model(run, torch.device("cpu"))[1]
    dataset = task.eval_dataset(test, model)
    normalised = torch.stack([dataset[i][0] for i in range(len(dataset))])
    mean = torch.tensor(record["in_graph"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(record["in_graph"]["std"]).view(1, -1, 1, 1)
    images = normalised * std + mean  # back to [0, 1]: what a deployment feeds
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"images": images.numpy()})[0]
    script_logits = torch.jit.load(str(tmp_path / "out" / "model.ts"))(images).detach().numpy()
    expected = reference[["prob_A", "prob_B", "prob_C"]].to_numpy()
    for logits in (onnx_logits, script_logits):
        probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
        assert np.allclose(probs, expected, atol=1e-4)


def _segmentation_run(tmp_path: Path) -> dict:
    config = cfgmod.load_config(REPO / "configs" / "config.yaml")
    run = cfgmod.resolve_experiment(config, config["baselines"]["segmentation"], 0)
    run["run_dir"] = str(tmp_path / "run")
    torch.manual_seed(0)
    model = get_task(run).build_model()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"model": model.state_dict(), "epoch": 1, "fingerprint": rundir.fingerprint(run, with_code=False)},
               tmp_path / "run" / rundir.BEST_CHECKPOINT)
    rundir.write_run_config(run, tmp_path / "run" / rundir.RUN_CONFIG)
    return run


def test_segmenter_onnx_takes_any_image_size_and_matches_pytorch(tmp_path):
    run = _segmentation_run(tmp_path)
    assert main(["export", "--run", run["run_dir"], "--out", str(tmp_path / "out"), "--format", "onnx", "exported_program"]) == 0
    record = json.loads((tmp_path / "out" / "export.json").read_text())
    assert record["classes"][0] == "background" and record["task"] == "segmentation"
    assert record["postprocessing"]["lesion_types"] == "instance_vote"
    assert not (tmp_path / "out" / "model.ts").exists()  # only the formats asked for
    assert record["files"]["exported_program"]["file"] == "model.pt2" and (tmp_path / "out" / "model.pt2").is_file()
    stride = record["input"]["stride"]
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (5 * stride, 7 * stride, 3), dtype=np.uint8)  # a size never traced
    model = predict.load_best_model(run, torch.device("cpu"))[1]
    with torch.no_grad():
        expected = model(normalise_image(image)[None]).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": (image.transpose(2, 0, 1)[None] / 255.0).astype(np.float32)})[0]
    assert got.shape == expected.shape == (1, 7, 5 * stride, 7 * stride)
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_an_export_that_does_not_reproduce_the_model_is_refused_and_removed(trained_classifier, tmp_path, monkeypatch):
    from pipeline import export as export_module

    write = export_module._write_torchscript

    def drifting(module, example, path):  # a file written, but one whose outputs drift by 1e-3
        runner = write(module, example, path)
        return lambda x: runner(x) + 1e-3

    monkeypatch.setattr(export_module, "_write_torchscript", drifting)
    with pytest.raises(ExportError, match="does not reproduce.*removed"):
        export(trained_classifier["run_dir"], tmp_path / "out", formats=("torchscript",))
    assert not (tmp_path / "out" / "model.ts").exists()
    assert not (tmp_path / "out" / "export.json").exists()
    with pytest.raises(ExportError, match="unknown export format"):
        export(trained_classifier["run_dir"], tmp_path / "out", formats=("tflite",))
