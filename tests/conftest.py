"""Test setup: Prefect points at a throw-away home, and one test server serves the whole session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports prefect or datasets: their settings are read at import time. Their
# homes are the session's own, and go when it ends (a machine running the suite again and
# again would otherwise keep every session's Prefect database and `datasets` cache).
_SESSION_DIR = tempfile.mkdtemp(prefix="defectflow-test-")
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)
_PREFECT_HOME = os.path.join(_SESSION_DIR, "prefect")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["HF_DATASETS_CACHE"] = os.path.join(_SESSION_DIR, "datasets-cache")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")  # the API still gets INFO
os.environ.pop("PREFECT_API_URL", None)
# Tests never reach a model hub: a Hub id fails at once instead of after network time-outs.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402

from tests.support import prepare_without_prefect  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server (temporary SQLite) for every flow test of the session.

    Flow-run heartbeats are off: Prefect joins its heartbeat thread, which sleeps in whole
    seconds, at the end of every flow run (~1 s each); nothing here tests zombie detection.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), \
            temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture(autouse=True)
def image_workers_as_found(monkeypatch):
    """A CLI test allows the image workers (as its entry point does): not for the tests after it."""
    import tasks.images.workers as workers

    monkeypatch.setattr(workers, "_allowed", workers._allowed)


@pytest.fixture(autouse=True)
def prefect_environment_as_found():
    """A CLI test run in-process points PREFECT_HOME (and, with its home's server up,
    PREFECT_API_URL) at its own home: not for the tests after it, nor their subprocesses."""
    found = {key: os.environ.get(key) for key in ("PREFECT_HOME", "PREFECT_API_URL")}
    yield
    for key, value in found.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh defectflow home (content store + manifests) per test."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def tiny_florence(tmp_path_factory) -> Path:
    """One tiny random Florence-2 checkpoint folder for the session."""
    from tasks.training.tiny import build_tiny_florence

    return build_tiny_florence(tmp_path_factory.mktemp("tiny-florence"), ["scratch", "spot", "patch"])


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small prepared dataset (published layout) made from generated LabelImg data, no Prefect."""
    from tasks.demo.sample_data import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root / "source", count=40, size=64, seed=7, troubles=False)
    return prepare_without_prefect(root / "source", root / "out" / "dataset", root / "home")
