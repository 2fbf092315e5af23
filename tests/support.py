"""Helpers the tests share (no side effects: the environment is set up in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(folder: str) -> Path:
    """A folder of ../shared/data, or a skip that says why."""
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (it sits beside the repo in CI)")
    return path


def prepare_without_prefect(source: Path, dataset_dir: Path, home: Path) -> Path:
    """The prepare steps called as the plain functions they are (the flow composes the same)."""
    from tasks.core.config import DatasetConfig
    from tasks.dataset.local_run import prepare_steps

    config = DatasetConfig.model_validate({
        "name": "synthetic", "grayscale": "convert", "shard_size": 16,
        "source": {"format": "voc", "images": source / "images", "annotations": source / "annotations"},
        "split": {"train": 0.7, "validation": 0.15, "test": 0.15}})
    prepare_steps(config, dataset_dir, home)
    return dataset_dir
