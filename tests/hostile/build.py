"""The hostile-input corpus: files a user's data may hold, each with the outcome the pipeline owes.

    python -m tests.hostile.build OUT_DIR        writes the files and OUT_DIR/cases.csv

Every case is one of:
- ``error``: a clear error whose message matches ``expect`` (a regex naming the file, row or value);
- ``ok``: handled correctly, as ``expect`` says (checked in test_hostile.py).

The corpus is generated (seeded, a few KB), never stored: tests build it in a temporary folder.
Outcomes are documented in docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

CLASSES = ["MEL", "NV"]
TYPES = ["papule", "pustule"]  # segmentation: label values 0 (background), 1, 2


@dataclass(frozen=True)
class Case:
    name: str
    entry: str  # image | mask | manifest | config | checkpoint
    path: str  # relative to the corpus folder
    outcome: str  # error | ok
    expect: str  # error: a regex of the message; ok: what correct handling means


def _rgb(seed: int = 0, size: tuple[int, int] = (24, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)


def _jpeg_bytes(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG header of width x height pixels: PIL refuses it before decoding."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 64)  # far too short for the size: never reached
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _manifest(root: Path, name: str, rows: list[dict], bom: bool = False) -> str:
    text = pd.DataFrame(rows).to_csv(index=False)
    (root / name).write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return name


def _row(image_id: str, label: str = "MEL", path: str | None = None, split: str = "train") -> dict:
    return {"image_id": image_id, "image_path": path or "img/ok.png", "label": label, "group_id": f"g_{image_id}",
            "split": split}


def build(root: Path) -> list[Case]:
    """Write the corpus under ``root``; return its cases."""
    root = Path(root)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "mask").mkdir(exist_ok=True)
    cases: list[Case] = []

    def add(name, entry, path, outcome, expect):
        cases.append(Case(name, entry, str(path), outcome, expect))

    rgb = _rgb()
    Image.fromarray(rgb).save(root / "img" / "ok.png")
    # ------------------------------------------------------------------ images
    (root / "img" / "empty.jpg").write_bytes(b"")
    add("zero_byte_jpeg", "image", "img/empty.jpg", "error", r"cannot decode image .*empty\.jpg")
    (root / "img" / "truncated.jpg").write_bytes(_jpeg_bytes(rgb)[:200])
    add("truncated_jpeg", "image", "img/truncated.jpg", "error", r"cannot decode image .*truncated\.jpg")
    (root / "img" / "not_an_image.png").write_bytes(b"<html>not a picture</html>")
    add("html_named_png", "image", "img/not_an_image.png", "error", r"cannot decode image .*not_an_image\.png")
    add("missing_file", "image", "img/absent.png", "error", r"image file not found: .*absent\.png")
    Image.fromarray(rgb[..., 0]).save(root / "img" / "grey.png")
    add("grayscale_png", "image", "img/grey.png", "ok", "grey replicated into 3 equal channels")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(root / "img" / "grey16.png")
    add("sixteen_bit_png", "image", "img/grey16.png", "ok", "16-bit grey scaled to 8 bits, not clipped at 255")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(root / "img" / "palette.png")
    add("palette_png", "image", "img/palette.png", "ok", "palette expanded to RGB")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(root / "img" / "rgba.png")
    add("rgba_png", "image", "img/rgba.png", "ok", "alpha dropped, RGB kept")
    Image.fromarray(rgb).convert("CMYK").save(root / "img" / "cmyk.jpg")
    add("cmyk_jpeg", "image", "img/cmyk.jpg", "ok", "CMYK converted to RGB")
    tall = _rgb(1, (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; a viewer rotates it 90 degrees clockwise
    Image.fromarray(tall).save(root / "img" / "exif_rotated.jpg", exif=exif.tobytes(), quality=95)
    add("exif_rotated_photo", "image", "img/exif_rotated.jpg", "ok", "EXIF orientation applied: 20x40 stored, read 40x20")
    (root / "img" / "bomb.png").write_bytes(_bomb_png(200_000, 200_000))
    add("decompression_bomb", "image", "img/bomb.png", "error", r"cannot decode image .*bomb\.png.*(decompression bomb|exceeds limit)")
    weird = root / "img" / "a;touch PWNED $(id).png"
    Image.fromarray(rgb).save(weird)
    add("shell_metacharacters_in_file_name", "image", weird.relative_to(root), "ok", "read like any file; nothing executed")

    # ------------------------------------------------------------------ masks (segmentation label maps)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "mask" / "wrong_size.png")
    add("mask_of_wrong_size", "mask", "mask/wrong_size.png", "error", r"mask .*wrong_size\.png is 10x10 \(WxH\) but its image is 32x24")
    labels = np.zeros(rgb.shape[:2], np.uint8)
    labels[2:5, 2:5] = 7
    Image.fromarray(labels).save(root / "mask" / "bad_labels.png")
    add("mask_label_outside_class_list", "mask", "mask/bad_labels.png", "error", r"bad_labels\.png has label value\(s\) \[7\] outside 0\.\.2")
    Image.fromarray(np.dstack([labels] * 2 + [labels * 0])).save(root / "mask" / "colour.png")
    add("colour_mask", "mask", "mask/colour.png", "error", r"colour\.png is a colour image")

    # ------------------------------------------------------------------ manifests
    add("manifest_missing_column", "manifest",
        _manifest(root, "no_group.csv", [{k: v for k, v in _row("a").items() if k != "group_id"}]),
        "error", r"no_group\.csv: missing column\(s\) \['group_id'\]")
    add("manifest_empty_label", "manifest", _manifest(root, "empty_label.csv", [_row("a"), _row("b", label="")]),
        "error", r"empty_label\.csv: row 2 \('b'\)")
    add("manifest_unknown_label", "manifest", _manifest(root, "unknown_label.csv", [_row("a", label="SCC")]),
        "error", r"unknown_label\.csv: unknown label\(s\) \['SCC'\] at rows 1")
    add("manifest_byte_order_mark", "manifest", _manifest(root, "bom.csv", [_row("a"), _row("b", "NV")], bom=True),
        "ok", "the BOM is not part of the first column's name: the manifest validates")
    add("manifest_duplicated_ids", "manifest", _manifest(root, "dup.csv", [_row("a"), _row("a", "NV")]),
        "error", r"dup\.csv: duplicate image_id \['a'\] at rows 1, 2")
    add("manifest_path_escapes_root", "manifest",
        _manifest(root, "escape.csv", [_row("a", path="../../etc/passwd")]),
        "error", r"escape\.csv: row 1: image_path '\.\./\.\./etc/passwd' leaves its root")
    add("manifest_html_and_shell_in_values", "manifest",
        _manifest(root, "html.csv", [_row("<script>alert(1)</script>", label="MEL"), _row("$(rm -rf ~)", "NV")]),
        "ok", "ids are text: validated as such, escaped wherever a report shows them")
    add("manifest_missing_image", "manifest", _manifest(root, "missing_image.csv", [_row("a", path="img/gone.png")]),
        "error", r"missing_image\.csv: row 1: image_path .*gone\.png does not exist")

    # ------------------------------------------------------------------ configs
    (root / "tagged.yaml").write_text("results_dir: !!python/object/apply:os.system ['touch PWNED']\n")
    add("config_yaml_python_tag", "config", "tagged.yaml", "error", r"tagged\.yaml: not valid YAML")
    (root / "list.yaml").write_text("- just\n- a list\n")
    add("config_not_a_mapping", "config", "list.yaml", "error", r"list\.yaml: expected a mapping")

    # ------------------------------------------------------------------ checkpoints
    torch.save({"model": "not a state dict"}, root / "not_state_dict.pt")
    add("checkpoint_without_state_dict", "checkpoint", "not_state_dict.pt", "error", r"not_state_dict\.pt")
    (root / "pickle.pt").write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n" * 3)
    add("checkpoint_arbitrary_pickle", "checkpoint", "pickle.pt", "error", r"pickle\.pt")
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    cases = build(args.out)
    pd.DataFrame([c.__dict__ for c in cases]).to_csv(args.out / "cases.csv", index=False)
    print(f"{len(cases)} cases in {args.out / 'cases.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
