"""The reports open in a real browser (headless Chromium, Debian package `chromium`): no console
errors, the key sections are in the rendered DOM, a screenshot is drawn, and an injected
`<script>` label is shown as text, never run."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.reporting.compare import write_comparison

from .conftest import make_classification_runs

pytestmark = pytest.mark.browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CONSOLE_LINE = re.compile(r":CONSOLE[:(\]].*")


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@dataclass
class Rendered:
    dom: str
    console: list[str]
    screenshot: Path


def render(page: Path, tmp_path: Path, size: tuple[int, int] = (1280, 2000)) -> Rendered:
    """Open ``page`` from disk in headless Chromium; return the DOM after load, the console
    messages (Chromium logs each as an ':INFO:CONSOLE' line on stderr) and a screenshot."""
    browser = find_browser()
    if browser is None:
        pytest.skip(f"no headless browser found (looked for {', '.join(BROWSERS)}; `apt-get install chromium`)")
    screenshot = tmp_path / f"{page.stem}.png"
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
        f"--window-size={size[0]},{size[1]}", f"--screenshot={screenshot}", "--dump-dom", page.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [match.group(0) for match in map(CONSOLE_LINE.search, result.stderr.splitlines()) if match]
    return Rendered(result.stdout, console, screenshot)


def assert_drawn(screenshot: Path, size: tuple[int, int] = (1280, 2000)) -> None:
    image = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert image.shape == (size[1], size[0])
    assert image.std() > 10  # not a blank page


def test_console_errors_are_detected(tmp_path):
    """Negative control: the console check must see a script error on a broken page."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>undefinedFunction();</script></body></html>")
    rendered = render(page, tmp_path)
    assert any("undefinedFunction is not defined" in line for line in rendered.console)


def test_experiment_report_renders_cleanly(classification_report, tmp_path):
    _, _, report = classification_report
    rendered = render(report, tmp_path)
    assert rendered.console == []
    for section in ("summary", "data", "per-class", "confusion", "roc", "calibration", "cases", "provenance"):
        assert f'id="{section}"' in rendered.dom, section
    assert "Balanced accuracy" in rendered.dom and "Melanoma (MEL)" in rendered.dom
    assert rendered.dom.count("data:image/png;base64,") >= 7
    assert_drawn(rendered.screenshot)


def test_script_label_is_shown_as_text(xss_report, tmp_path):
    rendered = render(xss_report, tmp_path)
    assert rendered.console == []  # nothing tried to run (the CSP would have logged a refusal)
    assert "<script" not in rendered.dom.lower()
    assert "<img src=x" not in rendered.dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt; (MEL)" in rendered.dom  # a text node, serialised escaped
    assert_drawn(rendered.screenshot)


def test_comparison_report_renders_cleanly(tmp_path):
    names = {"MEL": "Melanoma", "NV": "Nevus", "DF": "Dermatofibroma"}
    runs = make_classification_runs(tmp_path / "runs", {"ce": 1.0, "focal": 2.0}, [0], names=names)
    out = tmp_path / "comparison.html"
    write_comparison(run_dirs=runs, baseline="ce", out_csv=tmp_path / "comparison.csv", out_html=out, n_bootstrap=100)
    rendered = render(out, tmp_path)
    assert rendered.console == []
    assert 'id="classification"' in rendered.dom and "focal versus ce" in rendered.dom
    assert_drawn(rendered.screenshot)
