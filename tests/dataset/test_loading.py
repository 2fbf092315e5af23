"""Reading a published dataset leaves no copy of it in the user's ~/.cache, and one copy beside it."""

from pathlib import Path

import datasets

from tasks.core.config import PublishConfig
from tasks.core.records import write_manifest
from tasks.dataset.loading import arrow_cache_dir, load_published
from tasks.dataset.publish import publish_step
from tasks.nightly.changes import dataset_index
from tasks.training.selection import load_splits
from tests.dataset.test_publish import make_samples


def publish(tmp_path: Path, count: int) -> Path:
    images = tmp_path / f"images-{count}"
    images.mkdir()
    manifest = write_manifest(make_samples(images)[:count], images, "t")
    publish_step(manifest, "demo", PublishConfig(), tmp_path / "dataset")
    return tmp_path / "dataset"


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_nightly_readers_keep_one_copy_beside_the_dataset_and_none_in_the_home(tmp_path, monkeypatch):
    user_cache = tmp_path / "user-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", user_cache)
    dataset = publish(tmp_path, 4)

    assert len(dataset_index(dataset)) == 4  # "what changed?" of a night
    train, validation = load_splits(dataset)  # training
    assert (len(train), len(validation)) == (2, 1)
    copies = [p for p in arrow_cache_dir(dataset).iterdir()]
    assert len(copies) == 1 and any(p.suffix == ".arrow" for p in files_under(copies[0]))

    dataset = publish(tmp_path, 2)  # the next night republishes the same folder
    assert len(dataset_index(dataset)) == 2
    assert len(load_published(dataset, split="train")) == 2
    later = [p for p in arrow_cache_dir(dataset).iterdir()]
    assert len(later) == 1 and later != copies  # the first night's copy is gone

    assert files_under(user_cache) == []
