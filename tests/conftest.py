"""Shared fixtures. Real data (../shared/data) is found through PIPELINE_TEST_DATA; tests that
need it skip with a reason when it is unset, so a user's clone without that folder still passes."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = os.environ.get("PIPELINE_TEST_DATA")
    if not root:
        pytest.skip("PIPELINE_TEST_DATA is not set (point it at ../shared/data to run real-data tests)")
    path = Path(root)
    if not path.is_dir():
        pytest.skip(f"PIPELINE_TEST_DATA={root} is not a directory")
    return path
