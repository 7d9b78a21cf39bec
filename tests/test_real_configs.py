"""The shipped real-data configs, run on ../shared/data (skipped when PIPELINE_TEST_DATA is unset)."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]


def localised(name: str, real_data: Path, tmp_path: Path, dataset_folder: str) -> Path:
    """The shipped config with its data root at PIPELINE_TEST_DATA and every output under tmp_path."""
    config = yaml.safe_load((ROOT / "configs" / name).read_text())
    config["results_dir"] = str(tmp_path / "results")
    config["manifests_dir"] = str(tmp_path / "manifests")
    for dataset in config["datasets"].values():
        dataset["root"] = str(real_data / dataset_folder)
        if "mask_root" in dataset:
            dataset["mask_root"] = str(tmp_path / "masks")
    path = tmp_path / Path(name).name
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.realdata
def test_acne04_config_prepares_and_splits_with_the_official_test_set(real_data, tmp_path):
    config = localised("acne04.yaml", real_data, tmp_path, "acne04_voc")
    assert main(["prepare", "--config", str(config), "--dataset", "acne04_lesion"]) == 0
    assert main(["split", "--config", str(config), "--dataset", "acne04_lesion"]) == 0
    split = pd.read_csv(tmp_path / "manifests" / "acne04_lesion.split.csv", dtype=str, keep_default_na=False)
    test_files = {p.stem for p in (real_data / "acne04_voc" / "test").glob("*.jpg")}
    assert set(split.loc[split["split"] == "test", "image_id"]) == test_files
    assert set(split["split"]) == {"train", "val", "test"}
    assert (split["label_origin"] == "box-derived").all()
    assert (split.groupby("group_id")["split"].nunique() == 1).all()
    # every severity grade is in train and in val (the split stratifies on lesions per grade)
    assert (pd.crosstab(split["grade"], split["split"])[["train", "val"]] > 0).all().all()
    # A frozen split is kept as it is on a rerun.
    before = (tmp_path / "manifests" / "acne04_lesion.split.csv").read_bytes()
    assert main(["split", "--config", str(config), "--dataset", "acne04_lesion"]) == 0
    assert (tmp_path / "manifests" / "acne04_lesion.split.csv").read_bytes() == before


@pytest.mark.realdata
def test_acne04_one_class_split_keeps_the_four_type_partition(real_data, tmp_path):
    """The shipped one-class config (split on lesions per grade) puts every photo where the four-type
    study config (split on lesions per type, the types being the grades here) does, so figures measured
    with either are on the same train / val photos."""
    one = localised("acne04.yaml", real_data, tmp_path / "one", "acne04_voc")
    four = localised("studies/acne04_four_types.yaml", real_data, tmp_path / "four", "acne04_voc")
    splits = []
    for config, name, folder in ((one, "acne04_lesion", "one"), (four, "acne04", "four")):
        assert main(["prepare", "--config", str(config), "--dataset", name]) == 0
        assert main(["split", "--config", str(config), "--dataset", name]) == 0
        frame = pd.read_csv(tmp_path / folder / "manifests" / f"{name}.split.csv", dtype=str, keep_default_na=False)
        splits.append(frame.set_index("image_id")["split"])
    assert splits[0].sort_index().equals(splits[1].sort_index())
    assert set(splits[0]) == {"train", "val", "test"}


@pytest.mark.realdata
def test_acne04_crops_config_splits_by_photo_and_runs_the_baseline(real_data, tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "acne04_crops.yaml").read_text())
    config.update(results_dir=str(tmp_path / "results"), manifests_dir=str(tmp_path / "manifests"),
                  evaluation={"n_bootstrap": 100})
    config["experiments"]["crops_logreg"]["model"]["params"] = {"C": 0.001}  # one fit: keep the test short
    dataset = config["datasets"]["acne04_crops"]
    dataset["root"] = str(tmp_path / "crops")
    dataset["params"]["voc_root"] = str(real_data / "acne04_voc")
    path = tmp_path / "acne04_crops.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["prepare", "--config", str(path), "--dataset", "acne04_crops"]) == 0
    assert main(["split", "--config", str(path), "--dataset", "acne04_crops"]) == 0
    split = pd.read_csv(tmp_path / "manifests" / "acne04_crops.split.csv", dtype=str, keep_default_na=False)
    test_photos = {p.stem for p in (real_data / "acne04_voc" / "test").glob("*.jpg")}
    assert set(split.loc[split["split"] == "test", "photo"]) == test_photos
    assert set(split["split"]) == {"train", "val", "test"}
    assert (split.groupby("group_id")["split"].nunique() == 1).all()  # a photo's crops stay together
    assert set(split["label"]) == set(dataset["classes"])
    for stage in ("train", "predict", "evaluate"):  # the logistic-regression baseline: seconds, no GPU
        assert main([stage, "--config", str(path), "--experiment", "crops_logreg"]) == 0
    metrics = json.loads((tmp_path / "results" / "crops_logreg" / "seed0" / "metrics.json").read_text())
    assert metrics["n_images"] == (split["split"] == "test").sum()
    assert metrics["balanced_accuracy"]["value"] > 0.25  # above chance for 4 classes


@pytest.mark.realdata
@pytest.mark.slow
def test_ham10000_config_runs_every_stage_on_real_images(real_data, tmp_path):
    config = localised("ham10000.yaml", real_data, tmp_path, "ham10000_sample70")
    raw = yaml.safe_load(config.read_text())
    raw["defaults"]["classification"]["train"].update(epochs=1, image_size=32)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    for stage in ("prepare", "split"):
        assert main([stage, "--config", str(config), "--dataset", "ham10000"]) == 0
    for stage in ("train", "predict", "evaluate"):
        assert main([stage, "--config", str(config), "--experiment", "ham_ce"]) == 0
    run = tmp_path / "results" / "ham_ce" / "seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    predictions = pd.read_csv(run / "predictions.csv", dtype=str)
    assert metrics["n_images"] == len(predictions) > 0
    split = pd.read_csv(tmp_path / "manifests" / "ham10000.split.csv", dtype=str)
    metadata = pd.read_csv(real_data / "ham10000_sample70" / "HAM10000_metadata_sample.csv", dtype=str)
    assert (split.groupby("group_id")["split"].nunique() == 1).all()
    assert set(split["group_id"]) == set(metadata["lesion_id"])


def test_a_changed_manifest_never_silently_changes_a_frozen_split(tmp_path):
    from tests.test_workflow import tiny_config

    config = tiny_config()
    del config["datasets"]["acne_tiny"]
    config["experiments"] = {"cls_ce": config["experiments"]["cls_ce"]}
    config["manifests_dir"] = str(tmp_path / "manifests")
    config["datasets"]["isic_tiny"]["root"] = str(tmp_path / "isic")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["prepare", "--config", str(path), "--dataset", "isic_tiny"]) == 0
    assert main(["split", "--config", str(path), "--dataset", "isic_tiny"]) == 0
    manifest = tmp_path / "manifests" / "isic_tiny.csv"
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame.iloc[:-1].to_csv(manifest, index=False)  # one image fewer than when the split was frozen
    assert main(["split", "--config", str(path), "--dataset", "isic_tiny"]) == 2
