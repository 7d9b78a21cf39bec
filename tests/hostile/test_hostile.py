"""Each case of the hostile-input corpus (tests/hostile/build.py) gets its promised outcome."""

import tempfile
from pathlib import Path

import numpy as np
import pytest

from pipeline import config as cfgmod
from pipeline.data.io import check_mask, read_label_map, read_rgb
from pipeline.data.manifest import read_manifest, validate_manifest
from pipeline.errors import PipelineError
from pipeline.models import load_state_dict
from tests.hostile.build import CLASSES, TYPES, build

with tempfile.TemporaryDirectory() as listing:  # the case names, for parametrize (files rebuilt per module)
    CASES = {case.name: case for case in build(Path(listing))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return root, {case.name: case for case in build(root)}


def run_entry(root: Path, case) -> object:
    path = root / case.path
    if case.entry == "image":
        return read_rgb(path)
    if case.entry == "mask":
        mask = read_label_map(path)
        check_mask(mask, read_rgb(root / "img" / "ok.png").shape, len(TYPES), path)
        return mask
    if case.entry == "manifest":
        return validate_manifest(read_manifest(path), task="classification", classes=CLASSES, require_split=True,
                                 root=root, check_files=True)
    if case.entry == "config":
        return cfgmod.load_config(path)
    if case.entry == "checkpoint":
        return load_state_dict(path)
    raise AssertionError(case.entry)


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 20
    assert {c.entry for c in CASES.values()} == {"image", "mask", "manifest", "config", "checkpoint"}


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.outcome == "error"))
def test_bad_input_stops_with_a_message_naming_it(corpus, name):
    root, cases = corpus
    with pytest.raises(PipelineError, match=cases[name].expect):
        run_entry(root, cases[name])


def test_grey_palette_rgba_and_cmyk_images_read_as_rgb(corpus):
    root, cases = corpus
    reference = read_rgb(root / "img" / "ok.png")
    grey = run_entry(root, cases["grayscale_png"])
    assert grey.shape == reference.shape and (grey[..., 0] == reference[..., 0]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert np.array_equal(run_entry(root, cases["rgba_png"]), reference)
    assert run_entry(root, cases["palette_png"]).shape == reference.shape
    cmyk = run_entry(root, cases["cmyk_jpeg"]).astype(int)
    assert cmyk.shape == reference.shape and np.abs(cmyk - reference).mean() < 20  # JPEG-lossy, same picture


def test_sixteen_bit_grey_is_scaled_not_clipped(corpus):
    root, cases = corpus
    grey = run_entry(root, cases["sixteen_bit_png"])
    assert np.array_equal(grey[..., 0], read_rgb(root / "img" / "ok.png")[..., 0])  # v * 257 / 257 = v


def test_an_exif_rotated_photo_is_read_upright(corpus):
    from pipeline.data.io import read_image_size

    root, cases = corpus
    image = run_entry(root, cases["exif_rotated_photo"])
    assert image.shape == (20, 40, 3)  # stored 40 high x 20 wide, orientation 6: shown 20 high x 40 wide
    assert read_image_size(root / cases["exif_rotated_photo"].path) == (20, 40)


def test_shell_metacharacters_in_a_file_name_are_just_characters(corpus, tmp_path, monkeypatch):
    root, cases = corpus
    monkeypatch.chdir(tmp_path)
    assert run_entry(root, cases["shell_metacharacters_in_file_name"]).shape == (24, 32, 3)
    assert not list(tmp_path.iterdir()) and not (root / "PWNED").exists()


def test_a_byte_order_mark_and_html_in_ids_are_plain_text(corpus):
    root, cases = corpus
    frame = run_entry(root, cases["manifest_byte_order_mark"])
    assert list(frame.columns[:2]) == ["image_id", "image_path"]
    frame = run_entry(root, cases["manifest_html_and_shell_in_values"])
    assert frame["image_id"].tolist() == ["<script>alert(1)</script>", "$(rm -rf ~)"]


def test_html_in_class_names_is_escaped_in_the_report(tmp_path):
    from pipeline.reporting.html import write_experiment_report
    from tests.reporting.conftest import make_classification_run

    names = {"MEL": "<script>alert('x')</script>", "NV": "Nevus & <b>bold</b>"}
    run_dir, config = make_classification_run(tmp_path, names=names)
    html = write_experiment_report(run_dir=run_dir, config=config, out_path=run_dir / "r.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "<b>bold</b>" not in html
