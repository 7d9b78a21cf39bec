"""Export a trained run for deployment outside this package: ``pipeline export``.

    pipeline export --run results/<experiment>/seed<k> --out DIR [--format torchscript onnx]

The run's selected model (``checkpoints/best.pt``) is wrapped so that the exported graph holds
everything the predict stage applies to a tensor, and nothing a deployment must re-implement:

- input ``images``: float32, N x 3 x H x W, RGB scaled to [0, 1] (the normalisation with the
  model's mean and std is inside the graph);
- output ``logits``: N x C (classification; softmax over dim 1 gives the predict stage's
  probabilities: LDAM's scale and the logit offsets fitted on validation are inside the graph) or
  N x C x H x W (segmentation; channel 0 is background; H and W multiples of the encoder's stride).

What stays outside the graph is written to ``export.json``: the classes, the resize rule
(classification: timm's eval geometry, resize the shorter side then centre-crop; segmentation:
sliding windows of the training patch size over the whole photo), the operating thresholds chosen
on validation, the segmentation post-processing, and the check below.

Formats: ``torchscript`` (``model.ts``, torch.jit.trace; load with ``torch.jit.load``, also from
C++), ``onnx`` (``model.onnx``, torch.onnx's torch.export-based exporter, opset 18; batch, and for
segmentation height and width, are dynamic), ``exported_program`` (``model.pt2``, torch.export).
After writing, every file is loaded back (ONNX by onnxruntime) and run on inputs of another batch
size (and, for segmentation, another image size) than the one traced; its outputs must match the
PyTorch model's within ``|a - b| <= atol + rtol * |b|`` (1e-4 each by default), or the export
stops with the largest difference and nothing is left under the output name. Files are written
atomically.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import __version__, rundir
from pipeline.atomic import atomic_path, write_text
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline.export")
FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx", "exported_program": "model.pt2"}
DEFAULT_FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 18


class ExportError(PipelineError):
    """An exported file that does not reproduce the PyTorch model, or a format that cannot be written."""


class ExportedClassifier(nn.Module):
    """images in [0, 1] -> logits: normalise, network, times the loss's output scale, plus offsets."""

    def __init__(self, model: nn.Module, mean, std, scale: float, offsets) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("offsets", torch.as_tensor(offsets, dtype=torch.float32).view(1, -1))
        self.scale = float(scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scale * self.model((images - self.mean) / self.std) + self.offsets


class ExportedSegmenter(nn.Module):
    """images in [0, 1] -> per-pixel logits (background first): normalise, network."""

    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def _wrap(task, model: nn.Module, cfg: dict) -> tuple[nn.Module, dict]:
    """The exported module and the part of export.json that describes its input and output."""
    if task.name == "classification":
        norm = task._normalisation(model)
        offsets = rundir.read_logit_offsets(cfg["run_dir"])
        offset_values = offsets["offsets"] if offsets is not None else [0.0] * task.num_outputs
        size, crop_pct = cfg["train"]["image_size"], cfg["train"]["crop_pct"]
        wrapped = ExportedClassifier(model, norm["mean"], norm["std"], task.output_scale, offset_values)
        spec = {"classes": list(task.classes),
                "input": {"size": [size, size],
                          "resize": f"resize the shorter side to floor({size} / {crop_pct}) = "
                                    f"{int(np.floor(size / crop_pct))} px keeping the aspect, then centre-crop {size} x {size}"},
                "output": "logits N x C; softmax over dim 1 gives the class probabilities",
                "in_graph": {"mean": list(norm["mean"]), "std": list(norm["std"]), "output_scale": task.output_scale,
                             "logit_offsets": list(map(float, offset_values))}}
        return wrapped, spec
    from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    patch, stride = cfg["train"]["patch_size"], _output_stride(model)
    wrapped = ExportedSegmenter(model, IMAGENET_MEAN, IMAGENET_STD)
    spec = {"classes": ["background", *task.types],
            "input": {"size": "any H x W that are multiples of the stride", "stride": stride, "patch_size": patch,
                      "resize": f"none: slide {patch} x {patch} windows over the whole photo (overlap "
                                f"{cfg['predict']['overlap']}, Gaussian weights; MONAI sliding_window_inference)"},
            "output": "logits N x C x H x W; softmax over dim 1, channel 0 is background",
            "in_graph": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}
    return wrapped, spec


def _output_stride(model: nn.Module) -> int:
    """How many input pixels one step of the deepest feature map spans (SMP encoders say so)."""
    encoder = getattr(model, "encoder", None)
    stride = getattr(encoder, "output_stride", None)
    return int(stride) if stride else 32


def _check_inputs(task_name: str, cfg: dict, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(traced example, check input): the check differs in batch size and, for segmentation, size."""
    generator = torch.Generator().manual_seed(0)
    if task_name == "classification":
        size = cfg["train"]["image_size"]
        return (torch.rand(2, 3, size, size, generator=generator), torch.rand(3, 3, size, size, generator=generator))
    patch = cfg["train"]["patch_size"]
    other = patch + 2 * stride
    return (torch.rand(2, 3, patch, patch, generator=generator), torch.rand(3, 3, other, patch + stride, generator=generator))


def _write_torchscript(module: nn.Module, example: torch.Tensor, path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream but still loads in C++
        traced = torch.jit.trace(module, example, check_trace=False)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))
        loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda x: loaded(x).detach().numpy()


def _dynamic_shapes(task_name: str):
    batch = torch.export.Dim("batch", min=1, max=4096)
    if task_name == "classification":
        return {"images": {0: batch}}
    return {"images": {0: batch, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}}


def _write_onnx(module: nn.Module, example: torch.Tensor, path: Path, task_name: str):
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'pipeline[export]'") from None
    with atomic_path(path) as tmp:
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=_dynamic_shapes(task_name), opset_version=ONNX_OPSET,
                                    external_data=False, verbose=False)
        program.save(str(tmp))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def _write_exported_program(module: nn.Module, example: torch.Tensor, path: Path, task_name: str):
    program = torch.export.export(module, (example,), dynamic_shapes=_dynamic_shapes(task_name))
    with atomic_path(path) as tmp:
        torch.export.save(program, str(tmp))
    loaded = torch.export.load(str(path)).module()
    return lambda x: loaded(x).detach().numpy()


def export(run: str | Path, out: str | Path, formats=DEFAULT_FORMATS, *, rtol: float = 1e-4, atol: float = 1e-4) -> Path:
    """Export ``run``'s selected model in ``formats`` under ``out`` (see module docstring); returns
    the path of export.json."""
    from pipeline.infer import trained_run_config, validation_thresholds
    from pipeline.predict import load_best_model
    from pipeline.sklearn_trainer import is_sklearn

    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ExportError(f"unknown export format(s) {unknown}; choose from {sorted(FORMATS)}")
    cfg = trained_run_config(run)
    if is_sklearn(cfg):
        raise ExportError(f"{run} is the scikit-learn baseline; export takes a trained network run")
    task, model = load_best_model(cfg, torch.device("cpu"))
    wrapped, spec = _wrap(task, model, cfg)
    wrapped.eval()
    stride = spec["input"].get("stride", 1)
    example, check = _check_inputs(task.name, cfg, stride)
    with torch.no_grad():
        expected = wrapped(check).numpy()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writers = {"torchscript": lambda p: _write_torchscript(wrapped, example, p),
               "onnx": lambda p: _write_onnx(wrapped, example, p, task.name),
               "exported_program": lambda p: _write_exported_program(wrapped, example, p, task.name)}
    checks = {}
    for name in formats:
        path = out / FORMATS[name]
        log.info("%s: writing %s", name, path)
        with torch.no_grad():
            runner = writers[name](path)
            got = runner(check)
        difference = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
        checks[name] = {"file": path.name, "check_input_shape": list(check.shape), "max_abs_difference": difference,
                        "rtol": rtol, "atol": atol}
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=rtol, atol=atol):
            path.unlink(missing_ok=True)
            raise ExportError(f"{name}: the exported model does not reproduce the PyTorch model on a "
                              f"{list(check.shape)} input (output {list(got.shape)} vs {list(expected.shape)}, "
                              f"max |difference| {difference:.3g} > atol {atol} + rtol {rtol} x |expected|); "
                              f"{path} removed")
        log.info("%s: max |difference| to PyTorch %.2g on a %s input", name, difference, list(check.shape))
    record = {"experiment": cfg["experiment"], "seed": cfg["seed"], "task": task.name,
              "checkpoint": str(Path(cfg["run_dir"]) / rundir.BEST_CHECKPOINT), "pipeline_version": __version__,
              "torch_version": torch.__version__, "model": cfg["model"],
              "input_format": "float32 N x 3 x H x W, RGB scaled to [0, 1] (normalisation is in the graph)",
              **spec, "files": checks}
    if task.name == "classification":
        record["operating_thresholds_val"] = {
            "rule": "call a class when its probability >= the threshold chosen on validation for 95% specificity",
            "thresholds": validation_thresholds(Path(cfg["run_dir"]), task.classes)}
    else:
        if cfg["predict"].get("tune_postprocessing"):
            task.tuned = rundir.read_postprocessing(cfg["run_dir"])
        record["postprocessing"] = task.postprocessing()
        record["grading_thresholds"] = cfg["dataset"].get("grading", {}).get("thresholds")
        record["count_calibration"] = (task.tuned or {}).get("count_calibration")  # None: grade the lesions found
    return write_text(out / "export.json", json.dumps(rundir.to_jsonable(record), indent=2))
