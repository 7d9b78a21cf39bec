"""The GPU code paths: losses, mixed precision, training and prediction on a CUDA device.

Skipped where no CUDA device is present (CI has none); `scripts/gpu_check.py` runs them on a GPU
machine, together with the rest of the training tests, which then train on the GPU too (device
"auto"). Tolerances follow the arithmetic: float32 on the GPU against float64 on the CPU agrees far
under 1e-4; bfloat16 autocast (what `amp: auto` chooses on a GPU) keeps 8 bits of mantissa, so its
losses and probabilities agree to about 1e-2.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline import predict, training
from pipeline import config as cfgmod
from pipeline.losses import available_losses, build_loss
from pipeline.tasks import get_task
from tests.helpers import tiny_classification_run
from tests.losses.test_registry import COUNTS, REQUIRED, SEGMENTATION_ONLY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by scripts/gpu_check.py)")
CUDA = torch.device("cuda")
REPO = Path(__file__).resolve().parents[1]


def relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    got, reference = got.detach().double().cpu(), reference.detach().double().cpu()
    return float((got - reference).norm() / reference.norm().clamp_min(1e-30))


def loss_and_gradient(name: str, logits: torch.Tensor, target: torch.Tensor, device: torch.device,
                      dtype: torch.dtype, autocast: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    loss = build_loss(name, num_classes=4, class_counts=COUNTS, **REQUIRED.get(name, {})).to(device)
    if dtype == torch.float64:
        loss = loss.double()
    if hasattr(loss, "set_step"):
        loss.set_step(3, 10)
    leaf = logits.detach().to(device, dtype).requires_grad_()
    with torch.autocast("cuda", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        value = loss(leaf, target.to(device))
    value.backward()
    return value, leaf.grad


@pytest.mark.parametrize("shape", ["segmentation", "classification"])
@pytest.mark.parametrize("name", sorted(available_losses()))
def test_every_loss_on_cuda_matches_float64_on_the_cpu(name, shape):
    if shape == "classification" and name in SEGMENTATION_ONLY:
        pytest.skip("a segmentation-only loss")
    generator = torch.Generator().manual_seed(0)
    size = (6, 4, 16, 16) if shape == "segmentation" else (64, 4)
    logits = torch.randn(size, generator=generator) * 2
    target = torch.randint(0, 4, (size[0], *size[2:]), generator=generator)
    target.view(-1)[:5] = -100  # ignore_index pixels / rows
    ref_value, ref_grad = loss_and_gradient(name, logits, target, torch.device("cpu"), torch.float64)
    value, grad = loss_and_gradient(name, logits, target, CUDA, torch.float32)
    assert value.device.type == "cuda"
    assert relative_error(value, ref_value) < 1e-4
    assert relative_error(grad, ref_grad) < 1e-4
    # bfloat16 logits under autocast, as the trainer computes the loss with `amp: auto`
    rounded = logits.to(torch.bfloat16).float()
    ref_value, ref_grad = loss_and_gradient(name, rounded, target, torch.device("cpu"), torch.float64)
    value, grad = loss_and_gradient(name, rounded, target, CUDA, torch.bfloat16, autocast=torch.bfloat16)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert relative_error(value, ref_value) < 2e-2
    assert relative_error(grad, ref_grad) < 5e-2


def test_a_classifier_trains_and_predicts_on_cuda_and_its_checkpoint_runs_on_the_cpu(tmp_path):
    run = tiny_classification_run(tmp_path, device="cuda", epochs=3)
    summary = training.train(run, threads=1)
    assert summary["device"].startswith("cuda") and summary["steps"] > 0
    losses = [row["train_loss"] for row in summary["history"]]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    # on CUDA `auto` gives the channels-last layout and the fused AdamW step (cfg: channels_last, fused)
    trainer = training.setup(tiny_classification_run(tmp_path / "setup", device="cuda"), threads=1)
    assert trainer.memory_format == torch.channels_last and trainer.optimizer.defaults["fused"] is True
    inputs, _ = next(iter(trainer.loader))  # uint8 from the loader, colour-jittered and normalised on the GPU
    assert inputs.dtype == torch.uint8 and trainer.device_inputs(inputs).dtype == torch.float32
    assert trainer.input_transform.augment is not None  # train.augment_on_device: auto
    assert not any(type(t).__name__ == "ColorJitter" for t in trainer.dataset.transform.transforms)
    assert trainer.device_inputs(inputs).is_cuda
    assert next(trainer.model.parameters()).is_cuda
    frame = pd.read_csv(predict.predict_run(run))
    probabilities = frame[["prob_A", "prob_B", "prob_C"]].to_numpy()
    assert abs(probabilities.sum(axis=1) - 1).max() < 1e-3
    # the same checkpoint on the CPU and on the GPU: float32 agrees to TF32 rounding, bf16 to ~1e-2
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    _, on_cpu = predict.load_best_model(run, torch.device("cpu"))
    _, on_gpu = predict.load_best_model(run, CUDA)
    with torch.no_grad():
        reference = torch.softmax(on_cpu(images).double(), dim=1)
        fp32 = torch.softmax(on_gpu(images.to(CUDA)).double(), dim=1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = torch.softmax(on_gpu(images.to(CUDA)).double(), dim=1)
    assert (fp32.cpu() - reference).abs().max() < 2e-3
    assert (bf16.cpu() - reference).abs().max() < 3e-2


def test_the_default_segmenter_steps_on_cuda_with_mixed_precision():
    config = cfgmod.load_config(REPO / "configs" / "config.yaml")
    run = cfgmod.resolve_experiment(config, config["baselines"]["segmentation"], 0)
    torch.manual_seed(0)
    task = get_task(run)
    model = task.build_model()
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        reference = model(images)
        model.to(CUDA)
        fp32 = model(images.to(CUDA))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(images.to(CUDA))
    assert fp32.shape == reference.shape == (2, 7, 64, 96)
    assert relative_error(fp32, reference) < 5e-3
    assert relative_error(bf16.float(), reference) < 5e-2
    # one optimizer step of the default loss under autocast moves the weights and stays finite
    model.train()
    loss = build_loss("dice_ce", num_classes=7).to(CUDA)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    target = torch.randint(0, 7, (2, 64, 96), device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        value = loss(model(images.to(CUDA)), target)
    value.backward()
    optimizer.step()
    assert torch.isfinite(value)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_batch_colour_jitter_on_cuda_matches_the_cpu():
    from pipeline.data.transforms import BatchColourJitter, colour_jitter_batch

    batch = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    factors, order = BatchColourJitter(seed=2, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.3).draw(len(batch))
    on_gpu = colour_jitter_batch(batch.to(CUDA), factors, order)
    assert on_gpu.is_cuda
    assert (on_gpu.cpu() - colour_jitter_batch(batch, factors, order)).abs().max() < 1e-4
