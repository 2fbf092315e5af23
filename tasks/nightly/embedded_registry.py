"""The embedded registry: a SQLite file (and an artifact folder) in the home's mlflow folder,
what `mlflow ui` shows. MLflow creates and migrates its tables on first use, and two processes
doing that at once on one new file fail and can leave it half-migrated (two lines' first
nights on a new home: reproduced, "duplicate column name", "Online migration expected to match
one row"): the first use is made under a file lock, once, and marked done."""

from __future__ import annotations

import fcntl
from pathlib import Path

DATABASE, READY = "mlflow.db", ".mlflow.db.ready"


def embedded_tracking_uri(mlflow_dir: str | Path) -> str:
    """The embedded registry's tracking URI, its tables made (once, by one process)."""
    folder = Path(mlflow_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / DATABASE}"
    if not (folder / READY).exists():
        with open(folder / ".mlflow.db.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait for the one making the tables
            if not (folder / READY).exists():
                _make_tables(uri)
                (folder / READY).touch()
    return uri


def _make_tables(uri: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_experiments(max_results=1)  # the tracking store's tables
    client.search_registered_models(max_results=1)  # the registry's


def ui_command(tracking_uri: str, mlflow_dir: str | Path) -> str:
    return (f"mlflow ui --backend-store-uri {tracking_uri} "
            f"--default-artifact-root {Path(mlflow_dir).resolve() / 'artifacts'}")
