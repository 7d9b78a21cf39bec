import json
import math

import pandas as pd
import pytest
import torch

from pipeline import training
from pipeline.errors import TrainingError
from pipeline.losses.weighting import normalise_weights
from pipeline.data.datasets import ClassificationDataset
from pipeline.tasks.classification import ClassificationTask
from tests.helpers import tiny_classification_run


def state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_train_writes_checkpoints_history_and_resolved_config(tmp_path):
    run = tiny_classification_run(tmp_path)
    summary = training.train(run, threads=1)
    run_dir = tmp_path / "results" / "tiny_ce" / "seed0"
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/config.yaml", "history.csv",
                 "training_summary.json"):
        assert (run_dir / name).is_file(), name
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert summary["best_epoch"] in (1, 2)
    assert summary["best_val_balanced_accuracy"] == history["val_balanced_accuracy"].max()
    assert summary["precision"] == "float32"
    assert json.loads((run_dir / "training_summary.json").read_text())["steps"] == summary["steps"] > 0
    best = state(run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == summary["best_epoch"]


@pytest.mark.parametrize("select, kept_epoch", [("best", 1), ("last", 3)])
def test_select_keeps_the_best_validated_epoch_or_the_last(tmp_path, monkeypatch, select, kept_epoch):
    # validation scores that fall: "best" keeps epoch 1, "last" the final weights whatever validation says
    scores = iter([0.9, 0.5, 0.1])
    monkeypatch.setattr(ClassificationTask, "validation_score", lambda self, *args, **kwargs: next(scores))
    summary = training.train(tiny_classification_run(tmp_path, epochs=3, select=select), threads=1)
    checkpoints = tmp_path / "results" / "tiny_ce" / "seed0" / "checkpoints"
    best, last = state(checkpoints / "best.pt"), state(checkpoints / "last.pt")
    assert summary["select"] == select and summary["best_epoch"] == best["epoch"] == kept_epoch
    assert summary["best_val_balanced_accuracy"] == pytest.approx([0.9, 0.5, 0.1][kept_epoch - 1])
    same_as_last = all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert same_as_last == (select == "last")


def test_an_unknown_select_rule_is_a_config_error(tmp_path):
    from pipeline.errors import ConfigError
    with pytest.raises(ConfigError, match="select"):
        tiny_classification_run(tmp_path, select="median")


OVERSAMPLE = {"name": "oversample", "coefficients": {"A": 1, "B": 3, "C": 2}}
HARD = {"name": "hard_examples", "pressure": 50}


def run_with(path, sampler=None, **train_overrides):
    run = tiny_classification_run(path, **train_overrides)
    if sampler is not None:
        run["sampler"] = sampler
    return run


def test_oversampling_takes_the_optimizer_steps_of_plain_shuffling(tmp_path):
    plain = training.train(run_with(tmp_path / "plain"), threads=1)
    oversampled = training.train(run_with(tmp_path / "over", OVERSAMPLE), threads=1)
    assert oversampled["steps"] == plain["steps"] > 0
    # the old behaviour stays available, explicitly: every image k times per epoch, more steps
    expanded = training.train(run_with(tmp_path / "expanded", {**OVERSAMPLE, "epoch_size": "expanded"}), threads=1)
    assert expanded["steps"] > plain["steps"]


BF16 = {"amp": True, "image_size": 32}  # bf16 autocast on the CPU (the default where it is native)


@pytest.mark.parametrize("sampler, workers, precision", [(None, 0, {}), (OVERSAMPLE, 0, {}), (HARD, 0, {}), (None, 2, {}),
                                                         (None, 0, BF16), (OVERSAMPLE, 2, BF16),
                                                         (None, 2, {"augment_on_device": True}),
                                                         (OVERSAMPLE, 2, {"augment_on_device": "all"})],
                         ids=["shuffle", "oversample", "hard_examples", "shuffle_2_workers", "bf16", "bf16_oversample_2_workers",
                              "colour_jitter_on_device_2_workers", "all_on_device_oversample_2_workers"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch, sampler, workers, precision):
    # with workers, the reference runs in one process: augmentation must not depend on the worker count.
    # Three epochs: persistent workers keep one loader iterator from the second epoch on
    reference = training.train(run_with(tmp_path / "a", sampler, epochs=3, **precision), threads=1)
    run = run_with(tmp_path / "b", sampler, num_workers=workers, epochs=3, **precision)

    calls = {"n": 0}
    original = ClassificationTask.validation_score

    def crash_in_second_epoch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ClassificationTask, "validation_score", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        training.train(run, threads=1)
    assert state(tmp_path / "b/results/tiny_ce/seed0/checkpoints/last.pt")["epoch"] == 1
    monkeypatch.setattr(ClassificationTask, "validation_score", original)
    resumed = training.train(run, threads=1)

    assert resumed["steps"] == reference["steps"]
    a = state(tmp_path / "a/results/tiny_ce/seed0/checkpoints/last.pt")["model"]
    b = state(tmp_path / "b/results/tiny_ce/seed0/checkpoints/last.pt")["model"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    run = tiny_classification_run(tmp_path)
    real_build = training.build_loss

    class Exploding(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, logits, target):
            return self.inner(logits, target) * float("nan")

    def exploding_loss(*args, **kwargs):
        return Exploding(real_build(*args, **kwargs))

    monkeypatch.setattr(training, "build_loss", exploding_loss)
    fetched = []  # the items the loader fetched, in order (no workers): the first batch comes first
    real_item = ClassificationDataset.__getitem__
    monkeypatch.setattr(ClassificationDataset, "__getitem__", lambda self, i: (fetched.append(self.image_id(i)), real_item(self, i))[1])
    with pytest.raises(TrainingError, match=r"non-finite loss .* epoch 1, batch 1, optimizer step 0") as error:
        training.train(run, threads=1)
    assert not (tmp_path / "results/tiny_ce/seed0/training_summary.json").exists()
    first_batch = fetched[: run["train"]["batch_size"]]
    assert len(set(first_batch)) == run["train"]["batch_size"]
    assert f"Images of that batch: {', '.join(first_batch)}." in str(error.value)


def test_the_recorded_sampler_passes_the_draws_through_and_keeps_the_epochs_indices():
    generator = torch.Generator().manual_seed(3)
    plain = list(torch.utils.data.RandomSampler(range(10), generator=generator))
    recorded = training.RecordedSampler(torch.utils.data.RandomSampler(range(10), generator=generator.manual_seed(3)))
    assert list(recorded) == plain == recorded.epoch_indices and len(recorded) == 10
    assert recorded.generator is generator  # other attributes are the wrapped sampler's
    loader = torch.utils.data.DataLoader(range(10), batch_size=4, sampler=recorded)
    batches = [batch.tolist() for batch in loader]
    assert batches[1] == recorded.epoch_indices[4:8]


def test_non_finite_weights_stop_the_run_before_their_checkpoint(tmp_path, monkeypatch):
    # a finite loss does not prove finite weights (oneDNN's bf16 backward on 1x1 maps): the epoch's
    # weights are checked before its checkpoint, and the last good checkpoint stays
    run = tiny_classification_run(tmp_path, epochs=3)
    real_epoch = training.run_epoch

    def poisoned_second_epoch(trainer, state, epoch, track_weights):
        result = real_epoch(trainer, state, epoch, track_weights)
        if epoch == 1:
            with torch.no_grad():
                trainer.model.get_classifier().weight[0, 0] = float("nan")
        return result

    monkeypatch.setattr(training, "run_epoch", poisoned_second_epoch)
    with pytest.raises(TrainingError, match=r"non-finite values in fc.weight .* after epoch 2 .* finite losses"):
        training.train(run, threads=1)
    run_dir = tmp_path / "results/tiny_ce/seed0"
    assert state(run_dir / "checkpoints/last.pt")["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state(run_dir / "checkpoints/last.pt")["model"].values())
    assert not (run_dir / "training_summary.json").exists()


def deferred_run(path):
    """3 epochs of 2 steps: class weights from step 3 (drw_start 0.5), the sampler from epoch 2 (start 0.5)."""
    run = tiny_classification_run(path, epochs=3)
    run["loss"] = {"name": "weighted_ce", "weights": [1.0, 2.0, 4.0], "drw_start": 0.5}
    run["sampler"] = {"name": "class_balanced", "start": 0.5}
    return run


def test_resume_across_deferred_reweighting_and_resampling_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    reference = training.train(deferred_run(tmp_path / "a"), threads=1)
    run = deferred_run(tmp_path / "b")
    calls = {"n": 0}
    original = ClassificationTask.validation_score

    def crash_in_second_epoch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ClassificationTask, "validation_score", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        training.train(run, threads=1)
    assert state(tmp_path / "b/results/tiny_ce/seed0/checkpoints/last.pt")["epoch"] == 1  # before both switches
    monkeypatch.setattr(ClassificationTask, "validation_score", original)
    resumed = training.train(run, threads=1)

    assert resumed["steps"] == reference["steps"] == 6  # the same steps per epoch before and after the sampler switch
    a = state(tmp_path / "a/results/tiny_ce/seed0/checkpoints/last.pt")["model"]
    b = state(tmp_path / "b/results/tiny_ce/seed0/checkpoints/last.pt")["model"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    weights = pd.read_csv(tmp_path / "a/results/tiny_ce/seed0/loss_weights.csv")
    assert weights["step"].tolist() == list(range(6))
    assert (weights.loc[weights["step"] < 3, ["w0", "w1", "w2"]] == 1.0).all().all()
    after = weights.loc[weights["step"] >= 3, ["w0", "w1", "w2"]].drop_duplicates().to_numpy()
    expected = normalise_weights(torch.tensor([1.0, 2.0, 4.0]), reference["train_class_counts"])  # mean 1 per sample
    assert after.shape == (1, 3) and after[0] == pytest.approx(expected.tolist(), abs=1e-5)


def test_the_trainer_gives_the_loss_its_steps_per_epoch(tmp_path):
    # period_epochs: 1 tilts towards the next class each epoch, so the logged weights show the epoch length
    run = tiny_classification_run(tmp_path, epochs=3)
    run["loss"] = {"name": "dynamical", "amplitude": 3.0, "period_epochs": 1}
    summary = training.train(run, threads=1)
    weights = pd.read_csv(tmp_path / "results/tiny_ce/seed0/loss_weights.csv")
    per_epoch = summary["steps"] // 3
    assert len(weights) == summary["steps"] and per_epoch >= 2
    mid_epoch = weights.iloc[[per_epoch * epoch + per_epoch // 2 for epoch in range(3)]]
    assert mid_epoch.filter(like="w").to_numpy().argmax(axis=1).tolist() == [0, 1, 2]


def test_the_trainer_feeds_each_images_loss_back_to_the_hard_example_sampler(tmp_path):
    summary = training.train(run_with(tmp_path, HARD), threads=1)
    last = state(tmp_path / "results/tiny_ce/seed0/checkpoints/last.pt")
    losses = last["sampler"]["losses"]
    n_train = sum(summary["train_class_counts"])
    assert losses.shape == (n_train,)
    seen = ~torch.isnan(losses)
    assert seen.sum() >= n_train // 2  # two epochs of draws with replacement reach most images
    assert (losses[seen] >= 0).all() and torch.isfinite(losses[seen]).all()
    assert summary["steps"] == training.train(run_with(tmp_path / "plain"), threads=1)["steps"]


def test_a_non_finite_loss_found_at_a_deferred_check_names_its_own_batch(tmp_path, monkeypatch):
    """On GPU the loss is read every `sync_every` steps; the error still names the first bad batch."""
    run = tiny_classification_run(tmp_path, epochs=1)
    real_build, real_setup = training.build_loss, training.setup

    class NanFromSecondBatch(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, logits, target):
            self.calls += 1
            return self.inner(logits, target) * (float("nan") if self.calls >= 2 else 1.0)

    def deferred_setup(*args, **kwargs):
        trainer = real_setup(*args, **kwargs)
        trainer.sync_every = 3
        return trainer

    monkeypatch.setattr(training, "build_loss", lambda *a, **k: NanFromSecondBatch(real_build(*a, **k)))
    monkeypatch.setattr(training, "setup", deferred_setup)
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 1, batch 2, optimizer step 1\b"):
        training.train(run, threads=1)


def test_tensorboard_logs_what_history_and_loss_weights_record_without_changing_the_run(tmp_path):
    pytest.importorskip("tensorboard", reason="train.tensorboard needs pip install 'pipeline[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.rundir import fingerprint

    run = tiny_classification_run(tmp_path, epochs=2)
    run["loss"] = {"name": "dynamical", "amplitude": 3.0, "period_epochs": 1}
    plain = fingerprint(run)
    run["train"]["tensorboard"] = True
    assert fingerprint(run) == plain  # a logging switch is not another training
    summary = training.train(run, threads=1)
    run_dir = tmp_path / "results/tiny_ce/seed0"
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    history = pd.read_csv(run_dir / "history.csv")
    logged = [event.value for event in events.Scalars("train/train_loss")]
    assert logged == pytest.approx(history["train_loss"].tolist(), rel=1e-6)
    assert [event.step for event in events.Scalars("epoch/val_balanced_accuracy")][-1] == summary["steps"]
    weights = pd.read_csv(run_dir / "loss_weights.csv")
    for i, name in enumerate(("A", "B", "C")):
        assert [event.value for event in events.Scalars(f"loss_weight/{name}")] == pytest.approx(weights[f"w{i}"].tolist(), rel=1e-4)


def test_on_the_cpu_auto_takes_channels_last_and_the_default_optimizer(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "native_cpu_bf16", lambda: True)
    trainer = training.setup(tiny_classification_run(tmp_path, amp="auto"), threads=1)
    assert trainer.memory_format == torch.channels_last  # oneDNN's convolutions are faster in NHWC
    assert trainer.amp_dtype == torch.bfloat16  # a CPU that multiplies bf16 in hardware
    assert not trainer.optimizer.defaults.get("fused")  # PyTorch's default (foreach) step on the CPU


def test_mixed_precision_and_layout_follow_the_setting_on_the_cpu(monkeypatch):
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(training, "native_cpu_bf16", lambda: native)
        assert training.amp_dtype_for(cpu, "auto") == (torch.bfloat16 if native else None)  # emulated bf16 is slower
        assert training.amp_dtype_for(cpu, False) is None
        assert training.amp_dtype_for(cpu, True) == torch.bfloat16
    assert training.memory_format_for({"channels_last": False}) == torch.contiguous_format
    assert training.memory_format_for({"channels_last": "auto"}) == training.memory_format_for({"channels_last": True}) == torch.channels_last


def test_native_bf16_probe_answers_a_bool():
    assert isinstance(training.native_cpu_bf16(), bool)


def test_channels_last_trains_the_same_model_as_the_default_layout(tmp_path):
    # the layout changes how convolutions walk memory, not what they compute: the same losses to
    # float32 rounding (float32 on both sides, so only the layout differs)
    default = training.train(run_with(tmp_path / "nchw", channels_last=False, amp=False), threads=1)
    nhwc = training.train(run_with(tmp_path / "nhwc", channels_last=True, amp=False), threads=1)
    (first, second), (first_nhwc, second_nhwc) = ([row["train_loss"] for row in run["history"]] for run in (default, nhwc))
    assert first_nhwc == pytest.approx(first, rel=1e-4)
    assert second_nhwc == pytest.approx(second, rel=2e-2)  # rounding differences grow with each step (lr 0.01)
    weights = state(tmp_path / "nhwc" / "results" / "tiny_ce" / "seed0" / "checkpoints" / "last.pt")["model"]
    assert any(t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
               for t in weights.values())


def test_bf16_on_the_cpu_computes_the_loss_of_float32_to_bf16_rounding_and_keeps_float32_weights(tmp_path):
    # autocast runs the convolutions in bf16 (8 bits of mantissa); the loss is taken in float32
    # 32 px: the net's last convolutions see 2x2 maps (16 px gives 1x1, see the NaN-weight test below)
    trainer = training.setup(run_with(tmp_path / "probe", amp=True, image_size=32), threads=1)
    assert trainer.amp_dtype == torch.bfloat16
    inputs, targets = next(iter(trainer.loader))
    inputs = trainer.device_inputs(inputs)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = trainer.net(inputs)
        exact = trainer.net(inputs)
    assert mixed.dtype == torch.bfloat16
    assert trainer.criterion(mixed.float(), targets).item() == pytest.approx(trainer.criterion(exact, targets).item(), rel=1e-2)
    bf16 = training.train(run_with(tmp_path / "bf16", amp=True, image_size=32), threads=1)
    assert all(math.isfinite(row["train_loss"]) for row in bf16["history"])
    assert bf16["precision"] == "bfloat16"  # what amp resolved to, in training_summary.json
    weights = state(tmp_path / "bf16" / "results" / "tiny_ce" / "seed0" / "checkpoints" / "last.pt")["model"]
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())


def test_normalising_on_the_device_trains_the_same_model_bit_for_bit(tmp_path):
    # uint8 batches normalised after the transfer (the default on CUDA) against the loader's float path
    default = training.train(run_with(tmp_path / "loader"), threads=1)
    trainer = training.setup(run_with(tmp_path / "probe", normalise_on_device=True), threads=1)
    inputs, _ = next(iter(trainer.loader))
    assert inputs.dtype == torch.uint8 and trainer.device_inputs(inputs).dtype == torch.float32
    on_device = training.train(run_with(tmp_path / "device", normalise_on_device=True), threads=1)
    assert [row["train_loss"] for row in on_device["history"]] == [row["train_loss"] for row in default["history"]]
    weights = [state(tmp_path / name / "results" / "tiny_ce" / "seed0" / "checkpoints" / "last.pt")["model"]
               for name in ("loader", "device")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_colour_jitter_on_the_device(tmp_path):
    # train.augment_on_device (auto: on CUDA): the loader leaves the colour jitter out and sends uint8,
    # the trainer jitters each image of the batch with draws of its own, then normalises
    trainer = training.setup(run_with(tmp_path / "probe", augment_on_device=True), threads=1)
    assert not any(type(t).__name__ == "ColorJitter" for t in trainer.dataset.transform.transforms)
    inputs, _ = next(iter(trainer.loader))
    assert inputs.dtype == torch.uint8
    trainer.input_transform.set_epoch(0)
    jittered = trainer.device_inputs(inputs)
    plain = training.setup(run_with(tmp_path / "plain", normalise_on_device=True), threads=1)
    assert plain.input_transform.augment is None
    normalised = plain.device_inputs(inputs)
    assert jittered.dtype == torch.float32 and jittered.shape == normalised.shape
    moved = (jittered - normalised).abs().flatten(1).amax(dim=1)
    assert (moved > 1e-3).all() and (moved < 1.0).all()  # every image jittered a little (normalised units)
    trainer.input_transform.set_epoch(0)
    assert torch.equal(trainer.device_inputs(inputs), jittered)  # the epoch's draws repeat
    summary = training.train(run_with(tmp_path / "run", augment_on_device=True), threads=1)
    assert all(math.isfinite(row["train_loss"]) for row in summary["history"])
    # without the full augmentation there is no colour jitter to move: the loader path as before
    flips = training.setup(run_with(tmp_path / "flips", augment="flips", augment_on_device=True), threads=1)
    assert flips.input_transform is None


def test_the_whole_augmentation_on_the_device(tmp_path):
    # train.augment_on_device: all: the loader serves each whole photo squashed to a square, with its aspect
    # (no random transform left in it), and the trainer crops, flips, turns and jitters the uint8 batch itself
    trainer = training.setup(run_with(tmp_path / "probe", augment_on_device="all"), threads=1)
    names = {type(t).__name__ for t in trainer.dataset.transform.transforms}
    assert "Resize" in names and not names & {"CenterCrop", "RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter"}
    assert type(trainer.input_transform.augment).__name__ == "BatchAugment"
    inputs, _ = next(iter(trainer.loader))
    pixels, aspect = inputs
    assert pixels.dtype == torch.uint8 and pixels.shape[-2] == pixels.shape[-1] and aspect.shape == (len(pixels),)
    trainer.input_transform.set_epoch(0)
    augmented = trainer.device_inputs(inputs)
    trainer.input_transform.set_epoch(0)
    assert torch.equal(trainer.device_inputs(inputs), augmented)  # the epoch's draws repeat
    trainer.input_transform.set_epoch(1)
    assert not torch.equal(trainer.device_inputs(inputs), augmented)
    summary = training.train(run_with(tmp_path / "run", augment_on_device="all"), threads=1)
    assert all(math.isfinite(row["train_loss"]) for row in summary["history"])
