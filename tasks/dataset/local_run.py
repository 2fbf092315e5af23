"""The prepare steps called as the plain functions they are, without Prefect: for the tests
and the benchmarks (the prepare flow composes the same functions as tasks)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tasks.core.config import DatasetConfig
from tasks.core.home import Home
from tasks.dataset.augment import augment_step
from tasks.dataset.loc_tokens import loc_targets_step
from tasks.dataset.publish import PublishOutput, publish_step
from tasks.dataset.split import split_step
from tasks.images.shard import ImageStepConfig, process_images_step
from tasks.ingest.ingest import ingest_step, shard_step


def prepare_steps(config: DatasetConfig, dataset_dir: str | Path, home: str | Path,
                  workers: int = 1) -> PublishOutput:
    """ingest -> shards (on `workers` threads) -> split -> flips -> targets -> publish."""
    where = Home(Path(home))
    manifests, store = where.manifests, where.store
    ingested = ingest_step(config.source, config.labels, manifests)
    step = ImageStepConfig(grayscale=config.grayscale, images=config.images)
    shards = shard_step(ingested.candidates, config.shard_size, manifests)
    with ThreadPoolExecutor(workers) as pool:
        outputs = list(pool.map(lambda s: process_images_step(s, step, store, manifests), shards))
    split = split_step([o.kept for o in outputs], config.split, manifests)
    augmented, _ = augment_step(split.samples, config.augment, config.images.max_pixels,
                                str(store), manifests)
    return publish_step(loc_targets_step(augmented, manifests), config.name, config.publish, dataset_dir)
