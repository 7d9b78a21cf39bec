from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data import io
from pipeline.data.io import check_mask, read_image_size, read_label_map, read_rgb, write_png_atomic
from pipeline.errors import DataError


def _pixels(height: int = 5, width: int = 7) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_read_rgb_round_trips_png(tmp_path: Path) -> None:
    pixels = _pixels()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = read_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, pixels)


def test_read_rgb_replicates_grey(tmp_path: Path) -> None:
    grey = np.arange(35, dtype=np.uint8).reshape(5, 7)
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = read_rgb(tmp_path / "g.png")
    assert out.shape == (5, 7, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)


def test_read_rgb_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found.*nothere.jpg"):
        read_rgb(tmp_path / "nothere.jpg")


def test_read_rgb_undecodable_file_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a JPEG")
    with pytest.raises(DataError, match="cannot decode.*broken.jpg"):
        read_rgb(bad)


def test_read_rgb_truncated_jpeg_is_a_data_error(tmp_path: Path) -> None:
    whole = tmp_path / "whole.jpg"
    Image.fromarray(_pixels(64, 64)).save(whole, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    with pytest.raises(DataError, match="cut.jpg"):
        read_rgb(cut)


def test_read_image_size_is_height_width(tmp_path: Path) -> None:
    Image.fromarray(_pixels(5, 7)).save(tmp_path / "a.png")
    assert read_image_size(tmp_path / "a.png") == (5, 7)
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="x.png"):
        read_image_size(tmp_path / "x.png")


def test_read_label_map_grey_and_palette(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [3, 0, 1]], dtype=np.uint8)
    Image.fromarray(labels).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "l.png"), labels)
    palette = Image.fromarray(labels).convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    palette.save(tmp_path / "p.png")
    # A palette PNG stores indices: the label values, not the colours.
    np.testing.assert_array_equal(read_label_map(tmp_path / "p.png"), labels)


def test_read_label_map_rgb_only_when_grey(tmp_path: Path) -> None:
    labels = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    Image.fromarray(np.stack([labels] * 3, axis=-1)).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "grey_rgb.png"), labels)
    Image.fromarray(_pixels(2, 2)).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match="colour.png.*colour image"):
        read_label_map(tmp_path / "colour.png")


def test_read_label_map_rejects_values_above_255(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 300]], dtype=np.uint16)).save(tmp_path / "wide.png")
    with pytest.raises(DataError, match="wide.png.*300"):
        read_label_map(tmp_path / "wide.png")


def test_write_png_atomic_round_trip_leaves_no_temp(tmp_path: Path) -> None:
    labels = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    target = tmp_path / "sub" / "m.png"
    assert write_png_atomic(labels, target) == target
    np.testing.assert_array_equal(np.asarray(Image.open(target)), labels)
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.png"]


def test_write_png_atomic_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "m.png"
    write_png_atomic(np.zeros((2, 2), np.uint8), target)
    before = target.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io.Image.Image, "save", explode)
    with pytest.raises(OSError, match="disk full"):
        write_png_atomic(np.ones((2, 2), np.uint8), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]


def test_write_png_atomic_rejects_non_uint8(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_png_atomic(np.zeros((2, 2), np.int64), tmp_path / "m.png")
    assert not (tmp_path / "m.png").exists()


def test_check_mask_accepts_valid() -> None:
    check_mask(np.array([[0, 1], [2, 0]], np.uint8), (2, 2, 3), 2, "m.png")


def test_check_mask_size_mismatch_names_file() -> None:
    with pytest.raises(DataError, match="m.png is 3x2.*image is 2x2"):
        check_mask(np.zeros((2, 3), np.uint8), (2, 2, 3), 2, "m.png")


def test_check_mask_value_out_of_range_names_file_and_value() -> None:
    with pytest.raises(DataError, match=r"m.png has label value\(s\) \[3\] outside 0..2"):
        check_mask(np.array([[0, 3], [1, 2]], np.uint8), (2, 2), 2, "m.png")


def test_check_mask_needs_one_channel() -> None:
    with pytest.raises(DataError, match="single"):
        check_mask(np.zeros((2, 2, 3), np.uint8), (2, 2), 2, "m.png")
