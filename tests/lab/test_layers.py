from pathlib import Path

import pytest

from pipeline import config as cfgmod

ALLOWED = ("lab/", "losses/", "atomic.py", "errors.py", "registry.py", "__init__.py")


@pytest.mark.parametrize("module", ["pipeline.lab.__main__", "pipeline.lab.threshold", "pipeline.lab.spiral"])
def test_the_lab_uses_losses_only(module):
    # docs/ARCHITECTURE.md: lab/ uses losses (and the bottom layer) only
    root = Path(cfgmod.__file__).resolve().parent
    used = {str(path.relative_to(root)) for path in cfgmod.stage_sources(module)}
    assert {path for path in used if not path.startswith(ALLOWED)} == set()
