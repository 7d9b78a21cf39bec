import os

import pytest

from pipeline.atomic import atomic_path, write_text


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = write_text(tmp_path / "sub" / "report.html", "<p>x</p>")
    finally:
        os.umask(umask)
    assert path.read_text() == "<p>x</p>"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
