"""Test setup: Prefect points at a throw-away home, and one test server serves the whole session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports prefect: its settings are read at import time.
_PREFECT_HOME = tempfile.mkdtemp(prefix="defectflow-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(folder: str) -> Path:
    """A folder of ../shared/data, or a skip that says why."""
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (it sits beside the repo in CI)")
    return path


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server (temporary SQLite) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh defectflow home (content store + manifests) per test."""
    path = tmp_path / "home"
    path.mkdir()
    return path
