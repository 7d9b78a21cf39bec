"""Progress bars: drawn on a terminal, silent under Snakemake / SLURM / a pipe, never on other ranks."""

import io

from pipeline.progress import progress, progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bars_draw_on_a_terminal_only(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a pipe or a log file
    quiet = progress(range(3), "quiet")
    assert list(quiet) == [0, 1, 2] and quiet.disable
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert list(progress(range(3), "predicting", unit="image")) == [0, 1, 2]
    assert "predicting:" in terminal.getvalue() and "/3 [" in terminal.getvalue()  # drawn, then cleared (leave=False)
    assert progress_bar("epoch 1/2", total=4, enabled=False).disable  # a non-main rank draws nothing
